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
