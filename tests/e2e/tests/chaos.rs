//! Chaos, the short deterministic version of what an operator fears: two workers sharing the
//! job consumer on PostgreSQL, one of them SIGKILLed and restarted every few seconds (some kills
//! right after a JIT grant's expiry), and one NATS restart, during 60 mixed jobs. Every job is
//! answered exactly once, every JIT grant is undone within 30 s of its expiry with exactly one
//! `jit_expiry` event, no write reaches GitLab twice, and GitLab ends as the jobs intended.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, SubsecRound, Utc};
use gitlab_e2e::{NatsServer, PgDb, Worker, read_stream};
use gitlab_sim::{Mode, Resource, SeedSpec};
use serde_json::{Value, json};

const KILL_EVERY: Duration = Duration::from_millis(2_500);
const PUBLISH_EVERY: Duration = Duration::from_millis(300);
const NATS_RESTART_AT: Duration = Duration::from_secs(9);

/// What a job must leave behind in GitLab.
#[derive(Debug)]
enum Intent {
    Member {
        at: Resource,
        user: u64,
        level: Option<u16>,
    },
    Invited {
        group: u64,
        email: String,
    },
    NoMemberships {
        user: u64,
    },
    Nothing,
}

struct Job {
    id: String,
    kind: &'static str,
    params: Value,
    intent: Intent,
    /// For a JIT grant, its expiry.
    expires_at: Option<DateTime<Utc>>,
}

struct Plan {
    jobs: Vec<Job>,
    /// `METHOD /path` → how many times GitLab must see it.
    writes: BTreeMap<String, usize>,
}

fn write(plan: &mut BTreeMap<String, usize>, method: &str, path: String) {
    *plan.entry(format!("{method} {path}")).or_default() += 1;
}

/// Users with no membership or invitation anywhere, active humans: each job gets its own, so
/// what each job must leave behind does not depend on the others.
fn fresh_users(world: &gitlab_sim::model::World) -> Vec<u64> {
    let used: BTreeSet<u64> = world
        .members
        .values()
        .flat_map(|m| m.keys().copied())
        .collect();
    world
        .users
        .values()
        .filter(|u| !u.is_admin && !u.is_bot() && u.state == "active" && !used.contains(&u.id))
        .map(|u| u.id)
        .collect()
}

