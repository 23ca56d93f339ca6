//! Live access end to end: the simulator sends GitLab's webhooks (a group hook on the scope's
//! top-level group and a system hook) to the built worker's receiver, and every change reaches
//! an access event with `cause: "gitlab_event"` whose content matches GitLab's effective access
//! (the simulator's own computation). A reconcile repairs what no hook told.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gitlab_e2e::{
    NatsServer, Worker, assert_valid, http, publish_job, schema, sqlite_url, tempdir,
};
use gitlab_sim::{Mode, Resource, SeedSpec};
use serde_json::{Value, json};

const SECRET: &str = "live-hook-secret-for-tests-only";

struct Env {
    worker: Worker,
    js: jetstream::Context,
    _nats: NatsServer,
    sim: gitlab_sim::SeededSim,
    sim_addr: String,
    top: u64,
    events: consumer::pull::Stream,
    results: consumer::pull::Stream,
    db_url: String,
    /// The first sync's snapshot, which the live changes apply on.
    base_snapshot: String,
}

async fn follow(js: &jetstream::Context, stream: &str, filter: &str) -> consumer::pull::Stream {
    let s = js.get_stream(stream).await.unwrap();
    s.create_consumer(consumer::pull::Config {
        filter_subject: filter.to_string(),
        deliver_policy: consumer::DeliverPolicy::All,
        ack_policy: consumer::AckPolicy::None,
        inactive_threshold: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap()
    .messages()
    .await
    .unwrap()
}

async fn next_matching(
    s: &mut consumer::pull::Stream,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(Ok(m))) => {
                let v: Value = serde_json::from_slice(&m.payload).unwrap();
                if pred(&v) {
                    return v;
                }
            }
            Ok(Some(Err(_))) => continue,
            Ok(None) | Err(_) => panic!("no {what} within 30 s"),
        }
    }
}

