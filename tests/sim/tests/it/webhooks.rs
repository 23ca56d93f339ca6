//! Group webhooks as GitLab fires them: a receiver that fails once gets the same event again,
//! with the same `Idempotency-Key` and event UUID and a new webhook UUID.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use gitlab_sim::Mode;
use serde_json::json;

use crate::common::{http, start_fixture};

/// A receiver that answers 500 to its first delivery and 200 after, keeping each one's headers.
async fn flaky_receiver() -> (String, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: HeaderMap| async move {
                let mut seen = seen.lock().unwrap();
                seen.push(headers);
                if seen.len() == 1 {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_member_hook_is_retried_with_the_same_idempotency_key() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let (url, seen) = flaky_receiver().await;
    let created = http()
        .post(format!("{}/api/v4/groups/{}/hooks", sim.url, f.ids.org))
        .header("PRIVATE-TOKEN", &f.owner_token)
        .json(&json!({"url": url, "token": "s3cret", "member_events": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let hook: serde_json::Value = created.json().await.unwrap();
    assert_eq!(hook["member_events"], true);
    assert!(hook.get("token").is_none(), "{hook}");

    // A member added to a subgroup: the hook on the top-level group fires.
    let added = http()
        .post(format!("{}/api/v4/groups/{}/members", sim.url, f.ids.eng))
        .header("PRIVATE-TOKEN", &f.owner_token)
        .json(&json!({"user_id": f.ids.erin, "access_level": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let attempts = sim
        .sim
        .wait_for_hook_attempts(2, Duration::from_secs(10))
        .await;
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        vec![Some(500), Some(200)]
    );
    assert_eq!(attempts[0].idempotency_key, attempts[1].idempotency_key);
    assert_eq!(attempts[0].event_uuid, attempts[1].event_uuid);
    assert_ne!(attempts[0].webhook_uuid, attempts[1].webhook_uuid);
    assert_eq!(attempts[0].payload["event_name"], "user_add_to_group");
    assert_eq!(attempts[0].payload["group_id"], f.ids.eng);
    assert_eq!(attempts[0].payload["group_access"], "Developer");
    let seen = seen.lock().unwrap();
    for h in seen.iter() {
        assert_eq!(h["x-gitlab-event"], "Member Hook");
        assert_eq!(h["x-gitlab-token"], "s3cret");
        assert!(h.contains_key("idempotency-key"));
    }
}

/// A receiver that answers every delivery with `status`, keeping the bodies.
async fn receiver(status: StatusCode) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |body: axum::Json<serde_json::Value>| async move {
                seen.lock().unwrap().push(body.0);
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn system_hooks_report_project_members_users_and_groups_but_never_shares() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let (url, _) = receiver(StatusCode::OK).await;
    let api = |path: &str| format!("{}/api/v4{path}", sim.url);
    // Only an administrator may.
    let refused = http()
        .post(api("/hooks"))
        .header("PRIVATE-TOKEN", &f.owner_token)
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let created = http()
        .post(api("/hooks"))
        .header("PRIVATE-TOKEN", &f.admin_token)
        .json(&json!({"url": url, "token": "t", "push_events": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let added = http()
        .post(api(&format!("/projects/{}/members", f.ids.api)))
        .header("PRIVATE-TOKEN", &f.admin_token)
        .json(&json!({"user_id": f.ids.erin, "access_level": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), 201);
    let a = sim
        .sim
        .wait_for_hook_attempts(1, Duration::from_secs(10))
        .await;
    assert_eq!(a[0].event, "System Hook");
    assert_eq!(a[0].payload["event_name"], "user_add_to_team");
    assert_eq!(a[0].payload["project_id"], f.ids.api);
    assert_eq!(a[0].payload["access_level"], "Developer");
    assert_eq!(a[0].payload["user_email"], "[REDACTED]");
    assert!(a[0].payload.get("expires_at").is_none());

    // A share fires nothing; a group created and deleted, a user deleted do.
    let shared = http()
        .post(format!("{}/_sim/shares", sim.url))
        .json(&json!({"resource": {"type": "group", "id": f.ids.eng}, "group_id": f.ids.partners, "group_access": 20}))
        .send()
        .await
        .unwrap();
    assert_eq!(shared.status(), 204);
    let g: serde_json::Value = http()
        .post(format!("{}/_sim/groups", sim.url))
        .json(&json!({"path": "fresh", "parent_id": f.ids.eng}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let gone = http()
        .delete(format!("{}/_sim/groups/{}", sim.url, g["id"]))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    let deleted = http()
        .delete(api(&format!("/users/{}", f.ids.erin)))
        .header("PRIVATE-TOKEN", &f.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let a = sim
        .sim
        .wait_for_hook_attempts(4, Duration::from_secs(10))
        .await;
    let names: Vec<_> = a
        .iter()
        .map(|x| x.payload["event_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "user_add_to_team",
            "group_create",
            "group_destroy",
            "user_destroy"
        ],
        "no hook for the share"
    );
    assert_eq!(a[1].payload["group_id"], g["id"]);
    assert_eq!(a[3].payload["user_id"], f.ids.erin);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_that_keeps_failing_is_paused_and_faults_drop_and_duplicate() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let (failing, _) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let hooks = format!("{}/api/v4/groups/{}/hooks", sim.url, f.ids.org);
    let created: serde_json::Value = http()
        .post(&hooks)
        .header("PRIVATE-TOKEN", &f.owner_token)
        .json(&json!({"url": failing, "member_events": true, "subgroup_events": true}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Two subgroups created: two deliveries failing at once and once more a second later.
    for path in ["one", "two"] {
        http()
            .post(format!("{}/_sim/groups", sim.url))
            .json(&json!({"path": path, "parent_id": f.ids.org}))
            .send()
            .await
            .unwrap();
    }
    sim.sim
        .wait_for_hook_attempts(4, Duration::from_secs(10))
        .await;
    let shown: serde_json::Value = http()
        .get(format!("{hooks}/{}", created["id"]))
        .header("PRIVATE-TOKEN", &f.owner_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(shown["alert_status"], "temporarily_disabled", "{shown}");
    assert!(shown["disabled_until"].is_string());
    // Paused: the next event is not sent.
    let before = sim.sim.hook_attempts().len();
    http()
        .post(format!("{}/_sim/groups", sim.url))
        .json(&json!({"path": "three", "parent_id": f.ids.org}))
        .send()
        .await
        .unwrap();
    let a = sim
        .sim
        .wait_for_hook_attempts(before + 1, Duration::from_secs(10))
        .await;
    assert!(a[before].dropped && a[before].status.is_none());

    // Editing enables it again; to a receiver that answers, with every delivery duplicated.
    let (ok, seen) = receiver(StatusCode::OK).await;
    let edited = http()
        .put(format!("{hooks}/{}", created["id"]))
        .header("PRIVATE-TOKEN", &f.owner_token)
        .json(&json!({"url": ok}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), 200);
    let faults = http()
        .put(format!("{}/_sim/hook_faults", sim.url))
        .json(&json!({"duplicate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(faults.status(), 204);
    let before = sim.sim.hook_attempts().len();
    http()
        .post(format!("{}/_sim/groups", sim.url))
        .json(&json!({"path": "four", "parent_id": f.ids.org}))
        .send()
        .await
        .unwrap();
    let a = sim
        .sim
        .wait_for_hook_attempts(before + 2, Duration::from_secs(10))
        .await;
    let sent: Vec<_> = a[before..]
        .iter()
        .filter(|x| x.status == Some(200))
        .collect();
    assert_eq!(sent.len(), 2, "sent twice");
    assert_eq!(sent[0].idempotency_key, sent[1].idempotency_key);
    assert_eq!(seen.lock().unwrap().len(), 2);

    // Every delivery dropped.
    http()
        .put(format!("{}/_sim/hook_faults", sim.url))
        .json(&json!({"drop": 1.0}))
        .send()
        .await
        .unwrap();
    let before = sim.sim.hook_attempts().len();
    http()
        .post(format!("{}/_sim/groups", sim.url))
        .json(&json!({"path": "five", "parent_id": f.ids.org}))
        .send()
        .await
        .unwrap();
    let a = sim
        .sim
        .wait_for_hook_attempts(before + 1, Duration::from_secs(10))
        .await;
    assert!(a[before].dropped);
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "nothing more reached the receiver"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delayed_and_reordered_deliveries_all_arrive_in_another_order() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let (url, seen) = receiver(StatusCode::OK).await;
    let created = http()
        .post(format!("{}/api/v4/groups/{}/hooks", sim.url, f.ids.org))
        .header("PRIVATE-TOKEN", &f.owner_token)
        .json(&json!({"url": url, "subgroup_events": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let faults = http()
        .put(format!("{}/_sim/hook_faults", sim.url))
        .json(&json!({"delay_ms": 1500, "reorder": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(faults.status(), 204);
    let paths = ["g1", "g2", "g3", "g4", "g5", "g6"];
    for path in paths {
        http()
            .post(format!("{}/_sim/groups", sim.url))
            .json(&json!({"path": path, "parent_id": f.ids.org}))
            .send()
            .await
            .unwrap();
    }
    let a = sim
        .sim
        .wait_for_hook_attempts(paths.len(), Duration::from_secs(10))
        .await;
    assert_eq!(a.len(), paths.len(), "every delivery arrives");
    let order: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|b| b["path"].as_str().unwrap().to_string())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, paths, "each once");
    // Random delays of up to 1.5 s (the simulator's seeded generator) put later events first.
    assert_ne!(order, paths, "{order:?}");
}