/// 60 jobs over the scope's groups, published `PUBLISH_EVERY` apart from `t0`; the world gets
/// the memberships that upgrades, revokes and deprovisions need.
fn plan(world: &mut gitlab_sim::model::World, scope: &str, t0: DateTime<Utc>) -> Plan {
    let groups: Vec<u64> = world
        .groups
        .values()
        .filter(|g| g.full_path == scope || g.full_path.starts_with(&format!("{scope}/")))
        .map(|g| g.id)
        .collect();
    let projects: Vec<u64> = world
        .projects
        .values()
        .filter(|p| p.group_id.is_some_and(|g| groups.contains(&g)))
        .map(|p| p.id)
        .collect();
    let mut users = fresh_users(world).into_iter();
    let mut next_user = || users.next().expect("enough fresh users in the seed");
    let mut kinds: Vec<&str> = [
        ("grant", 12),
        ("jit", 10),
        ("upgrade", 6),
        ("revoke", 10),
        ("invite", 8),
        ("sync", 6),
        ("deprovision", 8),
    ]
    .iter()
    .flat_map(|(k, n)| std::iter::repeat_n(*k, *n))
    .collect();
    fastrand::Rng::with_seed(16).shuffle(&mut kinds);
    let mut writes = BTreeMap::new();
    let mut jobs = Vec::new();
    for (i, kind) in kinds.into_iter().enumerate() {
        let g = groups[i % groups.len()];
        let id = format!("chaos-{i:02}-{kind}");
        let published =
            t0 + chrono::Duration::milliseconds(PUBLISH_EVERY.as_millis() as i64 * i as i64);
        // Far enough out that a job delayed by kills still starts before it, and later than
        // the last publication: the kills right after each expiry (every few hundred
        // milliseconds for a while) then fall after every job was first delivered. With 12 s
        // a job published among those kills could see every delivery killed before its
        // write-ahead record, and its expiry pass (answered `rejected`, rightly, on a loaded
        // machine).
        let expiry = (published + chrono::Duration::seconds(20 + (i % 4) as i64)).trunc_subsecs(0);
        let members = format!("/groups/{g}/members");
        let job = match kind {
            "grant" => {
                let u = next_user();
                write(&mut writes, "POST", members);
                Job {
                    params: json!({"user": {"id": u}, "target": {"group": g}, "access_level": 30}),
                    intent: Intent::Member {
                        at: Resource::Group(g),
                        user: u,
                        level: Some(30),
                    },
                    expires_at: None,
                    kind: "grant",
                    id,
                }
            }
            "jit" => {
                let u = next_user();
                write(&mut writes, "POST", members);
                write(&mut writes, "DELETE", format!("/groups/{g}/members/{u}"));
                Job {
                    params: json!({"user": {"id": u}, "target": {"group": g}, "access_level": 40, "expires_at": expiry.to_rfc3339()}),
                    intent: Intent::Member {
                        at: Resource::Group(g),
                        user: u,
                        level: None,
                    },
                    expires_at: Some(expiry),
                    kind: "grant",
                    id,
                }
            }
            "upgrade" => {
                let u = next_user();
                world.set_member(Resource::Group(g), u, 30, None);
                write(&mut writes, "PUT", format!("/groups/{g}/members/{u}"));
                write(&mut writes, "PUT", format!("/groups/{g}/members/{u}"));
                Job {
                    params: json!({"user": {"id": u}, "target": {"group": g}, "access_level": 40, "expires_at": expiry.to_rfc3339()}),
                    intent: Intent::Member {
                        at: Resource::Group(g),
                        user: u,
                        level: Some(30),
                    },
                    expires_at: Some(expiry),
                    kind: "grant",
                    id,
                }
            }
            "revoke" => {
                let u = next_user();
                world.set_member(Resource::Group(g), u, 30, None);
                write(&mut writes, "DELETE", format!("/groups/{g}/members/{u}"));
                Job {
                    params: json!({"user": {"id": u}, "target": {"group": g}}),
                    intent: Intent::Member {
                        at: Resource::Group(g),
                        user: u,
                        level: None,
                    },
                    expires_at: None,
                    kind: "revoke",
                    id,
                }
            }
            "invite" => {
                let email = format!("chaos-{i}@example.test");
                write(&mut writes, "POST", format!("/groups/{g}/invitations"));
                Job {
                    params: json!({"email": email, "target": {"group": g}, "access_level": 30}),
                    intent: Intent::Invited { group: g, email },
                    expires_at: None,
                    kind: "invite",
                    id,
                }
            }
            "deprovision" => {
                let u = next_user();
                let other = groups[(i + 5) % groups.len()];
                let p = projects[i % projects.len()];
                for (r, path) in [
                    (Resource::Group(g), format!("/groups/{g}/members/{u}")),
                    (
                        Resource::Group(other),
                        format!("/groups/{other}/members/{u}"),
                    ),
                    (Resource::Project(p), format!("/projects/{p}/members/{u}")),
                ] {
                    if !world.members.get(&r).is_some_and(|m| m.contains_key(&u)) {
                        world.set_member(r, u, 30, None);
                        write(&mut writes, "DELETE", path);
                    }
                }
                Job {
                    params: json!({"user": {"id": u}, "actions": ["remove_memberships"]}),
                    intent: Intent::NoMemberships { user: u },
                    expires_at: None,
                    kind: "deprovision",
                    id,
                }
            }
            _ => Job {
                params: json!({}),
                intent: Intent::Nothing,
                expires_at: None,
                kind: "sync",
                id,
            },
        };
        jobs.push(job);
    }
    Plan { jobs, writes }
}

/// Publishes until JetStream acknowledges: NATS may be restarting.
async fn publish(js: &jetstream::Context, job: &Job) {
    let envelope = json!({
        "schema": "gitlab-connector.job.v1",
        "job_id": job.id,
        "connector": "default",
        "kind": job.kind,
        "params": job.params,
        "requested_by": "chaos-test",
        "reason": "chaos",
    })
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let msg = jetstream::message::PublishMessage::build()
            .payload(envelope.clone().into())
            .message_id(&job.id);
        if let Ok(ack) = js
            .send_publish(format!("gitlab.jobs.default.{}", job.kind), msg)
            .await
            && ack.await.is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "cannot publish {}", job.id);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn payloads(msgs: &[jetstream::Message]) -> Vec<Value> {
    msgs.iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect()
}

