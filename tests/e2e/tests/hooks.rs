//! The webhook receiver of the built worker (`HOOKS_LISTEN`), with a real NATS: what GitLab's
//! deliveries must carry to be kept, and that a delivery GitLab sends twice is kept once.

use std::time::Duration;

use gitlab_e2e::{NatsServer, Worker, http, read_stream, sqlite_url, tempdir};
use gitlab_sim::{Mode, Resource, SeedSpec};
use serde_json::{Value, json};

const SECRET: &str = "hook-secret-for-tests-only";

struct Env {
    worker: Worker,
    hooks: String,
    js: async_nats::jetstream::Context,
    _nats: NatsServer,
    sim: gitlab_sim::SeededSim,
}

async fn env() -> Env {
    gitlab_connector::client::install_crypto_provider();
    let sim = gitlab_sim::start_seeded(&SeedSpec::small(2, Mode::SelfManaged))
        .await
        .unwrap();
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let dir = tempdir("hooks");
    let secret = dir.join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let vars = vec![
        ("GITLAB_URL", sim.running.url.clone()),
        ("GITLAB_TOKEN", sim.token.clone()),
        ("GITLAB_SCOPE", sim.scope.clone()),
        ("DATABASE_URL", sqlite_url(&dir)),
        ("NATS_URL", nats.url.clone()),
        ("HOOKS_LISTEN", "127.0.0.1:0".into()),
        ("GITLAB_WEBHOOK_SECRET_FILE", secret.display().to_string()),
    ];
    let worker = tokio::task::spawn_blocking(move || Worker::serve(&vars))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    Env {
        hooks: worker.hooks_addr(),
        worker,
        js,
        _nats: nats,
        sim,
    }
}

/// A member event as GitLab's group webhook sends it.
fn member_event() -> Vec<u8> {
    json!({
        "event_name": "user_add_to_group",
        "group_id": 3,
        "group_path": "org/a",
        "user_id": 41,
        "user_username": "ada",
        "group_access": "Developer",
        "expires_at": null,
        "created_at": "2026-12-03T09:00:00Z",
        "updated_at": "2026-12-03T09:00:00Z"
    })
    .to_string()
    .into_bytes()
}

async fn post(e: &Env, connector: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let addr = e.hooks.clone();
    let path = format!("/hooks/gitlab/{connector}");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        http(&addr, "POST", &path, &h, &body)
    })
    .await
    .unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn kept(e: &Env) -> Vec<async_nats::jetstream::Message> {
    read_stream(
        &e.js,
        "GITLAB_HOOKS",
        "gitlab.hooks.>",
        100,
        Duration::from_millis(800),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_kept_once_when_their_secret_is_right_and_refused_otherwise() {
    let e = env().await;
    let member = [
        ("X-Gitlab-Event", "Member Hook"),
        ("X-Gitlab-Token", SECRET),
        ("X-Gitlab-Event-UUID", "ev-1"),
        ("X-Gitlab-Webhook-UUID", "attempt-1"),
        ("Idempotency-Key", "idem-1"),
        ("Content-Type", "application/json"),
    ];

    // Refused, nothing kept: no secret, a wrong one, an unknown connector, too large, not JSON.
    let (status, body) = post(&e, "default", &member[..1], member_event()).await;
    assert_eq!(status, 401, "{body}");
    let wrong = [
        ("X-Gitlab-Event", "Member Hook"),
        ("X-Gitlab-Token", "guess"),
    ];
    assert_eq!(post(&e, "default", &wrong, member_event()).await.0, 401);
    assert_eq!(post(&e, "other", &member, member_event()).await.0, 404);
    let mut huge = b"{\"pad\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 1_100_000));
    huge.extend(b"\"}");
    assert_eq!(post(&e, "default", &member, huge).await.0, 413);
    let (status, body) = post(&e, "default", &member, b"not json".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    assert!(kept(&e).await.is_empty(), "nothing refused was kept");

    // Kept, once: GitLab's retry carries the same Idempotency-Key and a new webhook UUID.
    let (status, body) = post(&e, "default", &member, member_event()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"stored": true, "duplicate": false}));
    let mut retry = member;
    retry[3] = ("X-Gitlab-Webhook-UUID", "attempt-2");
    let (status, body) = post(&e, "default", &retry, member_event()).await;
    assert_eq!(status, 200);
    assert_eq!(body["duplicate"], true);
    // An event the worker does not read is kept and counted, keyed by its UUID and body.
    let pipeline = [
        ("X-Gitlab-Event", "Pipeline Hook"),
        ("X-Gitlab-Token", SECRET),
        ("X-Gitlab-Event-UUID", "ev-2"),
    ];
    let (status, _) = post(
        &e,
        "default",
        &pipeline,
        b"{\"object_kind\":\"pipeline\"}".to_vec(),
    )
    .await;
    assert_eq!(status, 200);

    let msgs = kept(&e).await;
    assert_eq!(msgs.len(), 2, "the retry was not kept twice");
    let first = &msgs[0];
    assert_eq!(first.subject.as_str(), "gitlab.hooks.default");
    assert_eq!(first.payload.as_ref(), member_event().as_slice());
    let h = first.headers.as_ref().unwrap();
    assert_eq!(
        h.get("Nats-Msg-Id").unwrap().as_str(),
        "hook default key:idem-1"
    );
    assert_eq!(h.get("Gitlab-Event").unwrap().as_str(), "Member Hook");
    assert_eq!(h.get("Gitlab-Webhook-UUID").unwrap().as_str(), "attempt-1");
    assert!(h.get("Received-At").is_some());
    let second = msgs[1].headers.as_ref().unwrap();
    assert!(
        second
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .starts_with("hook default event:ev-2:")
    );

    let (_, metrics) = e.worker.get("/metrics");
    for line in [
        r#"connector="default",event="Member Hook",outcome="stored""#,
        r#"connector="default",event="Member Hook",outcome="duplicate""#,
        r#"connector="default",event="unknown",outcome="stored""#,
        r#"connector="default",event="-",outcome="unauthorized""#,
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("gitlab_worker_hooks_received_total") && l.contains(line)),
            "{line} in\n{metrics}"
        );
    }
    assert!(
        !e.worker.stderr().contains(SECRET),
        "the secret never reaches the log"
    );
}

