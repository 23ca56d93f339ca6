//! Beyond one machine (docs/scale-out.md): a three-server NATS cluster with replicated
//! streams, three workers on one PostgreSQL database, faults in the middle of a run of mixed
//! jobs, grants that do not wait behind syncs, and one GitLab budget shared by the workers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use gitlab_e2e::{NatsCluster, NatsServer, PgDb, Worker, read_stream, tempdir};
use gitlab_sim::http::{SimConfig, UserRateLimit};
use gitlab_sim::model::{Mode, Resource, UserKind, World};
use serde_json::{Value, json};

const TOKEN: &str = "sim-scale-out-root-token-0001";

/// Rounds of mixed jobs (4 grants, 2 revokes, 1 invitation, a sync every third round): 10 in
/// the suite (74 jobs); `SCALE_OUT_ROUNDS=137` runs the 1,000-job version on demand.
fn rounds() -> usize {
    std::env::var("SCALE_OUT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n >= 3)
        .unwrap_or(10)
}

/// A self-managed world whose administrator `root` will own the connector's token.
fn with_admin() -> (World, u64) {
    let mut w = World::new(Mode::SelfManaged);
    let root = w.add_user("root", UserKind::Human);
    w.users.get_mut(&root).unwrap().is_admin = true;
    (w, root)
}

/// Gives `root` the connector's token (valid 90 days) and indexes the world.
fn with_token(mut w: World, root: u64) -> World {
    let today = w.today();
    w.add_token(
        root,
        "connector",
        TOKEN,
        &["api"],
        Some(today + chrono::Duration::days(90)),
    );
    w.reindex();
    w
}

/// `org/team` with 2 members to revoke (r…) and 4 users to grant (g…) per round (20 and 40 in
/// the suite); `root` is an administrator and owns the token.
fn team_world() -> World {
    let (mut w, root) = with_admin();
    let org = w.add_group("org", None);
    let team = w.add_group("team", Some(org));
    w.add_project("app", team);
    for i in 0..2 * rounds() {
        let u = w.add_user(&format!("r{i:02}"), UserKind::Human);
        w.set_member(Resource::Group(team), u, 30, None);
    }
    for i in 0..4 * rounds() {
        w.add_user(&format!("g{i:02}"), UserKind::Human);
    }
    with_token(w, root)
}

fn job(id: &str, kind: &str, params: Value) -> (String, String, String) {
    let body = json!({
        "schema": "gitlab-connector.job.v1",
        "job_id": id,
        "connector": "default",
        "kind": kind,
        "dry_run": false,
        "requested_by": "scale-out test",
        "params": params,
    });
    (
        id.to_string(),
        format!("gitlab.jobs.default.{kind}"),
        body.to_string(),
    )
}

/// Per round 4 grants (the first 10 of all for 4 s), 2 revokes, 1 invitation, and a sync every
/// third round, interleaved: 40, 20, 10 and 4 in the suite.
fn mixed_jobs() -> Vec<(String, String, String)> {
    let team = json!({"group": "org/team"});
    let mut grants = (0..4 * rounds()).map(|i| {
        let mut p = json!({"user": {"username": format!("g{i:02}")}, "target": team, "access_level": "developer"});
        if i < 10 {
            p["duration_seconds"] = json!(4);
        }
        job(&format!("grant-{i:02}"), "grant", p)
    });
    let mut revokes = (0..2 * rounds()).map(|i| {
        job(
            &format!("revoke-{i:02}"),
            "revoke",
            json!({"user": {"username": format!("r{i:02}")}, "target": team}),
        )
    });
    let mut invites = (0..rounds()).map(|i| {
        job(
            &format!("invite-{i:02}"),
            "invite",
            json!({"email": format!("new{i:02}@example.com"), "target": team, "access_level": 30}),
        )
    });
    let mut out = Vec::new();
    for round in 0..rounds() {
        out.extend(grants.by_ref().take(4));
        out.extend(revokes.by_ref().take(2));
        out.extend(invites.by_ref().take(1));
        if round % 3 == 0 {
            out.push(job(&format!("sync-{round}"), "sync", json!({})));
        }
    }
    out
}

/// Publishes, retrying while the cluster fails over (the message id makes a retry harmless).
async fn publish(js: &jetstream::Context, (id, subject, body): &(String, String, String)) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let msg = jetstream::message::PublishMessage::build()
            .payload(body.clone().into())
            .message_id(id);
        let sent = match js.send_publish(subject.clone(), msg).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match sent {
            Ok(()) => return,
            Err(e) => {
                assert!(Instant::now() < deadline, "publishing {id} failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

struct Run {
    cluster: NatsCluster,
    sim: gitlab_sim::Running,
    db: PgDb,
    js: jetstream::Context,
    workers: Vec<Worker>,
}

impl Run {
    async fn start(world: World, config: SimConfig) -> Self {
        gitlab_connector::client::install_crypto_provider();
        let sim = gitlab_sim::start(world, config, "127.0.0.1:0")
            .await
            .unwrap();
        let cluster = NatsCluster::start().await;
        let db = PgDb::create().await;
        let js = jetstream::new(gitlab_e2e::cluster_client(&cluster.url).await);
        let mut run = Self {
            cluster,
            sim,
            db,
            js,
            workers: Vec::new(),
        };
        for _ in 0..3 {
            let w = run.worker(&[]).await;
            run.workers.push(w);
        }
        run
    }

    async fn worker(&self, extra: &[(&'static str, &str)]) -> Worker {
        let mut env: Vec<(&str, String)> = vec![
            ("GITLAB_URL", self.sim.url.clone()),
            ("GITLAB_TOKEN", TOKEN.into()),
            ("GITLAB_SCOPE", "org".into()),
            ("DATABASE_URL", self.db.url.clone()),
            ("NATS_URL", self.cluster.url.clone()),
            ("NATS_STREAM_REPLICAS", "3".into()),
            ("NATS_ACK_WAIT_SECONDS", "3".into()),
            ("RECONCILE_INTERVAL_SECONDS", "0".into()),
        ];
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((*k, v.to_string()));
        }
        tokio::task::spawn_blocking(move || Worker::serve(&env))
            .await
            .unwrap()
    }

    /// Every result, once all `n` are in. Reading retries while the cluster fails over (a
    /// consumer cannot be created while the stream elects a leader).
    async fn results(&self, n: usize) -> BTreeMap<String, Value> {
        let deadline = Instant::now() + Duration::from_secs(120 + 12 * rounds() as u64);
        let mut out = BTreeMap::new();
        while out.len() < n && Instant::now() < deadline {
            out.clear();
            let Ok(stream) = self.js.get_stream("GITLAB_RESULTS").await else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let consumer = stream
                .create_consumer(jetstream::consumer::pull::Config {
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ack_policy: jetstream::consumer::AckPolicy::None,
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await;
            let Ok(consumer) = consumer else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let Ok(mut msgs) = consumer.messages().await else {
                continue;
            };
            while out.len() < n {
                let wait = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(wait, futures::StreamExt::next(&mut msgs)).await {
                    Ok(Some(Ok(m))) => {
                        let v: Value = serde_json::from_slice(&m.payload).unwrap();
                        let id = v["job_id"].as_str().unwrap().to_string();
                        assert!(out.insert(id.clone(), v).is_none(), "two results for {id}");
                    }
                    Ok(Some(Err(_))) => break,
                    Ok(None) | Err(_) => break,
                }
            }
        }
        out
    }

    /// Publishes `jobs` and waits until each has exactly one result, every one of them a
    /// success.
    async fn answer_all(&self, jobs: &[(String, String, String)]) {
        for j in jobs {
            publish(&self.js, j).await;
        }
        let results = self.results(jobs.len()).await;
        assert_every_job_answered_once(jobs, &results, &self.logs());
    }

    /// The requests the simulator saw, and how many it answered 429.
    fn gitlab_requests(&self) -> (Vec<gitlab_sim::http::LogEntry>, usize) {
        let requests = self.sim.sim.requests();
        let throttled = requests.iter().filter(|r| r.status == 429).count();
        (requests, throttled)
    }

    /// No worker paced a request alone for want of the shared budget (NATS was up throughout).
    fn assert_budget_always_shared(&self) {
        for w in &self.workers {
            let log = w.stderr();
            assert!(
                !log.contains("shared GitLab budget is unreachable"),
                "{log}"
            );
        }
    }

    fn logs(&self) -> String {
        self.workers
            .iter()
            .map(|w| {
                w.stderr()
                    .lines()
                    .rev()
                    .take(30)
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    }

    /// GitLab's state is what the jobs asked for: every permanent grant holds, every JIT grant
    /// has expired (within `expiry`), every revoked member is gone, every invitation is there.
    async fn assert_final_state(&self, expiry: Duration) {
        let deadline = Instant::now() + expiry;
        loop {
            let (by_name, invited) = {
                let w = self.sim.sim.world.read().unwrap();
                team_state(&w)
            };
            let jit_gone = (0..10).all(|i| !by_name.contains_key(&format!("g{i:02}")));
            if jit_gone || Instant::now() > deadline {
                assert!(jit_gone, "a JIT grant was left behind: {by_name:?}");
                for i in 10..4 * rounds() {
                    assert_eq!(by_name.get(&format!("g{i:02}")), Some(&30), "{by_name:?}");
                }
                for i in 0..2 * rounds() {
                    assert!(!by_name.contains_key(&format!("r{i:02}")), "{by_name:?}");
                }
                for i in 0..rounds() {
                    assert!(
                        invited.contains(&format!("new{i:02}@example.com")),
                        "{invited:?}"
                    );
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// `org/team`'s direct members (username → level) and invited emails.
fn team_state(w: &World) -> (BTreeMap<String, u32>, BTreeSet<String>) {
    let team = w
        .groups
        .values()
        .find(|g| g.full_path == "org/team")
        .unwrap()
        .id;
    let by_name = w
        .members
        .get(&Resource::Group(team))
        .map(|m| {
            m.iter()
                .map(|(id, m)| (w.users[id].username.clone(), u32::from(m.access_level)))
                .collect()
        })
        .unwrap_or_default();
    let invited = w
        .invitations
        .get(&Resource::Group(team))
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    (by_name, invited)
}

fn assert_every_job_answered_once(
    jobs: &[(String, String, String)],
    results: &BTreeMap<String, Value>,
    logs: &str,
) {
    let wanted: BTreeSet<&str> = jobs.iter().map(|j| j.0.as_str()).collect();
    let got: BTreeSet<&str> = results.keys().map(String::as_str).collect();
    assert_eq!(wanted, got, "{logs}");
    for (id, r) in results {
        assert!(
            ["succeeded", "noop"].contains(&r["status"].as_str().unwrap()),
            "{id}: {r}\n{logs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_three_server_cluster_keeps_every_job_when_the_stream_leader_dies() {
    let mut run = Run::start(team_world(), SimConfig::for_mode(Mode::SelfManaged)).await;
    let mut jobs_stream = run.js.get_stream("GITLAB_JOBS").await.unwrap();
    let info = jobs_stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3, "the jobs stream is replicated");
    for s in [
        "GITLAB_RESULTS",
        "GITLAB_DLQ",
        "GITLAB_EVENTS",
        "GITLAB_HOOKS",
        "OBJ_GITLAB_SNAPSHOTS",
        "KV_GITLAB_BUDGET",
    ] {
        let mut st = run.js.get_stream(s).await.unwrap();
        assert_eq!(st.info().await.unwrap().config.num_replicas, 3, "{s}");
    }
    let jobs = mixed_jobs();
    let (first, rest) = jobs.split_at(jobs.len() / 2);
    for j in first {
        publish(&run.js, j).await;
    }
    read_stream(
        &run.js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        5,
        Duration::from_secs(60),
    )
    .await;
    let leader = run
        .cluster
        .leader_of(&run.js, "GITLAB_JOBS")
        .await
        .expect("the jobs stream has a leader");
    run.cluster.nodes[leader].kill();
    for j in rest {
        publish(&run.js, j).await;
    }
    let results = run.results(jobs.len()).await;
    assert_every_job_answered_once(&jobs, &results, &run.logs());
    run.assert_final_state(Duration::from_secs(30)).await;
    // The killed server comes back and catches up; nothing is answered twice.
    run.cluster.nodes[leader].start_again();
    assert_eq!(run.results(jobs.len()).await.len(), jobs.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_killed_every_few_seconds_lose_and_repeat_no_job() {
    let mut run = Run::start(team_world(), SimConfig::for_mode(Mode::SelfManaged)).await;
    let jobs = mixed_jobs();
    for j in &jobs {
        publish(&run.js, j).await;
    }
    let mut victim = 0;
    loop {
        let answered =
            gitlab_e2e::count_stream(&run.js, "GITLAB_RESULTS", "gitlab.results.>").await;
        if answered >= jobs.len() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.workers[victim].kill();
        run.workers[victim] = run.worker(&[]).await;
        victim = (victim + 1) % 3;
    }
    let results = run.results(jobs.len()).await;
    assert_every_job_answered_once(&jobs, &results, &run.logs());
    run.assert_final_state(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn revokes_queued_on_one_groups_deletion_limit_wait_in_the_queue_not_in_a_worker() {
    // GitLab deletes at most 60 members a minute per group: 20 revokes on org/team take about
    // 20 s however many workers run them. Three workers share the group's slots, and a
    // revoke whose slot is far off is handed back to NATS until it instead of being held.
    use gitlab_connector::client::SharedBudget;
    use gitlab_worker::nats::budget::{KvBudget, bucket};

    let world = team_world();
    let team = world.group_by_ref("org/team").expect("org/team exists");
    let run = Run::start(world, SimConfig::for_mode(Mode::SelfManaged)).await;
    run.sim.sim.reset_log();
    // Another process has just taken the group's next 8 s of deletions: every revoke's slot is
    // at least that far off when it is reserved, however slowly a loaded machine publishes and
    // runs them, so every revoke must wait in the queue at least once.
    let kv = bucket(
        &run.js,
        &gitlab_worker::subjects::Subjects::new("gitlab"),
        3,
    )
    .await
    .unwrap();
    KvBudget::new(kv, "default")
        .reserve(&format!("MemberDelete.{team}"), 1, Duration::from_secs(8))
        .await
        .unwrap();
    let jobs: Vec<_> = (0..2 * rounds())
        .map(|i| {
            job(
                &format!("revoke-{i:02}"),
                "revoke",
                json!({"user": {"username": format!("r{i:02}")}, "target": {"group": "org/team"}}),
            )
        })
        .collect();
    run.answer_all(&jobs).await;
    // The group's limit was shared: not one deletion was refused.
    let (requests, throttled) = run.gitlab_requests();
    let deletes = requests.iter().filter(|r| r.method == "DELETE").count();
    assert_eq!(deletes, jobs.len(), "one deletion per revoke");
    assert_eq!(throttled, 0, "{throttled} requests were answered 429");
    // Twenty reservations racing on one key of a replicated bucket: each lost race was read
    // again, none taken for the budget being away (NATS answers them differently on a cluster).
    run.assert_budget_always_shared();
    // Each revoke waited in the queue and then made one attempt.
    let store = gitlab_worker::store::Store::connect(&run.db.url)
        .await
        .unwrap();
    for (id, ..) in &jobs {
        let job = store.job(id).await.unwrap().unwrap();
        assert_eq!(
            job.attempts - job.deferrals,
            1,
            "{id}: {} deliveries, {} deferrals",
            job.attempts,
            job.deferrals
        );
        assert!(
            job.deferrals >= 1,
            "{id} was held in a worker, not deferred\n{}",
            run.logs()
        );
    }
}

/// Three top-level groups, each a scope of its own with 6 subgroups, 8 projects and members.
fn three_scopes_world() -> World {
    let (mut w, root) = with_admin();
    let users: Vec<u64> = (0..30)
        .map(|i| w.add_user(&format!("u{i:02}"), UserKind::Human))
        .collect();
    for s in ["s0", "s1", "s2"] {
        let top = w.add_group(s, None);
        for g in 0..6 {
            let sub = w.add_group(&format!("g{g}"), Some(top));
            w.set_member(Resource::Group(sub), users[g * 4], 30, None);
            if g < 4 {
                for p in 0..2 {
                    let project = w.add_project(&format!("p{p}"), sub);
                    w.set_member(Resource::Project(project), users[g * 4 + p + 1], 20, None);
                }
            }
        }
    }
    with_token(w, root)
}

#[tokio::test(flavor = "multi_thread")]
async fn three_workers_syncing_under_gitlabs_limit_share_it_and_meet_no_429() {
    // GitLab allows 100 requests a minute per user; each worker is told the same. Three
    // syncs at once need more than that, so only a shared budget keeps them under it.
    let limit = 100u64;
    let mut config = SimConfig::for_mode(Mode::SelfManaged);
    config.rate_limit = Some(UserRateLimit {
        limit,
        period_secs: 60,
    });
    let mut run = Run::start(three_scopes_world(), config).await;
    for w in run.workers.drain(..) {
        drop(w);
    }
    for _ in 0..3 {
        let w = run
            .worker(&[
                ("GITLAB_RATE_LIMIT_PER_MINUTE", "100"),
                ("GITLAB_SCOPE", "instance"),
            ])
            .await;
        run.workers.push(w);
    }
    run.sim.sim.reset_log();
    let jobs: Vec<_> = ["s0", "s1", "s2"]
        .iter()
        .map(|s| job(&format!("sync-{s}"), "sync", json!({"scope": s})))
        .collect();
    run.answer_all(&jobs).await;
    run.assert_budget_always_shared();
    let (requests, throttled) = run.gitlab_requests();
    assert_eq!(
        throttled,
        0,
        "{throttled} of {} requests were answered 429",
        requests.len()
    );
    assert!(
        requests.len() as u64 > limit,
        "the syncs sent {} requests: too few to need the limit (make the scopes larger)",
        requests.len()
    );
    // The workers' jobs ran at once (each took a sync), not one after another.
    let ran_on: BTreeSet<String> = run
        .workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.stderr().contains("snapshot stored"))
        .map(|(i, _)| i.to_string())
        .collect();
    assert!(ran_on.len() >= 2, "the syncs ran on {ran_on:?} only");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_does_not_wait_behind_syncs_and_one_scope_syncs_once_at_a_time() {
    // GitLab answers slowly, so each sync of org takes seconds.
    let mut config = SimConfig::for_mode(Mode::SelfManaged);
    config.faults.latency_ms = 150;
    let sim = gitlab_sim::start(team_world(), config, "127.0.0.1:0")
        .await
        .unwrap();
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let dir = tempdir("grant-first");
    let env: Vec<(&str, String)> = vec![
        ("GITLAB_URL", sim.url.clone()),
        ("GITLAB_TOKEN", TOKEN.into()),
        ("GITLAB_SCOPE", "org".into()),
        ("DATABASE_URL", gitlab_e2e::sqlite_url(&dir)),
        ("NATS_URL", nats.url.clone()),
        ("WORKER_CONCURRENCY_SYNC", "2".into()),
        ("WORKER_CONCURRENCY_PROVISION", "1".into()),
        ("RECONCILE_INTERVAL_SECONDS", "0".into()),
    ];
    let worker = tokio::task::spawn_blocking(move || Worker::serve(&env))
        .await
        .unwrap();
    let syncs: Vec<_> = (0..3)
        .map(|i| job(&format!("sync-{i}"), "sync", json!({})))
        .collect();
    for j in &syncs {
        publish(&js, j).await;
    }
    let grant = job(
        "grant-urgent",
        "grant",
        json!({"user": {"username": "g00"}, "target": {"group": "org/team"}, "access_level": "developer", "duration_seconds": 600}),
    );
    publish(&js, &grant).await;
    let results = read_stream(
        &js,
        "GITLAB_RESULTS",
        "gitlab.results.>",
        4,
        Duration::from_secs(180),
    )
    .await;
    let order: Vec<String> = results
        .iter()
        .map(|m| {
            serde_json::from_slice::<Value>(&m.payload).unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Both sync permits are taken (one sync runs, one waits for the scope) and one sync is
    // queued; the grant has a consumer and a permit of its own, so at most the sync already
    // running can finish before it. A single shared pool of two would answer it third.
    let grant_at = order.iter().position(|id| id == "grant-urgent").unwrap();
    assert!(
        grant_at <= 1,
        "the grant waited behind the syncs: {order:?}\n{}",
        worker.stderr()
    );
    // Two sync permits, one scope: the syncs ran one after another, each chained to the last.
    let snapshots: Vec<Value> = results
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
        .filter(|v| v["kind"] == "sync")
        .collect();
    assert_eq!(snapshots.len(), 3);
    let mut chained = 0;
    for pair in snapshots.windows(2) {
        assert_eq!(
            pair[1]["snapshot"]["prev_sha256"], pair[0]["snapshot"]["sha256"],
            "{pair:?}"
        );
        chained += 1;
    }
    assert_eq!(chained, 2);
    assert!(
        worker
            .stderr()
            .contains("another sync of this scope is running"),
        "{}",
        worker.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_starting_together_on_a_new_database_migrate_it_once() {
    let db = PgDb::create().await;
    let env = vec![("DATABASE_URL".to_string(), db.url.clone())];
    let runs = (0..4).map(|_| gitlab_e2e::run_worker(&["migrate"], &env));
    for out in futures::future::join_all(runs).await {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
