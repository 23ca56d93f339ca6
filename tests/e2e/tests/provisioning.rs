//! Provisioning through NATS against the simulator: grants (new, upgrade, already enough, custom
//! role kept), JIT expiry (restore, remove, after a restart, conflicts), revoke with residual
//! access, invitations, deprovisioning (complete, resumed after SIGKILL), dry runs, token
//! rotation and its crash case, and a grant delivered twice writing once.

use std::collections::BTreeMap;
use std::time::Duration;

use gitlab_e2e::{NatsServer, Worker, publish_job, read_stream, sqlite_url, tempdir};
use gitlab_sim::{Mode, Resource, SimConfig, UserKind, World};
use serde_json::{Value, json};

const TOKEN: &str = "sim-connector-token-for-provisioning";

struct Org {
    world: World,
    ids: BTreeMap<&'static str, u64>,
}

/// ```text
/// org                     owner 50, carol 30
/// ├── a                   bob 20 (expires in 60 days), erin 30 with custom role "auditor"
/// │   └── p1 (project)    gina 30
/// └── b                   gina 20
/// partners (outside)      frank 40; shared with org/a at 30
/// ```
/// root is an administrator and owns the connector's token; gina has a token of her own and a
/// pending invitation on org/b under her email.
fn org() -> Org {
    let mut w = World::new(Mode::SelfManaged);
    let today = w.today();
    let mut ids = BTreeMap::new();
    let root = w.add_user("root", UserKind::Human);
    w.users.get_mut(&root).unwrap().is_admin = true;
    ids.insert("root", root);
    for n in [
        "owner", "alice", "bob", "carol", "dave", "erin", "frank", "gina",
    ] {
        ids.insert(n, w.add_user(n, UserKind::Human));
    }
    let org = w.add_group("org", None);
    let a = w.add_group("a", Some(org));
    let b = w.add_group("b", Some(org));
    let partners = w.add_group("partners", None);
    let p1 = w.add_project("p1", a);
    for (k, v) in [
        ("org", org),
        ("a", a),
        ("b", b),
        ("partners", partners),
        ("p1", p1),
    ] {
        ids.insert(k, v);
    }
    let g = Resource::Group;
    w.set_member(g(org), ids["owner"], 50, None);
    w.set_member(g(org), ids["carol"], 30, None);
    w.set_member(
        g(a),
        ids["bob"],
        20,
        Some(today + chrono::Duration::days(60)),
    );
    w.set_member(g(a), ids["erin"], 30, None);
    w.set_member(Resource::Project(p1), ids["gina"], 30, None);
    w.set_member(g(b), ids["gina"], 20, None);
    w.set_member(g(partners), ids["frank"], 40, None);
    w.share(g(a), partners, 30, None);
    let role = w.next_id();
    w.member_roles.insert(
        role,
        gitlab_sim::model::MemberRole {
            id: role,
            name: "auditor".into(),
            base_access_level: 30,
            group_id: Some(org),
        },
    );
    ids.insert("role", role);
    w.members
        .get_mut(&g(a))
        .unwrap()
        .get_mut(&ids["erin"])
        .unwrap()
        .member_role_id = Some(role);
    let inv = w.next_id();
    let now = w.now();
    w.invitations.entry(g(b)).or_default().insert(
        "gina@example.com".into(),
        gitlab_sim::model::Invitation {
            id: inv,
            email: "gina@example.com".into(),
            access_level: 30,
            expires_at: None,
            member_role_id: None,
            created_at: now,
            created_by: Some(root),
        },
    );
    w.saml_links
        .entry(org)
        .or_default()
        .push(gitlab_sim::model::SamlGroupLink {
            name: "okta-engineering".into(),
            access_level: 30,
            member_role_id: None,
            provider: None,
        });
    // alice was active yesterday (GitLab refuses to deactivate her); dave long ago.
    w.users.get_mut(&ids["alice"]).unwrap().last_activity_on =
        Some(today - chrono::Duration::days(1));
    w.users.get_mut(&ids["dave"]).unwrap().last_activity_on =
        Some(today - chrono::Duration::days(200));
    w.add_token(
        root,
        "connector",
        TOKEN,
        &["api"],
        Some(today + chrono::Duration::days(90)),
    );
    w.add_token(
        ids["gina"],
        "laptop",
        "sim-gina-personal-token-0001",
        &["api"],
        None,
    );
    w.reindex();
    Org { world: w, ids }
}

