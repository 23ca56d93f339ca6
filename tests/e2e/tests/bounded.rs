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

/// A publisher that stopped after the first chunk of a snapshot's access events (its row
/// records `sent: 1`) publishes the rest, from chunk 2, and nothing before it.
#[tokio::test(flavor = "multi_thread")]
async fn access_events_go_on_from_the_chunk_after_the_last_one_sent() {
    use gitlab_worker::jobs::events::AccessEvents;
    use gitlab_worker::store::Store;
    use gitlab_worker::subjects::Subjects;

    gitlab_connector::client::install_crypto_provider();
    // Enough access for several chunks of 256 KiB.
    let spec = SeedSpec {
        users: 400,
        memberships: 4_000,
        ..SeedSpec::small(3, Mode::SelfManaged)
    };
    let seeded = gitlab_sim::start_seeded(&spec).await.unwrap();
    let dir = tempdir("resume-events");
    let db = sqlite_url(&dir);
    let synced = assert_cmd::Command::cargo_bin("gitlab-worker")
        .unwrap()
        .args(["sync", "--scope", &seeded.scope])
        .env_clear()
        .env("GITLAB_URL", &seeded.running.url)
        .env("GITLAB_TOKEN", &seeded.token)
        .env("DATABASE_URL", &db)
        .output()
        .unwrap();
    assert!(
        synced.status.success(),
        "{}",
        String::from_utf8_lossy(&synced.stderr)
    );
    let store = Store::open(&db).await.unwrap();
    let snap = store
        .latest_snapshot("default", &seeded.scope, true)
        .await
        .unwrap()
        .expect("the sync stored a snapshot");

    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let client = async_nats::connect(&nats.url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let subjects = Subjects::new("gitlab");
    let settings = gitlab_worker::config::NatsSettings::for_url(&nats.url);
    gitlab_worker::nats::setup(&js, &subjects, &settings, (8, 8))
        .await
        .unwrap();
    let spec = AccessEvents {
        job_id: "sync-1".into(),
        connector: "default".into(),
        scope: seeded.scope.clone(),
        snapshot_id: snap.snapshot_id.clone(),
        base_snapshot_id: None,
        base_batch_id: None,
        cause: "sync".into(),
        object: json!({"bucket": "GITLAB_SNAPSHOTS", "name": "x"}),
        sent: 1,
    };
    store.enqueue(vec![spec.message(&subjects)]).await.unwrap();
    let publisher = gitlab_worker::nats::outbox::OutboxPublisher {
        store: store.clone(),
        js: js.clone(),
        subjects,
        lane: gitlab_worker::store::OutboxLane::Events,
        spool_dir: dir.join("spool"),
    };
    assert_eq!(publisher.flush().await.unwrap(), 1);

    let got = read_stream(
        &js,
        "GITLAB_EVENTS",
        "gitlab.events.default.access",
        10_000,
        Duration::from_secs(3),
    )
    .await;
    let chunks: Vec<u64> = got
        .iter()
        .map(|m| json(m)["chunk"].as_u64().unwrap())
        .collect();
    assert!(!got.is_empty(), "the chunks after the first are published");
    let total = json(&got[0])["chunks"].as_u64().unwrap();
    assert!(total >= 2, "the diff makes several chunks: {total}");
    assert_eq!(chunks, (2..=total).collect::<Vec<_>>());
    assert!(
        store
            .unsent_outbox(gitlab_worker::store::OutboxLane::Events, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Nothing of the export or the diff is left in the spool folder.
    let left: Vec<_> = std::fs::read_dir(dir.join("spool"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
