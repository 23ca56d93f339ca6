//! The worker as governance platforms use it: jobs published to NATS JetStream, the built
//! `gitlab-worker serve` against the simulator, results, DLQ copies and events read back.

use std::time::Duration;

use gitlab_e2e::{
    NatsServer, PgDb, Worker, publish_job, read_stream, sqlite_url, sync_job, tempdir,
};
use gitlab_sim::{Mode, SeedSpec, SimConfig};
use serde_json::Value;

struct Env {
    nats: NatsServer,
    sim: gitlab_sim::Running,
    token: String,
    js: async_nats::jetstream::Context,
}

async fn env() -> Env {
    gitlab_connector::client::install_crypto_provider();
    let seeded = gitlab_sim::seed::generate(&SeedSpec::small(7, Mode::SelfManaged));
    let sim = gitlab_sim::start(
        seeded.world,
        SimConfig::for_mode(Mode::SelfManaged),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let client = async_nats::connect(&nats.url).await.unwrap();
    Env {
        js: async_nats::jetstream::new(client),
        nats,
        sim,
        token: seeded.token,
    }
}

fn worker_env(e: &Env, database_url: &str, extra: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = vec![
        ("GITLAB_URL", e.sim.url.clone()),
        ("GITLAB_TOKEN", e.token.clone()),
        ("GITLAB_SCOPE", "org".into()),
        ("DATABASE_URL", database_url.into()),
        ("NATS_URL", e.nats.url.clone()),
    ];
    for (k, val) in extra {
        let k: &'static str = Box::leak(k.to_string().into_boxed_str());
        v.push((k, val.to_string()));
    }
    v
}

async fn spawn_worker(env: Vec<(&'static str, String)>) -> Worker {
    tokio::task::spawn_blocking(move || Worker::serve(&env))
        .await
        .unwrap()
}

fn json(m: &async_nats::jetstream::Message) -> Value {
    serde_json::from_slice(&m.payload).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_job_stores_a_snapshot_and_publishes_its_result_and_events_postgres() {
    let e = env().await;
    let db = PgDb::create().await;
    let worker = spawn_worker(worker_env(&e, &db.url, &[])).await;

    let ack = publish_job(
        &e.js,
        "gitlab.jobs.default.sync",
        sync_job("sync-1", "default"),
        Some("sync-1"),
    )
    .await;
    assert!(!ack.duplicate);
    let results = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.default.sync",
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(results.len(), 1, "worker log:\n{}", worker.stderr());
    let r = json(&results[0]);
    assert_eq!(r["schema"], "gitlab-connector.result.v1");
    assert_eq!(r["job_id"], "sync-1");
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["snapshot"]["complete"], true);
    assert_eq!(
        results[0]
            .headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str(),
        "sync-1"
    );
    let snapshot_id = r["snapshot"]["snapshot_id"].as_str().unwrap().to_string();

    // Events: the summary, then the access diff (all access is new: no earlier snapshot).
    let snap_ev = read_stream(
        &e.js,
        "GITLAB_EVENTS",
        "gitlab.events.default.snapshot",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(snap_ev.len(), 1);
    let ev = json(&snap_ev[0]);
    assert_eq!(ev["snapshot_id"], snapshot_id.as_str());
    assert_eq!(ev["sha256"], r["snapshot"]["sha256"]);
    let access_ev = read_stream(
        &e.js,
        "GITLAB_EVENTS",
        "gitlab.events.default.access",
        100,
        Duration::from_secs(3),
    )
    .await;
    assert!(!access_ev.is_empty());
    let first = json(&access_ev[0]);
    let chunks = first["chunks"].as_u64().unwrap() as usize;
    assert_eq!(access_ev.len(), chunks);
    let added: usize = access_ev
        .iter()
        .map(|m| {
            json(m)["lines"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["type"] == "access_change" && l["change"] == "access_added")
                .count()
        })
        .sum();
    let access_count = r["snapshot"]["counts"]["access"].as_u64().unwrap() as usize;
    assert_eq!(
        added, access_count,
        "every access record is announced as added"
    );
    for m in &access_ev {
        assert!(m.payload.len() < 1024 * 1024);
    }

    // The full snapshot is in the object store, byte-identical to the database's export.
    let bucket = e.js.get_object_store("GITLAB_SNAPSHOTS").await.unwrap();
    let name = ev["object"]["name"].as_str().unwrap().to_string();
    let mut obj = bucket.get(&name).await.unwrap();
    let mut object_bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut obj, &mut object_bytes)
        .await
        .unwrap();
    let export = assert_cmd::Command::cargo_bin("gitlab-worker")
        .unwrap()
        .args(["snapshots", "export", &snapshot_id])
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert_eq!(
        export.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    assert_eq!(export.stdout, object_bytes);
    let summary =
        gitlab_connector::snapshot::verify(std::io::BufReader::new(&object_bytes[..])).unwrap();
    assert_eq!(summary.sha256, r["snapshot"]["sha256"].as_str().unwrap());

    // Health endpoints.
    let w = worker;
    let (status, _) = tokio::task::spawn_blocking({
        let http = w.http.clone();
        move || get(&http, "/readyz")
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let (status, metrics) = w.get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("gitlab_worker_jobs_total"), "{metrics}");
    assert!(
        metrics.contains("gitlab_worker_gitlab_requests_total"),
        "{metrics}"
    );
}

fn get(http: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, resp)
}

#[allow(dead_code)]
fn unused(_: &std::path::Path) -> String {
    sqlite_url(&tempdir("x"))
}