#[test]
fn hooks_listen_without_a_webhook_secret_refuses_to_start() {
    let dir = tempdir("hooks-nosecret");
    let out = assert_cmd::Command::cargo_bin("gitlab-worker")
        .unwrap()
        .arg("serve")
        .env_clear()
        .env("GITLAB_URL", "http://127.0.0.1:9")
        .env("GITLAB_TOKEN", "token-value-for-a-config-test")
        .env("DATABASE_URL", sqlite_url(&dir))
        .env("HOOKS_LISTEN", "127.0.0.1:0")
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("GITLAB_WEBHOOK_SECRET_FILE"), "{stderr}");
}

/// The simulator fires GitLab's group webhook for the membership a grant job creates in a
/// subgroup (a hook on the top-level group sees its subgroups), and the worker keeps it under
/// the delivery's Idempotency-Key; a project membership fires no group webhook.
#[tokio::test(flavor = "multi_thread")]
async fn the_simulators_member_hook_for_a_grant_reaches_the_hooks_stream() {
    let e = env().await;
    let (top, sub, project, user) = {
        let w = e.sim.sim.world.read().unwrap();
        let top = w
            .groups
            .values()
            .find(|g| g.full_path == e.sim.scope)
            .unwrap()
            .id;
        let sub = w
            .groups
            .values()
            .find(|g| g.parent_id == Some(top))
            .unwrap()
            .id;
        let project = w
            .projects
            .values()
            .find(|p| p.group_id == Some(sub))
            .map(|p| p.id);
        let user = w
            .users
            .values()
            .find(|u| {
                !u.is_admin
                    && !u.is_bot()
                    && u.state == "active"
                    && w.effective_level(u.id, Resource::Group(sub)) == 0
            })
            .unwrap()
            .id;
        (top, sub, project, user)
    };
    // Registered through GitLab's API, as `hooks install` will.
    let sim_addr = e.sim.running.url.trim_start_matches("http://").to_string();
    let hook_url = format!("http://{}/hooks/gitlab/default", e.hooks);
    let body =
        json!({"url": hook_url, "token": SECRET, "member_events": true, "push_events": false})
            .to_string();
    let token = e.sim.token.clone();
    let (status, answer) = tokio::task::spawn_blocking(move || {
        http(
            &sim_addr,
            "POST",
            &format!("/api/v4/groups/{top}/hooks"),
            &[
                ("PRIVATE-TOKEN", &token),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 201, "{answer}");
    assert!(
        !answer.contains(SECRET),
        "GitLab never shows a hook's token"
    );

    let grant = json!({
        "schema": "gitlab-connector.job.v1",
        "job_id": "grant-hooked",
        "connector": "default",
        "kind": "grant",
        "params": {"user": {"id": user}, "target": {"group": sub}, "access_level": 30},
    });
    gitlab_e2e::publish_job(
        &e.js,
        "gitlab.jobs.default.grant",
        grant.to_string(),
        Some("grant-hooked"),
    )
    .await;
    let msgs = read_stream(
        &e.js,
        "GITLAB_HOOKS",
        "gitlab.hooks.default",
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(msgs.len(), 1, "{}", e.worker.stderr());
    let payload: Value = serde_json::from_slice(&msgs[0].payload).unwrap();
    assert_eq!(payload["event_name"], "user_add_to_group");
    assert_eq!(payload["group_id"], sub);
    assert_eq!(payload["user_id"], user);
    assert_eq!(payload["group_access"], "Developer");
    let attempts = e
        .sim
        .sim
        .wait_for_hook_attempts(1, Duration::from_secs(10))
        .await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status, Some(200));
    let h = msgs[0].headers.as_ref().unwrap();
    assert_eq!(
        h.get("Nats-Msg-Id").unwrap().as_str(),
        format!("hook default key:{}", attempts[0].idempotency_key)
    );
    assert_eq!(h.get("Gitlab-Event").unwrap().as_str(), "Member Hook");

    // A project membership fires no group webhook; a removal behind the worker's back does.
    if let Some(p) = project {
        e.sim.sim.world.write().unwrap().member_changed(
            Resource::Project(p),
            user,
            gitlab_sim::hooks::MemberChange::Added,
            &gitlab_sim::model::Membership {
                access_level: 30,
                expires_at: None,
                member_role_id: None,
                state: gitlab_sim::model::MemberState::Active,
                created_by: None,
                created_at: chrono::Utc::now(),
            },
        );
        assert!(e.sim.sim.world.read().unwrap().hook_queue.is_empty());
    }
    let sim_addr = e.sim.running.url.trim_start_matches("http://").to_string();
    let body = json!({"resource": {"type": "group", "id": sub}, "user_id": user}).to_string();
    let (status, answer) = tokio::task::spawn_blocking(move || {
        http(
            &sim_addr,
            "DELETE",
            "/_sim/members",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 204, "{answer}");
    let msgs = read_stream(
        &e.js,
        "GITLAB_HOOKS",
        "gitlab.hooks.default",
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(msgs.len(), 2);
    let removed: Value = serde_json::from_slice(&msgs[1].payload).unwrap();
    assert_eq!(removed["event_name"], "user_remove_from_group");
}