struct Env {
    nats: NatsServer,
    sim: gitlab_sim::Running,
    ids: BTreeMap<&'static str, u64>,
    js: async_nats::jetstream::Context,
    dir: std::path::PathBuf,
    /// Every worker's stderr, shown when a result does not arrive.
    worker_logs: std::sync::Mutex<Vec<std::path::PathBuf>>,
}

async fn env() -> Env {
    gitlab_connector::client::install_crypto_provider();
    let o = org();
    let sim = gitlab_sim::start(
        o.world,
        SimConfig::for_mode(Mode::SelfManaged),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
    Env {
        nats,
        sim,
        ids: o.ids,
        js,
        dir: tempdir("prov"),
        worker_logs: Default::default(),
    }
}

impl Env {
    fn worker_env(&self, extra: &[(&str, String)]) -> Vec<(&'static str, String)> {
        let mut v: Vec<(&'static str, String)> = vec![
            ("GITLAB_URL", self.sim.url.clone()),
            ("GITLAB_TOKEN", TOKEN.into()),
            ("GITLAB_SCOPE", "org".into()),
            ("DATABASE_URL", sqlite_url(&self.dir)),
            ("NATS_URL", self.nats.url.clone()),
        ];
        for (k, val) in extra {
            let k: &'static str = Box::leak(k.to_string().into_boxed_str());
            if let Some(slot) = v.iter_mut().find(|(n, _)| *n == k) {
                slot.1 = val.clone();
            } else {
                v.push((k, val.clone()));
            }
        }
        v.retain(|(_, val)| !val.is_empty());
        v
    }

    async fn worker(&self, extra: &[(&str, String)]) -> Worker {
        let env = self.worker_env(extra);
        let w = tokio::task::spawn_blocking(move || Worker::serve(&env))
            .await
            .unwrap();
        self.worker_logs.lock().unwrap().push(w.stderr_path());
        w
    }

    /// What the streams and the workers say, for a failure message.
    async fn diagnostics(&self) -> String {
        let mut out = String::new();
        for name in ["GITLAB_JOBS", "GITLAB_DLQ", "GITLAB_RESULTS"] {
            if let Ok(mut s) = self.js.get_stream(name).await
                && let Ok(info) = s.info().await
            {
                out += &format!("{name}: {} messages\n", info.state.messages);
            }
        }
        if let Ok(s) = self.js.get_stream("GITLAB_JOBS").await {
            let mut names = s.consumer_names();
            while let Some(Ok(name)) = futures::StreamExt::next(&mut names).await {
                if let Ok(mut c) = s
                    .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&name)
                    .await
                    && let Ok(i) = c.info().await
                {
                    out += &format!(
                        "consumer {name}: pending {}, ack pending {}, redelivered {}, waiting {}\n",
                        i.num_pending, i.num_ack_pending, i.num_redelivered, i.num_waiting
                    );
                }
            }
        }
        for path in self.worker_logs.lock().unwrap().iter() {
            let log = std::fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            out += &format!("--- {}:\n", path.display());
            for l in tail.into_iter().rev() {
                out += l;
                out += "\n";
            }
        }
        out
    }

    /// Publishes a job and returns its result.
    async fn run(&self, job_id: &str, kind: &str, params: Value, dry_run: bool) -> Value {
        self.publish(job_id, kind, params, dry_run, Some(job_id))
            .await;
        self.result(job_id).await
    }

    async fn publish(
        &self,
        job_id: &str,
        kind: &str,
        params: Value,
        dry_run: bool,
        msg_id: Option<&str>,
    ) {
        let job = json!({"schema": "gitlab-connector.job.v1", "job_id": job_id, "connector": "default", "kind": kind, "dry_run": dry_run, "params": params});
        publish_job(
            &self.js,
            &format!("gitlab.jobs.default.{kind}"),
            job.to_string(),
            msg_id,
        )
        .await;
    }

    async fn result(&self, job_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let all = read_stream(
                &self.js,
                "GITLAB_RESULTS",
                "gitlab.results.>",
                1000,
                Duration::from_millis(300),
            )
            .await;
            if let Some(m) = all
                .iter()
                .find(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["job_id"] == job_id)
            {
                return serde_json::from_slice(&m.payload).unwrap();
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no result for {job_id}\n{}", self.diagnostics().await);
            }
        }
    }

    async fn results_for(&self, job_id: &str) -> usize {
        read_stream(
            &self.js,
            "GITLAB_RESULTS",
            "gitlab.results.>",
            1000,
            Duration::from_millis(500),
        )
        .await
        .iter()
        .filter(|m| serde_json::from_slice::<Value>(&m.payload).unwrap()["job_id"] == job_id)
        .count()
    }

    fn member(
        &self,
        r: Resource,
        user: &str,
    ) -> Option<(u16, Option<chrono::NaiveDate>, Option<u64>)> {
        let w = self.sim.sim.world.read().unwrap();
        w.members
            .get(&r)
            .and_then(|m| m.get(&self.ids[user]))
            .map(|m| (m.access_level, m.expires_at, m.member_role_id))
    }

    fn writes(&self) -> usize {
        self.sim
            .sim
            .requests()
            .iter()
            .filter(|e| e.method != "GET" && e.method != "HEAD")
            .count()
    }

    fn group(&self, name: &str) -> Resource {
        Resource::Group(self.ids[name])
    }

    async fn expiry_events(&self, n: usize, within: Duration) -> Vec<Value> {
        read_stream(
            &self.js,
            "GITLAB_EVENTS",
            "gitlab.events.default.access",
            n,
            within,
        )
        .await
        .iter()
        .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
        .filter(|v| v["cause"] == "jit_expiry")
        .collect()
    }
}

