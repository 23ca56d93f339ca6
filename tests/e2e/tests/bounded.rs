//! Bounded messages through the built worker and a real NATS: a sync that meets thousands of
//! unreadable projects answers in messages NATS accepts, and the next job is answered too.

use std::time::Duration;

use gitlab_e2e::{NatsServer, Worker, publish_job, read_stream, sqlite_url, sync_job, tempdir};
use gitlab_sim::{FaultRule, Mode, Resource, SeedSpec};
use serde_json::{Value, json};

const MAX_PAYLOAD: usize = 1024 * 1024;

fn json(m: &async_nats::jetstream::Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_with_two_thousand_unreadable_projects_is_answered_in_bounded_messages() {
    gitlab_connector::client::install_crypto_provider();
    let spec = SeedSpec {
        projects: 2_100,
        ..SeedSpec::small(5, Mode::SelfManaged)
    };
    let seeded = gitlab_sim::start_seeded(&spec).await.unwrap();
    let (projects, group, user) = {
        let world = seeded.sim.world.read().unwrap();
        let projects: Vec<u64> = world.projects.keys().copied().take(2_000).collect();
        let top = world
            .groups
            .values()
            .find(|g| g.full_path == seeded.scope)
            .unwrap()
            .id;
        let members = world.members.get(&Resource::Group(top));
        let user = world
            .users
            .values()
            .filter(|u| !u.is_admin && !u.is_bot() && u.state == "active")
            .map(|u| u.id)
            .find(|id| members.is_none_or(|m| !m.contains_key(id)))
            .unwrap();
        (projects, top, user)
    };
    assert_eq!(projects.len(), 2_000);
    seeded.sim.config.lock().unwrap().faults.rules = projects
        .iter()
        .map(|p| FaultRule::status(format!("/projects/{p}"), 403))
        .collect();

    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let dir = tempdir("unreadable");
    let env = vec![
        ("GITLAB_URL", seeded.running.url.clone()),
        ("GITLAB_TOKEN", seeded.token.clone()),
        ("GITLAB_SCOPE", seeded.scope.clone()),
        ("DATABASE_URL", sqlite_url(&dir)),
        ("NATS_URL", nats.url.clone()),
    ];
    let worker = tokio::task::spawn_blocking(move || Worker::serve(&env))
        .await
        .unwrap();

    publish_job(
        &js,
        "gitlab.jobs.default.sync",
        sync_job("sync-unreadable", "default"),
        Some("sync-unreadable"),
    )
    .await;
    let grant = json!({
        "schema": "gitlab-connector.job.v1",
        "job_id": "grant-after",
        "connector": "default",
        "kind": "grant",
        "params": {"user": {"id": user}, "target": {"group": group}, "access_level": 30},
    });
    publish_job(
        &js,
        "gitlab.jobs.default.grant",
        grant.to_string(),
        Some("grant-after"),
    )
    .await;

    let results = read_stream(
        &js,
        "GITLAB_RESULTS",
        "gitlab.results.default.>",
        2,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(results.len(), 2, "worker log:\n{}", worker.stderr());
    let by_id = |id: &str| {
        results
            .iter()
            .find(|m| json(m)["job_id"] == id)
            .unwrap_or_else(|| panic!("a result for {id}"))
    };
    let sync = by_id("sync-unreadable");
    assert!(sync.payload.len() < MAX_PAYLOAD);
    let r = json(sync);
    gitlab_e2e::assert_valid(
        &gitlab_e2e::schema("gitlab-connector.result.v1.schema.json"),
        &r,
    );
    assert_eq!(r["status"], "failed");
    assert_eq!(r["error"]["code"], "partial_snapshot");
    let message = r["error"]["message"].as_str().unwrap();
    let named: usize = message
        .strip_prefix("the snapshot is partial: ")
        .and_then(|m| m.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the count of read errors in {message:?}"));
    assert!(named >= 2_000, "{message}");
    assert_eq!(r["snapshot"]["complete"], false);
    assert_eq!(json(by_id("grant-after"))["status"], "succeeded");

    // The snapshot event names the first errors and how many there are.
    let snap = read_stream(
        &js,
        "GITLAB_EVENTS",
        "gitlab.events.default.snapshot",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(snap.len(), 1);
    assert!(snap[0].payload.len() < MAX_PAYLOAD);
    let ev = json(&snap[0]);
    assert_eq!(ev["errors_total"], named);
    assert_eq!(ev["errors"].as_array().unwrap().len(), 100);
    let events_schema = gitlab_e2e::schema("gitlab-connector.event.v1.schema.json");
    gitlab_e2e::assert_valid(&events_schema, &ev);
    // The access diff arrives in chunks, each below the max payload, all of them.
    let access = read_stream(
        &js,
        "GITLAB_EVENTS",
        "gitlab.events.default.access",
        10_000,
        Duration::from_secs(5),
    )
    .await;
    assert!(!access.is_empty());
    let chunks = json(&access[0])["chunks"].as_u64().unwrap() as usize;
    assert_eq!(access.len(), chunks);
    for m in &access {
        assert!(m.payload.len() < MAX_PAYLOAD);
        gitlab_e2e::assert_valid(&events_schema, &json(m));
    }
    // Every error is in the snapshot object.
    let bucket = js.get_object_store("GITLAB_SNAPSHOTS").await.unwrap();
    let mut obj = bucket
        .get(ev["object"]["name"].as_str().unwrap())
        .await
        .unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut bytes)
        .await
        .unwrap();
    let summary = gitlab_connector::snapshot::verify(std::io::BufReader::new(&bytes[..])).unwrap();
    assert_eq!(summary.errors.len(), named);
    assert!(!summary.complete);
}
