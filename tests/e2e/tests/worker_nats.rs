//! The worker as governance platforms use it: jobs published to NATS JetStream, the built
//! `gitlab-worker serve` against the simulator, results, DLQ copies and events read back.

use std::time::Duration;

use gitlab_e2e::{
    NatsServer, PgDb, Worker, publish_job, read_stream, sqlite_url, sync_job, tempdir,
};
use gitlab_sim::{Mode, SeedSpec};
use serde_json::Value;

struct Env {
    nats: NatsServer,
    sim: gitlab_sim::Running,
    token: String,
    js: async_nats::jetstream::Context,
}

async fn env() -> Env {
    gitlab_connector::client::install_crypto_provider();
    let sim = gitlab_sim::start_seeded(&SeedSpec::small(7, Mode::SelfManaged))
        .await
        .unwrap();
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let client = async_nats::connect(&nats.url).await.unwrap();
    Env {
        js: async_nats::jetstream::new(client),
        nats,
        token: sim.token.clone(),
        sim: sim.running,
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
    // The jobs stream is bounded and refuses new jobs when full.
    let jobs =
        e.js.get_stream("GITLAB_JOBS")
            .await
            .unwrap()
            .cached_info()
            .config
            .clone();
    assert_eq!(
        jobs.discard,
        async_nats::jetstream::stream::DiscardPolicy::New
    );
    assert_eq!(jobs.max_messages, gitlab_worker::nats::JOBS_MAX_MESSAGES);
    assert_eq!(jobs.max_bytes, gitlab_worker::nats::JOBS_MAX_BYTES);
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
    gitlab_e2e::assert_valid(
        &gitlab_e2e::schema("gitlab-connector.result.v1.schema.json"),
        &r,
    );

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
    let events_schema = gitlab_e2e::schema("gitlab-connector.event.v1.schema.json");
    let diff_schema = gitlab_e2e::schema("gitlab-access-diff.v1.schema.json");
    gitlab_e2e::assert_valid(&events_schema, &ev);
    for m in &access_ev {
        assert!(m.payload.len() < 1024 * 1024);
        let v = json(m);
        gitlab_e2e::assert_valid(&events_schema, &v);
        for line in v["lines"].as_array().unwrap() {
            gitlab_e2e::assert_valid(&diff_schema, line);
        }
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
    // The summary event says what the object's header and trailer say (it is built from the
    // sync's own summary, not by reading the file again).
    let header_line = object_bytes.split(|b| *b == b'\n').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(header_line).unwrap();
    assert_eq!(header["type"], "snapshot");
    for field in ["connector", "scope", "snapshot_id", "started_at"] {
        assert_eq!(ev[field], header[field], "{field}");
    }
    let trailer = serde_json::to_value(&summary).unwrap();
    for field in ["finished_at", "complete", "counts", "sha256", "prev_sha256"] {
        assert_eq!(ev[field], trailer[field], "{field}");
    }
    assert_eq!(ev["errors_total"], summary.errors.len());

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

fn total_requests(sim: &gitlab_sim::Running) -> u64 {
    sim.sim.counts().values().map(|c| c.requests).sum()
}

fn msg_id(m: &async_nats::jetstream::Message) -> String {
    m.headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_job_id_published_twice_executes_once() {
    let e = env().await;
    let dir = tempdir("dup");
    let worker = spawn_worker(worker_env(&e, &sqlite_url(&dir), &[])).await;
    let job = sync_job("dup-1", "default");

    // A producer repeating its publish inside the duplicate window: NATS drops the copy.
    let first = publish_job(
        &e.js,
        "gitlab.jobs.default.sync",
        job.clone(),
        Some("dup-1"),
    )
    .await;
    let again = publish_job(
        &e.js,
        "gitlab.jobs.default.sync",
        job.clone(),
        Some("dup-1"),
    )
    .await;
    assert!(!first.duplicate);
    assert!(
        again.duplicate,
        "the JOBS stream deduplicates by Nats-Msg-Id"
    );
    let r1 = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(r1.len(), 1, "{}", worker.stderr());
    let requests_after_first = total_requests(&e.sim);

    // The same job id again without the header (past the window, or another producer): the
    // worker's store recognises it, publishes the stored result again and executes nothing.
    publish_job(&e.js, "gitlab.jobs.default.sync", job, None).await;
    let both = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        2,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(both.len(), 2, "{}", worker.stderr());
    assert_eq!(
        both[0].payload, both[1].payload,
        "the stored result, byte for byte"
    );
    assert_eq!(msg_id(&both[0]), "dup-1");
    assert!(msg_id(&both[1]).starts_with("dup-1 repeat "));
    assert_eq!(
        total_requests(&e.sim),
        requests_after_first,
        "no GitLab request for the repeat"
    );
    // One snapshot, not two.
    let events = read_stream(
        &e.js,
        "GITLAB_EVENTS",
        "gitlab.events.default.snapshot",
        2,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(events.len(), 1);
    assert!(worker.stderr().contains("job id seen before"));
}

/// Thirty malformed or unacceptable jobs of different kinds.
fn malformed_jobs() -> Vec<Vec<u8>> {
    let base = |kind: &str, params: Value| serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": format!("bad-{kind}"), "connector": "default", "kind": kind, "params": params});
    let mut v: Vec<Value> = vec![
        serde_json::json!({"job_id": "bad-1", "connector": "default", "kind": "sync", "params": {}}),
        serde_json::json!({"schema": "gitlab-connector.job.v2", "job_id": "bad-2", "connector": "default", "kind": "sync", "params": {}}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "connector": "default", "kind": "sync", "params": {}}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": "", "connector": "default", "kind": "sync", "params": {}}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": 17, "connector": "default", "kind": "sync", "params": {}}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": "bad-6", "kind": "sync", "params": {}}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": "bad-7", "connector": "default", "kind": "explode", "params": {}}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": "bad-8", "connector": "default", "params": {}}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": "bad-9", "connector": "default", "kind": "sync", "params": {}, "dryrun": true}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": "bad-10", "connector": "default", "kind": "sync", "params": {"scope": 5, "extra": 1}}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": "bad-11", "connector": "default", "kind": "sync", "dry_run": "yes", "params": {}}),
        serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": "bad-12", "connector": "elsewhere", "kind": "sync", "params": {}}),
    ];
    v.push(base(
        "grant",
        serde_json::json!({"user": {"id": 1}, "target": {"group": "org"}}),
    ));
    v.push(base(
        "grant",
        serde_json::json!({"user": {"id": 1}, "target": {"group": "org"}, "access_level": 31}),
    ));
    v.push(base(
        "grant",
        serde_json::json!({"user": {"id": 1}, "target": {"group": "org"}, "access_level": "boss"}),
    ));
    v.push(base(
        "grant",
        serde_json::json!({"user": {}, "target": {"group": "org"}, "access_level": 30}),
    ));
    v.push(base("grant", serde_json::json!({"user": {"id": 1, "username": "x"}, "target": {"group": "org"}, "access_level": 30})));
    v.push(base(
        "grant",
        serde_json::json!({"user": {"id": 1}, "target": {"team": "org"}, "access_level": 30}),
    ));
    v.push(base("grant", serde_json::json!({"user": {"id": 1}, "target": {"group": "org"}, "access_level": 30, "duration_seconds": -5})));
    v.push(base("grant", serde_json::json!({"user": {"id": 1}, "target": {"group": "org"}, "access_level": 30, "duration_seconds": 60, "expires_at": "2030-01-01T00:00:00Z"})));
    v.push(base("grant", serde_json::json!({"user": {"id": 1}, "target": {"group": "org"}, "access_level": 30, "expires_at": "next tuesday"})));
    v.push(base("revoke", serde_json::json!({})));
    v.push(base("revoke", serde_json::json!({"user": {"id": 1}})));
    v.push(base("invite", serde_json::json!({"email": "not-an-email", "target": {"group": "org"}, "access_level": 30})));
    v.push(base("invite", serde_json::json!({"email": "a@b.c", "target": {"group": "org"}, "access_level": 30, "expires_at": "2020-13-45"})));
    v.push(base(
        "deprovision",
        serde_json::json!({"user": {"id": 1}, "actions": ["vaporize"]}),
    ));
    v.push(base(
        "deprovision",
        serde_json::json!({"user": {"id": 1}, "actions": "block"}),
    ));
    v.push(base(
        "rotate_token",
        serde_json::json!({"min_days_left": "soon"}),
    ));
    let mut out: Vec<Vec<u8>> = v.into_iter().map(|j| j.to_string().into_bytes()).collect();
    out.push(b"this is not json".to_vec());
    out.push(vec![0xff, 0xfe, 0x00, 0x01]);
    assert_eq!(out.len(), 30);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_malformed_jobs_are_rejected_into_the_dlq_and_the_worker_keeps_serving() {
    let e = env().await;
    let dir = tempdir("malformed");
    let worker = spawn_worker(worker_env(&e, &sqlite_url(&dir), &[])).await;
    let jobs = malformed_jobs();
    for (i, j) in jobs.iter().enumerate() {
        let kind = [
            "sync",
            "grant",
            "revoke",
            "invite",
            "deprovision",
            "rotate_token",
        ][i % 6];
        publish_job(
            &e.js,
            &format!("gitlab.jobs.default.{kind}"),
            j.clone(),
            None,
        )
        .await;
    }
    let dlq = read_stream(
        &e.js,
        "GITLAB_DLQ",
        "gitlab.dlq.>",
        30,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(dlq.len(), 30, "{}", worker.stderr());
    let results = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        30,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(results.len(), 30);
    for r in &results {
        let v = json(r);
        assert_eq!(v["status"], "rejected", "{v}");
        assert_eq!(v["error"]["retryable"], false);
        let code = v["error"]["code"].as_str().unwrap();
        // bad-12, a well-formed job for connector `elsewhere` published on `default`'s subject,
        // is refused for its subject before its connector is looked up.
        assert!(
            ["invalid_job", "unknown_connector", "subject_mismatch"].contains(&code),
            "{v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.len() > 15, "a precise message: {v}");
    }
    // Every DLQ copy is the original payload with the reason in its headers.
    let mut payloads: Vec<Vec<u8>> = dlq.iter().map(|m| m.payload.to_vec()).collect();
    let mut sent = jobs.clone();
    payloads.sort();
    sent.sort();
    assert_eq!(payloads, sent);
    for m in &dlq {
        let h = m.headers.as_ref().unwrap();
        assert!(!h.get("Gitlab-Connector-Error").unwrap().as_str().is_empty());
        assert!(
            h.get("Gitlab-Connector-Original-Subject")
                .unwrap()
                .as_str()
                .starts_with("gitlab.jobs.default.")
        );
    }
    // The work queue is empty: nothing is redelivered in a loop.
    let mut jobs_stream = e.js.get_stream("GITLAB_JOBS").await.unwrap();
    assert_eq!(jobs_stream.info().await.unwrap().state.messages, 0);

    // And the worker still serves.
    publish_job(
        &e.js,
        "gitlab.jobs.default.sync",
        sync_job("after-bad", "default"),
        Some("after-bad"),
    )
    .await;
    let ok = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.default.sync",
        100,
        Duration::from_secs(3),
    )
    .await;
    let found = ok
        .iter()
        .map(json)
        .any(|v| v["job_id"] == "after-bad" && v["status"] == "succeeded");
    if !found {
        let again = read_stream(
            &e.js,
            "GITLAB_RESULTS",
            "gitlab.results.>",
            31,
            Duration::from_secs(60),
        )
        .await;
        assert!(
            again
                .iter()
                .map(json)
                .any(|v| v["job_id"] == "after-bad" && v["status"] == "succeeded"),
            "{}",
            worker.stderr()
        );
    }
}

/// Waits until the simulator has answered more than `n` requests.
async fn until_requests_exceed(sim: &gitlab_sim::Running, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while total_requests(sim) <= n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker made no GitLab requests"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn slow_gitlab(sim: &gitlab_sim::Running, latency_ms: u64) {
    sim.sim.config.lock().unwrap().faults.latency_ms = latency_ms;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_killed_mid_sync_is_restarted_and_the_job_completes_with_one_result() {
    let e = env().await;
    let dir = tempdir("sigkill");
    let db = sqlite_url(&dir);
    let extra = [("NATS_ACK_WAIT_SECONDS", "2")];
    let mut worker = spawn_worker(worker_env(&e, &db, &extra)).await;
    slow_gitlab(&e.sim, 150);
    let before = total_requests(&e.sim);
    publish_job(
        &e.js,
        "gitlab.jobs.default.sync",
        sync_job("kill-1", "default"),
        Some("kill-1"),
    )
    .await;
    until_requests_exceed(&e.sim, before + 3).await;
    worker.kill();
    slow_gitlab(&e.sim, 0);
    let none = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        1,
        Duration::from_millis(500),
    )
    .await;
    assert!(none.is_empty(), "killed before it could answer");

    let worker = spawn_worker(worker_env(&e, &db, &extra)).await;
    let results = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(results.len(), 1, "{}", worker.stderr());
    let r = json(&results[0]);
    assert_eq!(r["job_id"], "kill-1");
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["attempt"], 2, "the second attempt of the same job");
    let more = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        2,
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(more.len(), 1, "exactly one result");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_restart_during_a_run_loses_no_job() {
    let mut e = env().await;
    let dir = tempdir("natsrestart");
    let worker = spawn_worker(worker_env(
        &e,
        &sqlite_url(&dir),
        &[("NATS_ACK_WAIT_SECONDS", "3")],
    ))
    .await;
    slow_gitlab(&e.sim, 40);
    let ids: Vec<String> = (0..4).map(|i| format!("restart-{i}")).collect();
    for id in &ids {
        publish_job(
            &e.js,
            "gitlab.jobs.default.sync",
            sync_job(id, "default"),
            Some(id),
        )
        .await;
    }
    let before = total_requests(&e.sim);
    until_requests_exceed(&e.sim, before + 3).await;
    let nats = &mut e.nats;
    tokio::task::block_in_place(|| nats.restart(Duration::from_secs(1)));
    slow_gitlab(&e.sim, 0);
    // A new connection for the test's own reads (the old one reconnects too).
    let js = async_nats::jetstream::new(async_nats::connect(&e.nats.url).await.unwrap());
    let results = read_stream(
        &js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        4,
        Duration::from_secs(90),
    )
    .await;
    let mut got: Vec<String> = results
        .iter()
        .map(|m| json(m)["job_id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, ids, "{}", worker.stderr());
    for m in &results {
        assert_eq!(json(m)["status"], "succeeded");
    }
    let extra = read_stream(
        &js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        5,
        Duration::from_secs(4),
    )
    .await;
    assert_eq!(extra.len(), 4, "no duplicate results");
    let log = worker.stderr();
    assert!(
        log.contains("NATS disconnected"),
        "the worker saw the outage: {log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_job_in_flight_then_exits_cleanly() {
    let e = env().await;
    let dir = tempdir("sigterm");
    let mut worker = spawn_worker(worker_env(&e, &sqlite_url(&dir), &[])).await;
    slow_gitlab(&e.sim, 60);
    let before = total_requests(&e.sim);
    publish_job(
        &e.js,
        "gitlab.jobs.default.sync",
        sync_job("term-1", "default"),
        Some("term-1"),
    )
    .await;
    until_requests_exceed(&e.sim, before + 3).await;
    worker.terminate();
    let status = tokio::task::block_in_place(|| worker.wait_exit(Duration::from_secs(60)));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        worker.stderr()
    );
    let results = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        1,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(
        results.len(),
        1,
        "the job in flight finished and its result was published before exit"
    );
    assert_eq!(json(&results[0])["status"], "succeeded");
    let log = worker.stderr();
    assert!(log.contains("SIGTERM"), "{log}");
    let mut jobs = e.js.get_stream("GITLAB_JOBS").await.unwrap();
    assert_eq!(
        jobs.info().await.unwrap().state.messages,
        0,
        "acknowledged before exit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_past_the_deadline_hands_the_job_back_to_another_worker() {
    let e = env().await;
    let dir = tempdir("sigterm-deadline");
    let db = sqlite_url(&dir);
    let mut worker = spawn_worker(worker_env(&e, &db, &[("SHUTDOWN_GRACE_SECONDS", "1")])).await;
    slow_gitlab(&e.sim, 300);
    let before = total_requests(&e.sim);
    publish_job(
        &e.js,
        "gitlab.jobs.default.sync",
        sync_job("handback-1", "default"),
        Some("handback-1"),
    )
    .await;
    until_requests_exceed(&e.sim, before + 1).await;
    worker.terminate();
    let status = tokio::task::block_in_place(|| worker.wait_exit(Duration::from_secs(30)));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        worker.stderr()
    );
    assert!(
        worker.stderr().contains("handed back"),
        "{}",
        worker.stderr()
    );
    slow_gitlab(&e.sim, 0);
    // NAKed without delay: the next worker takes it at once (ack_wait is the default 30 s).
    let next = spawn_worker(worker_env(&e, &db, &[])).await;
    let results = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(results.len(), 1, "{}", next.stderr());
    assert_eq!(json(&results[0])["job_id"], "handback-1");
    assert_eq!(json(&results[0])["status"], "succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_authenticates_to_nats_with_a_token_or_a_user_and_password() {
    gitlab_connector::client::install_crypto_provider();
    let sim = gitlab_sim::start_seeded(&SeedSpec::small(2, Mode::SelfManaged))
        .await
        .unwrap();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 2] = [
        (
            &["--auth", "s3cret-nats-token"],
            &[("NATS_TOKEN", "s3cret-nats-token")],
        ),
        (
            &["--user", "worker", "--pass", "s3cret-pass"],
            &[("NATS_USER", "worker"), ("NATS_PASSWORD", "s3cret-pass")],
        ),
    ];
    for (server_args, creds) in cases {
        let args: Vec<String> = server_args.iter().map(|s| s.to_string()).collect();
        let nats = tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            NatsServer::start_with(&a)
        })
        .await
        .unwrap();
        let dir = tempdir("auth");
        let mut env: Vec<(&'static str, String)> = vec![
            ("GITLAB_URL", sim.url.clone()),
            ("GITLAB_TOKEN", sim.token.clone()),
            ("GITLAB_SCOPE", "org".into()),
            ("DATABASE_URL", sqlite_url(&dir)),
            ("NATS_URL", nats.url.clone()),
        ];
        for (k, v) in creds {
            let k: &'static str = Box::leak(k.to_string().into_boxed_str());
            env.push((k, v.to_string()));
        }
        let mut worker = spawn_worker(env).await;
        let (status, body) = worker.get("/readyz");
        assert_eq!(status, 200, "{body}");
        // The container healthcheck command agrees.
        let hc = assert_cmd::Command::cargo_bin("gitlab-worker")
            .unwrap()
            .args(["healthcheck", "--addr", &worker.http])
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(
            hc.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&hc.stderr)
        );
        let log = worker.stderr();
        assert!(!log.contains("s3cret"), "credentials never logged: {log}");
        worker.terminate();
        let exit = tokio::task::block_in_place(|| worker.wait_exit(Duration::from_secs(30)));
        assert_eq!(exit.and_then(|s| s.code()), Some(0));
    }
}

/// Polls `check` every 100 ms until it holds or `timeout` passes; returns whether it held.
async fn eventually(timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_nats_refuses_is_parked_and_every_later_one_is_published() {
    let e = env().await;
    let dir = tempdir("parked");
    let db = sqlite_url(&dir);
    let w = spawn_worker(worker_env(&e, &db, &[])).await;
    // A result of 2 MB (over the server's 1 MiB max payload) committed before a normal one,
    // as a job of an older version could have left it.
    let store = gitlab_worker::store::Store::open(&db).await.unwrap();
    let big = format!(
        "{{\"job_id\":\"big-1\",\"blob\":\"{}\"}}",
        "x".repeat(2 << 20)
    );
    store
        .enqueue(vec![
            gitlab_worker::store::OutboxMessage::Publish {
                msg_id: "big-1".into(),
                subject: "gitlab.results.default.deprovision".into(),
                payload: big,
            },
            gitlab_worker::store::OutboxMessage::Publish {
                msg_id: "small-1".into(),
                subject: "gitlab.results.default.grant".into(),
                payload: "{\"job_id\":\"small-1\"}".into(),
            },
        ])
        .await
        .unwrap();
    let got = read_stream(
        &e.js,
        "GITLAB_RESULTS",
        "gitlab.results.default.grant",
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        got.len(),
        1,
        "the message after the refused one is published\n{}",
        w.stderr()
    );
    let notice = read_stream(
        &e.js,
        "GITLAB_DLQ",
        "gitlab.dlq.default.deprovision",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(notice.len(), 1, "a DLQ notice of the parked message");
    let n = json(&notice[0]);
    assert_eq!(n["msg_id"], "big-1");
    assert!(n["reason"].as_str().unwrap().contains("max payload"), "{n}");
    assert!(
        notice[0].payload.len() < 4096,
        "the notice does not carry the message"
    );
    // /readyz says so until an operator dismisses it.
    assert!(
        eventually(Duration::from_secs(10), async || w.get("/readyz").0 == 503).await,
        "{:?}",
        w.get("/readyz")
    );
    assert!(
        w.get("/readyz").1.contains("parked"),
        "{:?}",
        w.get("/readyz")
    );
    assert_eq!(store.parked_outbox().await.unwrap().len(), 1);
    let dismissed = std::process::Command::new(assert_cmd::cargo::cargo_bin("gitlab-worker"))
        .args(["outbox", "dismiss", "--all"])
        .env_clear()
        .env("DATABASE_URL", &db)
        .env("GITLAB_URL", e.sim.url.clone())
        .env("GITLAB_TOKEN", e.token.clone())
        .output()
        .unwrap();
    assert!(
        dismissed.status.success(),
        "{}",
        String::from_utf8_lossy(&dismissed.stderr)
    );
    assert_eq!(w.get("/readyz").0, 200, "{:?}", w.get("/readyz"));
}

/// Two workers' budgets on one NATS key, reserving in turn and at once: every reservation owns
/// a slot of its own (a worker's remembered revision of the key is only a guess; when the other
/// wrote meanwhile its write is refused and it reads the key again).
#[tokio::test(flavor = "multi_thread")]
async fn budgets_sharing_a_key_never_hand_out_one_slot_twice() {
    use gitlab_connector::client::SharedBudget;
    use gitlab_worker::nats::budget::{KvBudget, bucket};
    use gitlab_worker::subjects::Subjects;

    let e = env().await;
    let subjects = Subjects::new("gitlab");
    let kv = bucket(&e.js, &subjects, 1).await.unwrap();
    let a = std::sync::Arc::new(KvBudget::new(kv.clone(), "default"));
    let b = std::sync::Arc::new(KvBudget::new(kv, "default"));
    let interval = Duration::from_millis(10);
    let mut starts = Vec::new();
    // In turn: each write finds the other's revision newer than the one it remembers.
    for i in 0..20 {
        let budget = if i % 2 == 0 { &a } else { &b };
        starts.push(budget.reserve("MemberDelete.7", 1, interval).await.unwrap());
    }
    // At once.
    let racing: Vec<_> = (0..12)
        .map(|i| {
            let budget = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(
                async move { budget.reserve("MemberDelete.7", 1, interval).await.unwrap() },
            )
        })
        .collect();
    for r in racing {
        starts.push(r.await.unwrap());
    }
    starts.sort();
    for pair in starts.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap();
        assert!(gap >= interval, "two slots overlap: {gap:?} apart");
    }
}