fn user(id: u64) -> Value {
    json!({"id": id})
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_add_upgrade_or_find_enough_and_keep_custom_roles() {
    let e = env().await;
    let w = e.worker(&[]).await;
    let a = e.group("a");

    let r = e.run("g-new", "grant", json!({"user": {"username": "alice"}, "target": {"group": "org/a"}, "access_level": "developer"}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w.stderr());
    assert_eq!(r["changes"][0]["action"], "add_member");
    assert_eq!(e.member(a, "alice"), Some((30, None, None)));
    let saml = r["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains("SAML group link"));
    assert!(
        saml,
        "the top-level group's SAML links are pointed out: {r}"
    );

    // Upgrade: the later of the two expiries is kept, and a permanent grant has none (never
    // expiring is the latest).
    assert!(e.member(a, "bob").unwrap().1.is_some());
    let r = e
        .run(
            "g-up",
            "grant",
            json!({"user": user(e.ids["bob"]), "target": {"group": "org/a"}, "access_level": 30}),
            false,
        )
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["changes"][0]["action"], "update_member");
    assert_eq!(r["changes"][0]["before"]["access_level"], 20);
    assert_eq!(e.member(a, "bob"), Some((30, None, None)));

    // Already enough, through the parent group: nothing written, and it says where from.
    let writes = e.writes();
    let r = e.run("g-enough", "grant", json!({"user": {"username": "carol"}, "target": {"group": "org/a"}, "access_level": 20}), false).await;
    assert_eq!(r["status"], "noop", "{r}");
    assert!(
        r["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("inherited from org")),
        "{r}"
    );
    assert_eq!(e.writes(), writes);

    // A custom role is preserved across an upgrade.
    let r = e.run("g-role", "grant", json!({"user": {"username": "erin"}, "target": {"group": "org/a"}, "access_level": "maintainer"}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(e.member(a, "erin"), Some((40, None, Some(e.ids["role"]))));

    // Unknown user and target.
    let r = e.run("g-nouser", "grant", json!({"user": {"username": "nobody"}, "target": {"group": "org/a"}, "access_level": 30}), false).await;
    assert_eq!(r["error"]["code"], "user_not_found", "{r}");
    let r = e.run("g-notarget", "grant", json!({"user": {"username": "alice"}, "target": {"project": "org/nothing"}, "access_level": 30}), false).await;
    assert_eq!(r["error"]["code"], "target_not_found", "{r}");

    // The same grant job delivered twice (no Nats-Msg-Id, so NATS cannot deduplicate) writes once.
    let writes = e.writes();
    e.publish("g-twice", "grant", json!({"user": {"username": "dave"}, "target": {"project": "org/a/p1"}, "access_level": 20}), false, None).await;
    e.publish("g-twice", "grant", json!({"user": {"username": "dave"}, "target": {"project": "org/a/p1"}, "access_level": 20}), false, None).await;
    let r = e.result("g-twice").await;
    assert_eq!(r["status"], "succeeded");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while e.results_for("g-twice").await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the repeat was answered"
        );
    }
    assert_eq!(e.writes() - writes, 1, "one POST for two deliveries");
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_runs_plan_and_write_nothing() {
    let e = env().await;
    let w = e.worker(&[]).await;
    let writes = e.writes();
    let cases = [
        (
            "d-grant",
            "grant",
            json!({"user": {"username": "alice"}, "target": {"group": "org/a"}, "access_level": 30, "duration_seconds": 60}),
        ),
        (
            "d-revoke",
            "revoke",
            json!({"user": {"username": "bob"}, "target": {"group": "org/a"}}),
        ),
        (
            "d-invite",
            "invite",
            json!({"email": "new.person@example.org", "target": {"group": "org/b"}, "access_level": 20}),
        ),
        (
            "d-deprov",
            "deprovision",
            json!({"user": {"username": "gina"}, "actions": ["remove_memberships", "cancel_invitations", "block", "revoke_tokens"]}),
        ),
        ("d-rotate", "rotate_token", json!({})),
    ];
    for (id, kind, params) in cases {
        let r = e.run(id, kind, params, true).await;
        assert_eq!(r["dry_run"], true);
        if kind == "rotate_token" {
            // The env token cannot be rotated at all; the dry run says so without writing.
            assert_eq!(r["status"], "failed", "{r}");
            continue;
        }
        assert_eq!(r["status"], "succeeded", "{kind}: {r}\n{}", w.stderr());
        assert!(
            !r["changes"].as_array().unwrap().is_empty(),
            "{kind} lists its plan: {r}"
        );
    }
    assert_eq!(
        e.writes(),
        writes,
        "no POST/PUT/DELETE in the simulator's request log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jit_grants_expire_on_time_restoring_or_removing() {
    let e = env().await;
    let w = e.worker(&[]).await;
    let a = e.group("a");
    let bob_before = e.member(a, "bob").unwrap();
    let r = e.run("jit-new", "grant", json!({"user": {"username": "dave"}, "target": {"group": "org/a"}, "access_level": "maintainer", "duration_seconds": 3}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w.stderr());
    // GitLab's own expiry is set as a second guard: the date on or after the precise expiry.
    let precise: chrono::DateTime<chrono::Utc> =
        r["grant"]["expires_at"].as_str().unwrap().parse().unwrap();
    let gl_date: chrono::NaiveDate = r["grant"]["gitlab_expires_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(gl_date >= precise.date_naive());
    assert_eq!(e.member(a, "dave"), Some((40, Some(gl_date), None)));
    let r2 = e.run("jit-up", "grant", json!({"user": {"username": "bob"}, "target": {"group": "org/a"}, "access_level": 40, "duration_seconds": 3}), false).await;
    assert_eq!(r2["status"], "succeeded", "{r2}");
    assert_eq!(e.member(a, "bob").unwrap().0, 40);

    let events = e.expiry_events(2, Duration::from_secs(20)).await;
    assert_eq!(events.len(), 2, "{}", w.stderr());
    for ev in &events {
        gitlab_e2e::assert_valid(
            &gitlab_e2e::schema("gitlab-connector.event.v1.schema.json"),
            ev,
        );
        assert!(ev["conflict"].is_null());
        let due: chrono::DateTime<chrono::Utc> =
            ev["expires_at"].as_str().unwrap().parse().unwrap();
        let undone: chrono::DateTime<chrono::Utc> =
            ev["undone_at"].as_str().unwrap().parse().unwrap();
        let late = undone - due;
        assert!(
            late >= chrono::Duration::zero() && late < chrono::Duration::seconds(2),
            "undone {late} after the expiry"
        );
    }
    assert_eq!(
        e.member(a, "dave"),
        None,
        "the membership the grant created is removed"
    );
    assert_eq!(
        e.member(a, "bob"),
        Some(bob_before),
        "the prior membership is restored exactly"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jit_grant_expires_after_a_worker_restart_and_never_overwrites_a_changed_member() {
    let e = env().await;
    let mut w = e.worker(&[]).await;
    let a = e.group("a");
    let r = e.run("jit-r", "grant", json!({"user": {"username": "alice"}, "target": {"group": "org/a"}, "access_level": 30, "duration_seconds": 3}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let r = e.run("jit-c", "grant", json!({"user": {"username": "dave"}, "target": {"group": "org/a"}, "access_level": 30, "duration_seconds": 3}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    w.kill();
    // Someone changes dave's membership behind the worker's back.
    e.sim
        .sim
        .world
        .write()
        .unwrap()
        .set_member(a, e.ids["dave"], 50, None);
    tokio::time::sleep(Duration::from_secs(4)).await; // both grants are now past due while no worker runs
    assert_eq!(
        e.member(a, "alice").unwrap().0,
        30,
        "nobody undid it while the worker was down"
    );

    let started = tokio::time::Instant::now();
    let _w2 = e.worker(&[]).await;
    let events = e.expiry_events(2, Duration::from_secs(15)).await;
    assert_eq!(events.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    let by_id = |id: &str| {
        events
            .iter()
            .find(|v| v["grant_job_id"] == id)
            .unwrap()
            .clone()
    };
    assert!(by_id("jit-r")["conflict"].is_null());
    assert_eq!(e.member(a, "alice"), None);
    let conflict = by_id("jit-c");
    assert!(
        conflict["conflict"]
            .as_str()
            .unwrap()
            .contains("changed since the grant"),
        "{conflict}"
    );
    assert!(conflict["changes"].as_array().unwrap().is_empty());
    assert_eq!(
        e.member(a, "dave"),
        Some((50, None, None)),
        "left as the other party set it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoke_removes_the_direct_membership_and_reports_residual_access() {
    let e = env().await;
    // One JIT grant below makes erin Owner: the policy must allow it explicitly.
    let w = e
        .worker(&[("GITLAB_MAX_GRANT_LEVEL", "owner".into())])
        .await;
    let a = e.group("a");
    let r = e
        .run(
            "r-bob",
            "revoke",
            json!({"user": {"username": "bob"}, "target": {"group": "org/a"}}),
            false,
        )
        .await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w.stderr());
    assert_eq!(r["changes"][0]["action"], "remove_member");
    assert_eq!(r["residual_access"], json!([]));
    assert_eq!(e.member(a, "bob"), None);

    // Inherited only: a noop that names the path, never a fake success.
    let r = e
        .run(
            "r-carol",
            "revoke",
            json!({"user": {"username": "carol"}, "target": {"group": "org/a"}}),
            false,
        )
        .await;
    assert_eq!(r["status"], "noop", "{r}");
    assert_eq!(r["residual_access"][0]["via"], "inherited");
    assert_eq!(r["residual_access"][0]["group_path"], "org");
    // Through a group share.
    let r = e
        .run(
            "r-frank",
            "revoke",
            json!({"user": {"username": "frank"}, "target": {"group": "org/a"}}),
            false,
        )
        .await;
    assert_eq!(r["status"], "noop", "{r}");
    assert_eq!(r["residual_access"][0]["via"], "shared");

    // A JIT grant ended early by its job id restores the prior state.
    let r = e.run("r-jit", "grant", json!({"user": {"username": "erin"}, "target": {"group": "org/a"}, "access_level": 50, "duration_seconds": 600}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let r = e
        .run("r-end", "revoke", json!({"grant_job_id": "r-jit"}), false)
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["changes"][0]["action"], "restore_member");
    assert_eq!(e.member(a, "erin"), Some((30, None, Some(e.ids["role"]))));
    let r = e
        .run(
            "r-end2",
            "revoke",
            json!({"grant_job_id": "no-such-grant"}),
            false,
        )
        .await;
    assert_eq!(r["error"]["code"], "grant_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn invitations_report_gitlab_errors_and_silent_member_updates() {
    let e = env().await;
    let w = e.worker(&[]).await;
    let r = e.run("i-1", "invite", json!({"email": "new.person@example.org", "target": {"group": "org/b"}, "access_level": 30}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w.stderr());
    // The same invitation again: it is pending already, nothing is sent.
    let r = e.run("i-2", "invite", json!({"email": "new.person@example.org", "target": {"group": "org/b"}, "access_level": 30}), false).await;
    assert_eq!(r["status"], "noop", "{r}");
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("pending already"),
        "{r}"
    );
    // The same address at another level: GitLab answers 201 with a per-address error.
    let r = e.run("i-2b", "invite", json!({"email": "new.person@example.org", "target": {"group": "org/b"}, "access_level": 20}), false).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already been taken"),
        "{r}"
    );
    // An existing member's email: GitLab updates the membership; the result says so.
    let r = e
        .run(
            "i-3",
            "invite",
            json!({"email": "carol@example.com", "target": {"group": "org"}, "access_level": 40}),
            false,
        )
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["changes"][0]["action"], "update_member");
    assert_eq!(r["changes"][0]["before"]["member"]["access_level"], 30);
    assert_eq!(r["changes"][0]["after"]["access_level"], 40);
    // A revoke by email cancels the pending invitation.
    let r = e
        .run(
            "i-4",
            "revoke",
            json!({"user": {"email": "new.person@example.org"}, "target": {"group": "org/b"}}),
            false,
        )
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["changes"][0]["action"], "cancel_invitation");
    let pending = e
        .sim
        .sim
        .world
        .read()
        .unwrap()
        .invitations
        .get(&e.group("b"))
        .map_or(0, |m| m.len());
    assert_eq!(pending, 1, "only gina's invitation is left");
}

fn gina_traces(e: &Env) -> (usize, usize, String, bool) {
    let w = e.sim.sim.world.read().unwrap();
    let gina = e.ids["gina"];
    let memberships = w.members.values().filter(|m| m.contains_key(&gina)).count();
    let invitations = w
        .invitations
        .values()
        .filter(|m| m.contains_key("gina@example.com"))
        .count();
    let state = w.users[&gina].state.clone();
    let token_active = w.tokens.values().any(|t| t.user_id == gina && !t.revoked);
    (memberships, invitations, state, token_active)
}

#[tokio::test(flavor = "multi_thread")]
async fn deprovisioning_leaves_nothing_and_resumes_after_a_crash() {
    let e = env().await;
    let mut w = e.worker(&[("NATS_ACK_WAIT_SECONDS", "2".into())]).await;
    assert_eq!(gina_traces(&e), (2, 1, "active".into(), true));
    // Slow GitLab, and a crash after the first removal.
    e.sim.sim.config.lock().unwrap().faults.latency_ms = 150;
    let deletes_before = e
        .sim
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .count();
    e.publish("dp-1", "deprovision", json!({"user": {"username": "gina"}, "actions": ["remove_memberships", "cancel_invitations", "block", "revoke_tokens"]}), false, Some("dp-1")).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while e
        .sim
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == "DELETE")
        .count()
        == deletes_before
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no removal started:\n{}",
            w.stderr()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    w.kill();
    e.sim.sim.config.lock().unwrap().faults.latency_ms = 0;
    let (m, _, state, _) = gina_traces(&e);
    assert!(
        m < 2 && state == "active",
        "killed halfway: {m} memberships left, {state}"
    );

    let w2 = e.worker(&[("NATS_ACK_WAIT_SECONDS", "2".into())]).await;
    let r = e.result("dp-1").await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w2.stderr());
    assert_eq!(r["residual_access"], json!([]));
    assert_eq!(r["attempt"], 2);
    assert_eq!(gina_traces(&e), (0, 0, "blocked".into(), false));
    let actions: Vec<&str> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    for a in ["cancel_invitation", "revoke_token", "block_user"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    assert_eq!(e.results_for("dp-1").await, 1, "one result");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_rotate_into_the_token_file_and_an_interrupted_rotation_is_reported() {
    let e = env().await;
    let token_file = e.dir.join("gitlab-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let file_env = [
        ("GITLAB_TOKEN", String::new()),
        ("GITLAB_TOKEN_FILE", token_file.display().to_string()),
    ];
    let w = e.worker(&file_env).await;
    let r = e
        .run(
            "rot-skip",
            "rotate_token",
            json!({"min_days_left": 30}),
            false,
        )
        .await;
    assert_eq!(r["status"], "noop", "90 days left: {r}\n{}", w.stderr());
    let r = e.run("rot-1", "rotate_token", json!({}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w.stderr());
    let new_token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(new_token, TOKEN);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !w.stderr().contains(&new_token),
        "the new token is never logged"
    );
    assert!(!r.to_string().contains(&new_token), "nor put in the result");
    {
        let world = e.sim.sim.world.read().unwrap();
        let old = world.tokens.values().find(|t| t.value == TOKEN).unwrap();
        assert!(old.revoked, "GitLab revoked the old token");
    }
    // The worker goes on with the new token.
    let r = e.run("rot-after", "grant", json!({"user": {"username": "alice"}, "target": {"group": "org/b"}, "access_level": 10}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}");
    drop(w);

    // A crash between rotation and write: the marker is left and the file holds the revoked
    // token. The next start refuses, saying what happened and what to do.
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    std::fs::write(e.dir.join("gitlab-token.rotating"), "{\"token_id\": 1}").unwrap();
    let env = e.worker_env(&file_env);
    let out = tokio::task::spawn_blocking(move || {
        let mut cmd = assert_cmd::Command::cargo_bin("gitlab-worker").unwrap();
        cmd.arg("serve").env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rotation was interrupted") && err.contains("token family"),
        "{err}"
    );
    assert!(!err.contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_env_token_is_not_rotated() {
    let e = env().await;
    let _w = e.worker(&[]).await;
    let r = e.run("rot-env", "rotate_token", json!({}), false).await;
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GITLAB_TOKEN_FILE"),
        "{r}"
    );
    let world = e.sim.sim.world.read().unwrap();
    assert!(world.tokens.values().all(|t| !t.revoked));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grant_to_an_unknown_email_invites_or_creates_the_user_when_allowed() {
    let e = env().await;
    let w = e.worker(&[]).await;
    let r = e.run("ue-1", "grant", json!({"user": {"email": "newbie@example.org"}, "target": {"group": "org/b"}, "access_level": 20}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w.stderr());
    assert_eq!(r["changes"][0]["action"], "invite");
    assert!(
        e.sim.sim.world.read().unwrap().invitations[&e.group("b")]
            .contains_key("newbie@example.org")
    );
    drop(w);

    let w = e
        .worker(&[("GITLAB_ALLOW_CREATE_USERS", "true".into())])
        .await;
    let r = e.run("ue-2", "grant", json!({"user": {"email": "second.newbie@example.org"}, "target": {"group": "org/b"}, "access_level": 20}), false).await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w.stderr());
    let actions: Vec<&str> = r["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["create_user", "add_member"]);
    let world = e.sim.sim.world.read().unwrap();
    let id = world.index.user_by_email["second.newbie@example.org"];
    assert_eq!(world.members[&e.group("b")][&id].access_level, 20);
    assert!(
        !r.to_string().to_lowercase().contains("password\":\"")
            || r.to_string().contains("random, not stored")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deprovisioning_account_actions_fall_back_when_gitlab_refuses() {
    let e = env().await;
    // Ban and delete are allowed explicitly (the default allows block and deactivate only).
    let w = e
        .worker(&[(
            "GITLAB_ACCOUNT_ACTIONS",
            "block,deactivate,ban,delete".into(),
        )])
        .await;
    // GitLab refuses to deactivate a recently active user: blocked instead, with a note.
    let r = e
        .run(
            "acct-1",
            "deprovision",
            json!({"user": {"username": "alice"}, "actions": ["deactivate"]}),
            false,
        )
        .await;
    assert_eq!(r["status"], "succeeded", "{r}\n{}", w.stderr());
    assert_eq!(r["changes"][0]["action"], "block_user");
    assert!(
        r["changes"][0]["note"]
            .as_str()
            .unwrap()
            .contains("blocked instead"),
        "{r}"
    );
    let state = |u: &str| {
        e.sim
            .sim
            .world
            .read()
            .unwrap()
            .users
            .get(&e.ids[u])
            .map(|x| x.state.clone())
    };
    assert_eq!(state("alice").as_deref(), Some("blocked"));
    let r = e
        .run(
            "acct-2",
            "deprovision",
            json!({"user": {"username": "dave"}, "actions": ["deactivate"]}),
            false,
        )
        .await;
    assert_eq!(r["changes"][0]["action"], "deactivate_user", "{r}");
    assert_eq!(state("dave").as_deref(), Some("deactivated"));
    let r = e
        .run(
            "acct-3",
            "deprovision",
            json!({"user": {"username": "erin"}, "actions": ["ban"]}),
            false,
        )
        .await;
    assert_eq!(r["changes"][0]["action"], "ban_user", "{r}");
    assert_eq!(state("erin").as_deref(), Some("banned"));
    let r = e
        .run(
            "acct-4",
            "deprovision",
            json!({"user": {"username": "frank"}, "actions": ["remove_memberships", "delete"]}),
            false,
        )
        .await;
    assert_eq!(r["status"], "succeeded", "{r}");
    let deleted = e
        .sim
        .sim
        .world
        .read()
        .unwrap()
        .users
        .get(&e.ids["frank"])
        .is_none_or(|u| u.state != "active");
    assert!(deleted, "frank's account is deleted (or being deleted)");
    // Every write is in the audit log.
    let audit = e
        .sim
        .sim
        .requests()
        .iter()
        .filter(|r| r.method != "GET")
        .count();
    assert!(audit >= 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_policy_rule_is_enforced_through_nats_without_a_write() {
    let e = env().await;
    let w = e
        .worker(&[
            ("GITLAB_PROTECTED_USERS", "carol".into()),
            ("GITLAB_ALLOW_PERMANENT_GRANTS", "false".into()),
        ])
        .await;
    // A job id used once in a dry run (writes nothing), to be reused with another payload.
    let dry = e
        .run(
            "pol-bound",
            "grant",
            json!({"user": {"username": "dave"}, "target": {"group": "org/a"}, "access_level": 30, "duration_seconds": 600}),
            true,
        )
        .await;
    assert_eq!(dry["status"], "succeeded", "{dry}\n{}", w.stderr());
    // A deprovision envelope on the sync subject.
    let sneaky = json!({"schema": "gitlab-connector.job.v1", "job_id": "pol-subject", "connector": "default", "kind": "deprovision", "params": {"user": {"username": "dave"}}});
    publish_job(
        &e.js,
        "gitlab.jobs.default.sync",
        sneaky.to_string(),
        Some("pol-subject"),
    )
    .await;
    let jit = |level: Value, extra: Value| {
        let mut p = json!({"user": {"username": "dave"}, "target": {"group": "org/a"}, "access_level": level, "duration_seconds": 600});
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };
    let cases: Vec<(&str, &str, Value, &str)> = vec![
        (
            "pol-scope",
            "grant",
            json!({"user": {"username": "dave"}, "target": {"group": "partners"}, "access_level": 30, "duration_seconds": 600}),
            "scope / GITLAB_SCOPE",
        ),
        (
            "pol-owner",
            "grant",
            jit(json!("owner"), json!({})),
            "max_grant_level / GITLAB_MAX_GRANT_LEVEL",
        ),
        (
            "pol-long",
            "grant",
            jit(json!(30), json!({"duration_seconds": 40 * 86_400})),
            "max_jit_seconds / GITLAB_MAX_JIT_SECONDS",
        ),
        (
            "pol-permanent",
            "grant",
            json!({"user": {"username": "dave"}, "target": {"group": "org/a"}, "access_level": 30}),
            "allow_permanent_grants / GITLAB_ALLOW_PERMANENT_GRANTS",
        ),
        (
            "pol-invite",
            "invite",
            json!({"email": "x@example.com", "target": {"group": "org"}, "access_level": "owner"}),
            "max_grant_level / GITLAB_MAX_GRANT_LEVEL",
        ),
        (
            "pol-ban",
            "deprovision",
            json!({"user": {"username": "dave"}, "actions": ["ban"]}),
            "account_actions / GITLAB_ACCOUNT_ACTIONS",
        ),
        (
            "pol-admin",
            "deprovision",
            json!({"user": {"username": "root"}}),
            "protected_users / GITLAB_PROTECTED_USERS",
        ),
        (
            "pol-listed",
            "deprovision",
            json!({"user": {"username": "carol"}}),
            "protected_users / GITLAB_PROTECTED_USERS",
        ),
        (
            "pol-listed-revoke",
            "revoke",
            json!({"user": {"username": "carol"}, "target": {"group": "org"}}),
            "protected_users / GITLAB_PROTECTED_USERS",
        ),
        (
            "pol-sync",
            "sync",
            json!({"scope": "partners"}),
            "scope / GITLAB_SCOPE",
        ),
        (
            "pol-bound",
            "deprovision",
            json!({"user": {"username": "dave"}}),
            "pol-bound",
        ),
    ];
    for (id, kind, params, _) in &cases {
        // The conflicting reuse of a job id has a message id of its own, as a second producer
        // would use.
        let msg_id = if *id == "pol-bound" {
            "pol-bound-again"
        } else {
            id
        };
        e.publish(id, kind, params.clone(), false, Some(msg_id))
            .await;
    }
    let schema = gitlab_e2e::schema("gitlab-connector.result.v1.schema.json");
    let r = e.result("pol-subject").await;
    assert_eq!(r["status"], "rejected", "{r}");
    assert_eq!(r["error"]["code"], "subject_mismatch", "{r}");
    gitlab_e2e::assert_valid(&schema, &r);
    for (id, _, _, setting) in &cases {
        let r = if *id == "pol-bound" {
            // Two results carry this job id: the dry run's and the rejection.
            let all = read_stream(
                &e.js,
                "GITLAB_RESULTS",
                "gitlab.results.>",
                1000,
                Duration::from_secs(2),
            )
            .await;
            let mut rs: Vec<Value> = all
                .iter()
                .map(|m| serde_json::from_slice::<Value>(&m.payload).unwrap())
                .filter(|v| v["job_id"] == "pol-bound" && v["status"] == "rejected")
                .collect();
            assert_eq!(rs.len(), 1, "{rs:?}");
            rs.remove(0)
        } else {
            e.result(id).await
        };
        assert_eq!(r["status"], "rejected", "{id}: {r}");
        let code = if *id == "pol-bound" {
            "job_id_conflict"
        } else {
            "policy_denied"
        };
        assert_eq!(r["error"]["code"], code, "{id}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains(setting),
            "{id}: the message does not name {setting}: {r}"
        );
        gitlab_e2e::assert_valid(&schema, &r);
    }
    assert_eq!(
        e.writes(),
        0,
        "a denied job wrote to GitLab: {:?}",
        e.sim
            .sim
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .collect::<Vec<_>>()
    );
    // Every rejection is dead-lettered.
    let dlq = read_stream(
        &e.js,
        "GITLAB_DLQ",
        "gitlab.dlq.>",
        100,
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(dlq.len(), cases.len() + 1, "{}", e.diagnostics().await);
}