/// The killer: SIGKILLs the workers in turn every `KILL_EVERY` and right after each JIT
/// expiry, restarting each at once; restarts NATS once. Returns the log files of every worker
/// it ran and how many kills there were.
fn chaos(
    env: Vec<(&'static str, String)>,
    mut nats: NatsServer,
    jit_expiries: Vec<Instant>,
    stop: Arc<AtomicBool>,
) -> (NatsServer, Vec<Worker>, Vec<std::path::PathBuf>, usize) {
    let start = Instant::now();
    let mut workers = vec![Worker::serve(&env), Worker::serve(&env)];
    let mut logs: Vec<_> = workers.iter().map(Worker::stderr_path).collect();
    let mut right_after_expiry: Vec<Instant> = jit_expiries
        .into_iter()
        .map(|t| t + Duration::from_millis(150))
        .collect();
    right_after_expiry.sort();
    let (mut kills, mut next_kill, mut nats_restarted) = (0usize, start + KILL_EVERY, false);
    while !stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if !nats_restarted && now >= start + NATS_RESTART_AT {
            nats.restart(Duration::from_secs(1));
            nats_restarted = true;
            continue;
        }
        let after_expiry = right_after_expiry.first().is_some_and(|t| now >= *t);
        if now >= next_kill || after_expiry {
            right_after_expiry.retain(|t| *t > now);
            let i = kills % 2;
            workers[i].kill();
            workers[i] = Worker::serve(&env);
            logs.push(workers[i].stderr_path());
            kills += 1;
            next_kill = Instant::now() + KILL_EVERY;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(nats_restarted, "the run was shorter than the NATS restart");
    (nats, workers, logs, kills)
}

fn tail_of_logs(logs: &[std::path::PathBuf]) -> String {
    let mut out = String::new();
    for p in logs {
        let log = std::fs::read_to_string(p).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .rev()
            .filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\"") || l.contains("panicked"))
            .take(10)
            .collect();
        out += &format!("--- {}\n", p.display());
        for l in lines.into_iter().rev() {
            out += l;
            out += "\n";
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn two_workers_killed_in_turn_and_a_nats_restart_lose_nothing_and_write_nothing_twice() {
    gitlab_connector::client::install_crypto_provider();
    let spec = SeedSpec {
        users: 800,
        ..SeedSpec::small(16, Mode::SelfManaged)
    };
    let seeded = gitlab_sim::start_seeded(&spec).await.unwrap();
    let t0 = Utc::now() + chrono::Duration::seconds(3);
    let plan = plan(&mut seeded.sim.world.write().unwrap(), &seeded.scope, t0);
    // GitLab answers a little slowly, so kills land in the middle of jobs.
    seeded.sim.config.lock().unwrap().faults.latency_ms = 15;
    let writes_before = seeded.sim.requests().len();
    assert_eq!(writes_before, 0, "nothing was sent before the run");

    let db = PgDb::create().await;
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    let env = vec![
        ("GITLAB_URL", seeded.running.url.clone()),
        ("GITLAB_TOKEN", seeded.token.clone()),
        ("GITLAB_SCOPE", seeded.scope.clone()),
        ("DATABASE_URL", db.url.clone()),
        ("NATS_URL", nats.url.clone()),
        ("NATS_ACK_WAIT_SECONDS", "3".into()),
    ];
    // Instants of the JIT expiries, for kills right after them.
    let jit_expiries: Vec<Instant> = plan
        .jobs
        .iter()
        .filter_map(|j| j.expires_at)
        .map(|t| Instant::now() + (t - Utc::now()).to_std().unwrap_or_default())
        .collect();
    let last_expiry = plan.jobs.iter().filter_map(|j| j.expires_at).max().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let killer = std::thread::spawn({
        let stop = stop.clone();
        move || chaos(env, nats, jit_expiries, stop)
    });

    tokio::time::sleep((t0 - Utc::now()).to_std().unwrap_or_default()).await;
    for job in &plan.jobs {
        publish(&js, job).await;
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
    // Kills go on until the last JIT grant has expired and a few seconds after.
    tokio::time::sleep(
        (last_expiry + chrono::Duration::seconds(4) - Utc::now())
            .to_std()
            .unwrap_or_default(),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let (_nats, workers, logs, kills) = tokio::task::spawn_blocking(move || killer.join().unwrap())
        .await
        .unwrap();
    assert!(kills >= 8, "only {kills} kills");

    // Every job is answered, exactly once.
    let deadline = Instant::now() + Duration::from_secs(90);
    let results = loop {
        let results = payloads(
            &read_stream(
                &js,
                "GITLAB_RESULTS",
                "gitlab.results.>",
                1_000,
                Duration::from_secs(2),
            )
            .await,
        );
        let answered: BTreeSet<&str> = results
            .iter()
            .filter_map(|r| r["job_id"].as_str())
            .collect();
        if answered.len() >= plan.jobs.len() || Instant::now() > deadline {
            break results;
        }
    };
    let mut per_job: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for r in &results {
        per_job
            .entry(r["job_id"].as_str().unwrap())
            .or_default()
            .push(r);
    }
    for job in &plan.jobs {
        let answers = per_job.get(job.id.as_str()).map_or(0, Vec::len);
        assert_eq!(
            answers,
            1,
            "{}: {answers} results\n{}",
            job.id,
            tail_of_logs(&logs)
        );
        let r = per_job[job.id.as_str()][0];
        let user = job.params["user"]["id"].as_u64().unwrap_or(u64::MAX);
        let touching: Vec<String> = seeded
            .sim
            .requests()
            .into_iter()
            .filter(|q| {
                q.path
                    .split('?')
                    .next()
                    .unwrap()
                    .ends_with(&format!("/members/{user}"))
            })
            .map(|q| format!("{} {} {}", q.method, q.path, q.status))
            .collect();
        assert_eq!(
            r["status"],
            "succeeded",
            "{}: {r}\nits user {user}'s member requests: {touching:?}\n{}",
            job.id,
            tail_of_logs(&logs)
        );
    }
    assert_eq!(results.len(), plan.jobs.len(), "no result of another job");

    // Every JIT grant is undone within 30 s of its expiry, announced exactly once.
    let jit: Vec<&Job> = plan
        .jobs
        .iter()
        .filter(|j| j.expires_at.is_some())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    let expiries = loop {
        let events: Vec<Value> = payloads(
            &read_stream(
                &js,
                "GITLAB_EVENTS",
                "gitlab.events.default.access",
                10_000,
                Duration::from_secs(2),
            )
            .await,
        )
        .into_iter()
        .filter(|e| e["cause"] == "jit_expiry")
        .collect();
        if events.len() >= jit.len() || Instant::now() > deadline {
            break events;
        }
    };
    for job in &jit {
        let events: Vec<&Value> = expiries
            .iter()
            .filter(|e| e["grant_job_id"] == job.id.as_str())
            .collect();
        assert_eq!(
            events.len(),
            1,
            "{}: {} jit_expiry events\n{}",
            job.id,
            events.len(),
            tail_of_logs(&logs)
        );
        let e = events[0];
        assert!(e["conflict"].is_null(), "{e}");
        let due: DateTime<Utc> = e["expires_at"].as_str().unwrap().parse().unwrap();
        let undone: DateTime<Utc> = e["undone_at"].as_str().unwrap().parse().unwrap();
        assert_eq!(
            due,
            job.expires_at.unwrap(),
            "the precise expiry the job asked for"
        );
        assert!(
            undone >= due && undone - due <= chrono::Duration::seconds(30),
            "{}: undone {} after its expiry",
            job.id,
            undone - due
        );
    }

    // No write reached GitLab twice, and none that no job asked for.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in seeded.sim.requests() {
        if r.method != "GET" && r.status != 429 && !r.path.starts_with("/_sim") {
            let path = r.path.split('?').next().unwrap().to_string();
            *seen.entry(format!("{} {path}", r.method)).or_default() += 1;
        }
    }
    assert_eq!(seen, plan.writes, "GitLab's writes, against the plan");

    // GitLab ends as the jobs intended.
    let world = seeded.sim.world.read().unwrap();
    for job in &plan.jobs {
        match &job.intent {
            Intent::Member { at, user, level } => {
                let now = world.members.get(at).and_then(|m| m.get(user));
                assert_eq!(now.map(|m| m.access_level), *level, "{}", job.id);
                if level.is_some() {
                    assert_eq!(now.unwrap().expires_at, None, "{}: no expiry left", job.id);
                }
            }
            Intent::Invited { group, email } => {
                let invited = world
                    .invitations
                    .get(&Resource::Group(*group))
                    .is_some_and(|i| i.contains_key(email));
                assert!(invited, "{}: {email} is invited", job.id);
            }
            Intent::NoMemberships { user } => {
                let left: Vec<_> = world
                    .members
                    .iter()
                    .filter(|(_, m)| m.contains_key(user))
                    .map(|(r, _)| *r)
                    .collect();
                assert!(left.is_empty(), "{}: still a member of {left:?}", job.id);
            }
            Intent::Nothing => {}
        }
    }
    drop(workers);
}