impl Env {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[(&'static str, &str)]) -> Self {
        gitlab_connector::client::install_crypto_provider();
        let sim = gitlab_sim::start_seeded(&SeedSpec::small(5, Mode::SelfManaged))
            .await
            .unwrap();
        let nats = tokio::task::spawn_blocking(NatsServer::start)
            .await
            .unwrap();
        let dir = tempdir("live");
        let db_url = sqlite_url(&dir);
        let secret = dir.join("webhook-secret");
        std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let vars = vec![
            ("GITLAB_URL", sim.running.url.clone()),
            ("GITLAB_TOKEN", sim.token.clone()),
            ("GITLAB_SCOPE", sim.scope.clone()),
            ("DATABASE_URL", db_url.clone()),
            ("NATS_URL", nats.url.clone()),
            ("HOOKS_LISTEN", "127.0.0.1:0".into()),
            ("GITLAB_WEBHOOK_SECRET_FILE", secret.display().to_string()),
            ("RECONCILE_INTERVAL_SECONDS", "0".into()),
        ];
        let mut vars = vars;
        vars.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        let worker = tokio::task::spawn_blocking(move || Worker::serve(&vars))
            .await
            .unwrap();
        let js = jetstream::new(async_nats::connect(&nats.url).await.unwrap());
        let top = {
            let w = sim.sim.world.read().unwrap();
            w.index.group_by_path[&sim.scope.to_lowercase()]
        };
        let sim_addr = sim.running.url.trim_start_matches("http://").to_string();
        let events = follow(&js, "GITLAB_EVENTS", "gitlab.events.default.access").await;
        let results = follow(&js, "GITLAB_RESULTS", "gitlab.results.>").await;
        let mut e = Env {
            worker,
            js,
            _nats: nats,
            sim,
            sim_addr,
            top,
            events,
            results,
            db_url,
            base_snapshot: String::new(),
        };
        // GitLab's two ways of telling: the scope's group webhook and a system hook.
        let url = format!("http://{}/hooks/gitlab/default", e.worker.hooks_addr());
        let (s, b) = e.api("POST", &format!("/groups/{top}/hooks"), json!({"url": url, "token": SECRET, "member_events": true, "subgroup_events": true, "project_events": true, "push_events": false}));
        assert_eq!(s, 201, "{b}");
        let (s, b) = e.api(
            "POST",
            "/hooks",
            json!({"url": url, "token": SECRET, "push_events": false}),
        );
        assert_eq!(s, 201, "{b}");
        let r = e.run_job("first-sync", "sync").await;
        e.base_snapshot = r["snapshot"]["snapshot_id"].as_str().unwrap().to_string();
        e
    }

    /// A GitLab REST call with the connector's (admin) token.
    fn api(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        self.raw(method, &format!("/api/v4{path}"), body)
    }

    fn raw(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let (s, b) = http(
            &self.sim_addr,
            method,
            path,
            &[
                ("PRIVATE-TOKEN", &self.sim.token),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        );
        (s, serde_json::from_str(&b).unwrap_or(Value::Null))
    }

    async fn run_job(&mut self, job_id: &str, kind: &str) -> Value {
        let job = json!({"schema": "gitlab-connector.job.v1", "job_id": job_id, "connector": "default", "kind": kind, "params": {}});
        publish_job(
            &self.js,
            &format!("gitlab.jobs.default.{kind}"),
            job.to_string(),
            None,
        )
        .await;
        let r = next_matching(&mut self.results, "result", |v| v["job_id"] == job_id).await;
        assert_eq!(r["status"], "succeeded", "{r}");
        r
    }

    /// The next access event with `cause`.
    async fn next_event(&mut self, cause: &str) -> Value {
        let ev = next_matching(&mut self.events, cause, |v| v["cause"] == cause).await;
        assert_valid(&schema("gitlab-connector.event.v1.schema.json"), &ev);
        ev
    }

    /// A full sync, whose access diff against the live state is empty.
    async fn sync_finds_nothing_new(&mut self, job_id: &str) {
        self.run_job(job_id, "sync").await;
        let ev = self.next_event("sync").await;
        let summary = ev["lines"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["type"] == "diff_summary")
            .cloned()
            .unwrap();
        assert_eq!(
            (&summary["added"], &summary["removed"], &summary["changed"]),
            (&json!(0), &json!(0), &json!(0)),
            "{ev}"
        );
    }

    /// Every resource of the scope: its groups and their projects.
    fn scope_resources(&self) -> Vec<Resource> {
        let w = self.sim.sim.world.read().unwrap();
        let groups: Vec<u64> = w
            .groups
            .keys()
            .copied()
            .filter(|g| w.ancestors_and_self(*g).contains(&self.top))
            .collect();
        let projects = w
            .projects
            .values()
            .filter(|p| p.group_id.is_some_and(|g| groups.contains(&g)))
            .map(|p| Resource::Project(p.id));
        groups
            .iter()
            .map(|g| Resource::Group(*g))
            .chain(projects)
            .collect()
    }

    /// GitLab's effective access of `user` on every resource of the scope.
    fn levels(&self, user: u64) -> BTreeMap<Resource, u16> {
        let resources = self.scope_resources();
        let w = self.sim.sim.world.read().unwrap();
        resources
            .into_iter()
            .map(|r| (r, w.effective_level(user, r)))
            .filter(|(_, l)| *l > 0)
            .collect()
    }
}

fn resource(v: &Value) -> Resource {
    let id = v["id"].as_u64().unwrap();
    match v["type"].as_str().unwrap() {
        "group" => Resource::Group(id),
        _ => Resource::Project(id),
    }
}

/// An event's changes of one user: resource → (level before, level after), 0 for none.
fn changes_of(ev: &Value, user: u64) -> BTreeMap<Resource, (u16, u16)> {
    let level = |side: &Value| side["access_level"].as_u64().map_or(0, |l| l as u16);
    ev["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["type"] == "access_change" && l["user_id"] == user)
        .map(|l| {
            (
                resource(&l["resource"]),
                (level(&l["before"]), level(&l["after"])),
            )
        })
        .collect()
}

/// What GitLab's effective access says changed between two readings.
fn expected(
    before: &BTreeMap<Resource, u16>,
    after: &BTreeMap<Resource, u16>,
) -> BTreeMap<Resource, (u16, u16)> {
    let keys: BTreeSet<&Resource> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter_map(|r| {
            let (b, a) = (
                before.get(r).copied().unwrap_or(0),
                after.get(r).copied().unwrap_or(0),
            );
            (b != a).then_some((*r, (b, a)))
        })
        .collect()
}

/// A user with no membership anywhere.
fn new_user(e: &Env, username: &str) -> u64 {
    let (s, b) = e.raw(
        "POST",
        "/_sim/users",
        json!({"username": username, "email": format!("{username}@example.com")}),
    );
    assert_eq!(s, 201, "{b}");
    b["id"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_events_become_access_events_that_match_gitlabs_access() {
    let mut e = Env::start().await;
    let sub = {
        let w = e.sim.sim.world.read().unwrap();
        // A subgroup with a subgroup or project below it: inheritance must reach them.
        *w.groups
            .values()
            .filter(|g| g.parent_id == Some(e.top))
            .map(|g| g.id)
            .collect::<Vec<_>>()
            .iter()
            .max_by_key(|g| {
                w.projects
                    .values()
                    .filter(|p| {
                        p.group_id
                            .is_some_and(|pg| w.ancestors_and_self(pg).contains(g))
                    })
                    .count()
            })
            .unwrap()
    };
    let u = new_user(&e, "hooked");
    let mut last_sha: Option<String> = None;
    let mut check = |e: &Env, ev: &Value, user: u64, before: &BTreeMap<Resource, u16>| {
        let after = e.levels(user);
        let want = expected(before, &after);
        assert!(!want.is_empty(), "the change gave or took access");
        assert_eq!(changes_of(ev, user), want, "{ev}");
        assert!(!ev["source_events"].as_array().unwrap().is_empty());
        if let Some(prev) = &last_sha {
            assert_eq!(
                &ev["prev_sha256"], prev,
                "each batch chains to the one before"
            );
        }
        last_sha = Some(ev["sha256"].as_str().unwrap().to_string());
    };

    // Added to a subgroup through the API: access on it and everything below it.
    let before = e.levels(u);
    let (s, b) = e.api(
        "POST",
        &format!("/groups/{sub}/members"),
        json!({"user_id": u, "access_level": 30}),
    );
    assert_eq!(s, 201, "{b}");
    let ev = e.next_event("gitlab_event").await;
    check(&e, &ev, u, &before);
    assert!(
        changes_of(&ev, u).len() > 1,
        "inherited below the subgroup: {ev}"
    );

    // Its level changed, then removed.
    let before = e.levels(u);
    let (s, b) = e.api(
        "PUT",
        &format!("/groups/{sub}/members/{u}"),
        json!({"access_level": 40}),
    );
    assert_eq!(s, 200, "{b}");
    let ev = e.next_event("gitlab_event").await;
    check(&e, &ev, u, &before);
    assert!(
        ev["lines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["change"] == "access_changed")
    );

    let before = e.levels(u);
    let (s, b) = e.api("DELETE", &format!("/groups/{sub}/members/{u}"), Value::Null);
    assert_eq!(s, 204, "{b}");
    let ev = e.next_event("gitlab_event").await;
    check(&e, &ev, u, &before);

    // A project membership: only a system hook tells.
    let project = e
        .scope_resources()
        .into_iter()
        .rev()
        .find_map(|r| match r {
            Resource::Project(p) => Some(p),
            Resource::Group(_) => None,
        })
        .unwrap();
    let before = e.levels(u);
    let (s, b) = e.api(
        "POST",
        &format!("/projects/{project}/members"),
        json!({"user_id": u, "access_level": 20}),
    );
    assert_eq!(s, 201, "{b}");
    let ev = e.next_event("gitlab_event").await;
    check(&e, &ev, u, &before);
    assert_eq!(changes_of(&ev, u).len(), 1);

    // A duplicate delivery (another key, as a re-sent hook has) changes nothing: the next
    // event is the next change's.
    let replay = json!({"event_name": "user_add_to_team", "project_id": project, "user_id": u, "access_level": "Owner"});
    let addr = e.worker.hooks_addr();
    let (s, _) = http(
        &addr,
        "POST",
        "/hooks/gitlab/default",
        &[
            ("X-Gitlab-Token", SECRET),
            ("X-Gitlab-Event", "System Hook"),
            ("Idempotency-Key", "replayed-1"),
        ],
        replay.to_string().as_bytes(),
    );
    assert_eq!(s, 200);

    // The user destroyed: every access goes.
    let before = e.levels(u);
    let (s, b) = e.api("DELETE", &format!("/users/{u}"), Value::Null);
    assert_eq!(s, 204, "{b}");
    let ev = e.next_event("gitlab_event").await;
    assert_eq!(
        changes_of(&ev, u),
        before.iter().map(|(r, l)| (*r, (*l, 0))).collect(),
        "the duplicate announced nothing, the destroyed user lost everything: {ev}"
    );
    last_sha = Some(ev["sha256"].as_str().unwrap().to_string());

    // A subgroup created and destroyed: its inherited access comes and goes.
    let (s, b) = e.raw(
        "POST",
        "/_sim/groups",
        json!({"path": "fresh", "parent_id": sub}),
    );
    assert_eq!(s, 201, "{b}");
    let fresh = Resource::Group(b["id"].as_u64().unwrap());
    let holders: BTreeMap<u64, u16> = {
        let w = e.sim.sim.world.read().unwrap();
        w.users
            .keys()
            .map(|u| (*u, w.effective_level(*u, fresh)))
            .filter(|(_, l)| *l > 0)
            .collect()
    };
    assert!(!holders.is_empty());
    let ev = e.next_event("gitlab_event").await;
    let got: BTreeMap<u64, u16> = ev["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| resource(&l["resource"]) == fresh && l["change"] == "access_added")
        .map(|l| {
            (
                l["user_id"].as_u64().unwrap(),
                l["after"]["access_level"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    assert_eq!(got, holders, "{ev}");
    assert_eq!(ev["prev_sha256"].as_str(), last_sha.as_deref());

    let (s, b) = e.raw(
        "DELETE",
        &format!(
            "/_sim/groups/{}",
            match fresh {
                Resource::Group(g) => g,
                _ => unreachable!(),
            }
        ),
        Value::Null,
    );
    assert_eq!(s, 204, "{b}");
    let ev = e.next_event("gitlab_event").await;
    let gone: BTreeMap<u64, u16> = ev["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["change"] == "access_removed")
        .map(|l| {
            assert_eq!(resource(&l["resource"]), fresh);
            (
                l["user_id"].as_u64().unwrap(),
                l["before"]["access_level"].as_u64().unwrap() as u16,
            )
        })
        .collect();
    assert_eq!(gone, holders, "{ev}");

    // The stored batches, their hash chain checked from the snapshot on.
    let out = assert_cmd::Command::cargo_bin("gitlab-worker")
        .unwrap()
        .args(["snapshots", "changes", &e.base_snapshot, "--json"])
        .env("DATABASE_URL", &e.db_url)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("hash chain intact"), "{stderr}");
    let batches: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        batches.last().unwrap()["sha256"],
        ev["sha256"],
        "the last event names the last batch"
    );

    // A full sync after every event was delivered finds nothing the live state does not have.
    e.sync_finds_nothing_new("after-sync").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reconcile_finds_what_no_hook_told() {
    // The audit-event poll off: the reconcile alone finds the share.
    let mut e = Env::start_with(&[("AUDIT_POLL_SECONDS", "0")]).await;
    let u = new_user(&e, "unheard");
    let sub = {
        let w = e.sim.sim.world.read().unwrap();
        w.groups
            .values()
            .find(|g| g.parent_id == Some(e.top))
            .unwrap()
            .id
    };
    let before = e.levels(u);
    // Every delivery lost (GitLab.com drops calls over its rate limit silently), and a share,
    // for which GitLab has no hook at all.
    let (s, _) = e.raw("PUT", "/_sim/hook_faults", json!({"drop": 1.0}));
    assert_eq!(s, 204);
    let (s, b) = e.api(
        "POST",
        &format!("/groups/{sub}/members"),
        json!({"user_id": u, "access_level": 30}),
    );
    assert_eq!(s, 201, "{b}");
    let outside = {
        let (s, b) = e.raw("POST", "/_sim/groups", json!({"path": "partners"}));
        assert_eq!(s, 201, "{b}");
        b["id"].as_u64().unwrap()
    };
    let partner = new_user(&e, "partner");
    let (s, _) = e.raw("POST", "/_sim/members", json!({"resource": {"type": "group", "id": outside}, "user_id": partner, "access_level": 40}));
    assert_eq!(s, 204);
    let (s, _) = e.raw(
        "POST",
        "/_sim/shares",
        json!({"resource": {"type": "group", "id": sub}, "group_id": outside, "group_access": 20}),
    );
    assert_eq!(s, 204);
    let (s, _) = e.raw("PUT", "/_sim/hook_faults", json!({}));
    assert_eq!(s, 204);
    let dropped = e
        .sim
        .sim
        .hook_attempts()
        .iter()
        .filter(|a| a.dropped)
        .count();
    assert!(dropped >= 2, "the member event reached neither hook");

    e.run_job("reconcile-1", "reconcile").await;
    let ev = e.next_event("reconcile").await;
    assert_eq!(changes_of(&ev, u), expected(&before, &e.levels(u)), "{ev}");
    let shared = changes_of(&ev, partner);
    assert_eq!(
        shared,
        expected(&BTreeMap::new(), &e.levels(partner)),
        "{ev}"
    );
    assert!(
        shared.values().all(|(_, after)| *after == 20),
        "capped by the share"
    );

    let (_, metrics) = e.worker.get("/metrics");
    for kind in ["membership", "share"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("gitlab_worker_drift_total")
                    && l.contains(&format!("kind=\"{kind}\""))),
            "drift of kind {kind} counted:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_share_is_found_in_gitlabs_audit_events_without_a_reconcile() {
    let mut e = Env::start_with(&[("AUDIT_POLL_SECONDS", "1")]).await;
    let sub = {
        let w = e.sim.sim.world.read().unwrap();
        w.groups
            .values()
            .find(|g| g.parent_id == Some(e.top))
            .unwrap()
            .id
    };
    // A group outside the scope, with a member, shared into a subgroup: no webhook tells.
    let (s, b) = e.raw("POST", "/_sim/groups", json!({"path": "vendors"}));
    assert_eq!(s, 201, "{b}");
    let outside = b["id"].as_u64().unwrap();
    let partner = new_user(&e, "vendor");
    let (s, _) = e.raw("POST", "/_sim/members", json!({"resource": {"type": "group", "id": outside}, "user_id": partner, "access_level": 30}));
    assert_eq!(s, 204);
    let (s, _) = e.raw(
        "POST",
        "/_sim/shares",
        json!({"resource": {"type": "group", "id": sub}, "group_id": outside, "group_access": 20}),
    );
    assert_eq!(s, 204);

    let ev = e.next_event("gitlab_event").await;
    assert_eq!(
        changes_of(&ev, partner),
        expected(&BTreeMap::new(), &e.levels(partner)),
        "the partner reaches the subgroup's subtree through the share: {ev}"
    );
    assert!(
        ev["source_events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().starts_with("hook default audit:")),
        "{ev}"
    );
    // Nothing left for a full sync to find.
    e.sync_finds_nothing_new("after-audit").await;
}
