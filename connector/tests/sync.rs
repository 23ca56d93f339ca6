//! The full sync against the simulator: effective access on a hand-built organisation (every
//! rule of docs/access-rules.md), determinism, hash chaining, honest partial snapshots, completeness
//! under transient faults, schema conformance and diffs.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Duration as Days;
use gitlab_connector::client::{BaseUrl, IdOrPath, RateLimitConfig, RetryPolicy};
use gitlab_connector::model::{AccessRecord, Record, ResourceRef, Summary, UserKind, Via};
use gitlab_connector::snapshot::{self, diff};
use gitlab_connector::sync::{self, Scope, SnapshotMeta, SyncError, SyncOptions};
use gitlab_connector::{Client, ClientConfig, Secret};
use gitlab_sim::{Mode, Resource, SimConfig, UserKind as SimKind, World};

struct Org {
    world: World,
    ids: BTreeMap<&'static str, u64>,
}

/// ```text
/// org                       root (admin token); dave: Minimal Access 5
/// ├── org/a                 alice: Maintainer 40
/// │   └── org/a/b           bob: Developer 30; shared with org/sec at Developer 30
/// │       └── org/a/b/c
/// │           └── deep      bob: Reporter 20 (direct, below his inherited 30); bot: 30
/// ├── org/ops               shared with partners at Reporter 20; erin 30 (expired); frank 40 (awaiting); svc 20
/// │   └── deploy
/// └── org/sec               gina: Owner 50; hal (blocked): Reporter 20
///     └── vault
/// partners (outside)        carol: Maintainer 40
/// ```
fn org(mode: Mode) -> Org {
    let mut w = World::new(mode);
    let today = w.today();
    let mut ids = BTreeMap::new();
    let root = w.add_user("root", SimKind::Human);
    w.users.get_mut(&root).unwrap().is_admin = true;
    ids.insert("root", root);
    for name in [
        "owner", "alice", "bob", "carol", "dave", "erin", "frank", "gina", "hal",
    ] {
        ids.insert(name, w.add_user(name, SimKind::Human));
    }
    ids.insert(
        "bot",
        w.add_user("project_77_bot_0a1b2c3d", SimKind::ProjectBot),
    );
    ids.insert(
        "svc",
        w.add_user("service_account_group_1_x9", SimKind::ServiceAccount),
    );
    w.users.get_mut(&ids["hal"]).unwrap().state = "blocked".into();
    let org = w.add_group("org", None);
    let a = w.add_group("a", Some(org));
    let b = w.add_group("b", Some(a));
    let c = w.add_group("c", Some(b));
    let ops = w.add_group("ops", Some(org));
    let sec = w.add_group("sec", Some(org));
    let partners = w.add_group("partners", None);
    let deep = w.add_project("deep", c);
    let deploy = w.add_project("deploy", ops);
    let vault = w.add_project("vault", sec);
    for (k, v) in [
        ("org", org),
        ("a", a),
        ("b", b),
        ("c", c),
        ("ops", ops),
        ("sec", sec),
        ("partners", partners),
        ("deep", deep),
        ("deploy", deploy),
        ("vault", vault),
    ] {
        ids.insert(k, v);
    }
    let g = Resource::Group;
    w.set_member(g(org), ids["owner"], 50, None);
    w.set_member(g(org), ids["dave"], 5, None);
    w.set_member(g(a), ids["alice"], 40, None);
    w.set_member(g(b), ids["bob"], 30, None);
    w.set_member(Resource::Project(deep), ids["bob"], 20, None);
    w.set_member(Resource::Project(deep), ids["bot"], 30, None);
    w.set_member(g(ops), ids["erin"], 30, Some(today - Days::days(1)));
    w.set_member(g(ops), ids["frank"], 40, None);
    w.members
        .get_mut(&g(ops))
        .unwrap()
        .get_mut(&ids["frank"])
        .unwrap()
        .state = gitlab_sim::model::MemberState::Awaiting;
    w.set_member(g(ops), ids["svc"], 20, None);
    w.set_member(g(sec), ids["gina"], 50, None);
    w.set_member(g(sec), ids["hal"], 20, None);
    w.set_member(g(partners), ids["carol"], 40, None);
    w.share(g(ops), partners, 20, None);
    w.share(g(b), sec, 30, None);
    let midnight = w.midnight();
    w.invitations.entry(g(ops)).or_default().insert(
        "new@partner.example.org".into(),
        gitlab_sim::model::Invitation {
            id: 900,
            email: "new@partner.example.org".into(),
            access_level: 30,
            expires_at: None,
            member_role_id: None,
            created_at: midnight,
            created_by: Some(ids["owner"]),
        },
    );
    w.add_token(
        root,
        "admin",
        "admin-token",
        &["api"],
        Some(today + Days::days(100)),
    );
    w.add_token(
        ids["owner"],
        "owner",
        "owner-token",
        &["api"],
        Some(today + Days::days(100)),
    );
    w.reindex();
    Org { world: w, ids }
}

fn client(url: &str, token: &str) -> Client {
    let mut c = ClientConfig::new(BaseUrl::parse(url).unwrap(), Secret::new(token));
    c.rate_limit = RateLimitConfig::unlimited();
    c.retry = RetryPolicy {
        min_delay: Duration::from_millis(2),
        max_delay: Duration::from_millis(20),
        max_retries: 12,
        max_wait: Duration::from_secs(5),
        budget: Duration::from_secs(60),
    };
    Client::new(c).unwrap()
}

fn quiet(mode: Mode) -> SimConfig {
    let mut c = SimConfig::for_mode(mode);
    c.endpoint_limits = false;
    c
}

/// Runs a sync into memory: (summary, records, NDJSON text).
async fn sync_once(
    c: &Client,
    scope: &str,
    prev: Option<String>,
) -> (Summary, Vec<Record>, String) {
    let opts = SyncOptions::new(Scope::parse(scope).unwrap());
    let (summary, out) = sync::run(
        c,
        &opts,
        SnapshotMeta::new("default", scope),
        prev,
        Vec::new(),
    )
    .await
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let records = snapshot::records(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (summary, records, text)
}

fn access_of(records: &[Record]) -> BTreeMap<(u64, ResourceRef), AccessRecord> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Access(a) => Some(((a.user_id, a.resource), a.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn effective_access_follows_every_rule() {
    let o = org(Mode::SelfManaged);
    let ids = o.ids.clone();
    let sim = gitlab_sim::start(o.world, quiet(Mode::SelfManaged), "127.0.0.1:0")
        .await
        .unwrap();
    let (summary, records, _) = sync_once(&client(&sim.url, "admin-token"), "org", None).await;
    assert!(summary.complete, "{:?}", summary.errors);
    let access = access_of(&records);
    let level = |user: &str, r: ResourceRef| access.get(&(ids[user], r)).map(|a| a.access_level);
    let (g, p) = (ResourceRef::Group, ResourceRef::Project);

    // Inheritance at depth 3+: alice (org/a) reaches org/a/b/c and its project.
    assert_eq!(level("alice", g(ids["c"])), Some(40));
    let deep_alice = &access[&(ids["alice"], p(ids["deep"]))];
    assert_eq!(deep_alice.paths.len(), 1);
    assert_eq!(
        (deep_alice.paths[0].via, deep_alice.paths[0].group_id),
        (Via::Inherited, Some(ids["a"]))
    );
    // Max over paths: bob is direct Reporter on deep but inherits Developer from org/a/b.
    let bob = &access[&(ids["bob"], p(ids["deep"]))];
    assert_eq!(bob.access_level, 30);
    assert_eq!(
        bob.paths
            .iter()
            .map(|p| (p.via, p.access_level))
            .collect::<Vec<_>>(),
        vec![(Via::Direct, 20), (Via::Inherited, 30)]
    );
    // Share capping, from a group outside the scope: carol (Maintainer in partners) gets Reporter.
    let carol = &access[&(ids["carol"], p(ids["deploy"]))];
    assert_eq!(
        (
            carol.access_level,
            carol.paths[0].via,
            carol.paths[0].group_id
        ),
        (20, Via::Shared, Some(ids["partners"]))
    );
    assert_eq!(level("carol", g(ids["ops"])), Some(20));
    assert_eq!(level("carol", g(ids["org"])), None);
    // A share of a subgroup: org/sec's owner gets Developer (capped) on org/a/b and below only.
    assert_eq!(level("gina", g(ids["b"])), Some(30));
    assert_eq!(level("gina", p(ids["deep"])), Some(30));
    assert_eq!(level("gina", g(ids["a"])), None);
    assert_eq!(level("gina", p(ids["vault"])), Some(50));
    // Minimal access: on the top-level group only.
    assert_eq!(level("dave", g(ids["org"])), Some(5));
    assert_eq!(level("dave", g(ids["a"])), None);
    // Expired and awaiting memberships: records, but no access.
    assert_eq!(level("erin", g(ids["ops"])), None);
    assert_eq!(level("frank", g(ids["ops"])), None);
    let memberships: Vec<_> = records
        .iter()
        .filter_map(|r| {
            if let Record::Membership(m) = r {
                Some(m)
            } else {
                None
            }
        })
        .collect();
    assert!(memberships.iter().any(|m| m.user_id == ids["erin"]));
    assert!(memberships.iter().any(|m| m.user_id == ids["frank"]
        && m.state == gitlab_connector::model::MembershipState::Awaiting));
    // A blocked user keeps their access records.
    assert_eq!(level("hal", p(ids["vault"])), Some(20));
    // Owner everywhere.
    assert_eq!(level("owner", p(ids["deep"])), Some(50));
    // Kinds.
    let users: BTreeMap<u64, _> = records
        .iter()
        .filter_map(|r| {
            if let Record::User(u) = r {
                Some((u.id, u.clone()))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(users[&ids["bot"]].kind, UserKind::Bot);
    assert_eq!(users[&ids["svc"]].kind, UserKind::ServiceAccount);
    assert_eq!(users[&ids["alice"]].kind, UserKind::Human);
    assert_eq!(users[&ids["hal"]].state, "blocked");
    assert!(users[&ids["alice"]].email.is_some(), "admins see emails");
    // The outside group is recorded as such, with the share and the invitation.
    let partners = records
        .iter()
        .find_map(|r| {
            if let Record::Group(g) = r {
                (g.id == ids["partners"]).then_some(g.clone())
            } else {
                None
            }
        })
        .unwrap();
    assert!(!partners.in_scope);
    assert!(records.iter().any(|r| matches!(r, Record::Share(s) if s.shared_with_group_id == ids["partners"] && s.group_access == 20)));
    assert!(
        records
            .iter()
            .any(|r| matches!(r, Record::Invitation(i) if i.email == "new@partner.example.org"))
    );
}

#[tokio::test]
async fn no_members_all_no_user_fanout_and_no_record_read_twice() {
    let o = org(Mode::SelfManaged);
    let sim = gitlab_sim::start(o.world, quiet(Mode::SelfManaged), "127.0.0.1:0")
        .await
        .unwrap();
    sync_once(&client(&sim.url, "admin-token"), "org", None).await;
    let counts = sim.sim.counts();
    assert!(
        counts
            .keys()
            .all(|k| !k.contains("members/all") && k != "GET /users/:id"),
        "{counts:?}"
    );
    // Every group detail once (6 groups in scope + partners), every member list once.
    assert_eq!(counts["GET /groups/:id"].requests, 7);
    assert_eq!(counts["GET /groups/:id/members"].requests, 7);
    assert_eq!(counts["GET /projects/:id/members"].requests, 3);
    assert_eq!(counts["GET /projects/:id/invitations"].requests, 3);
    assert_eq!(counts["GET /users"].requests, 1);
}

#[tokio::test]
async fn snapshots_are_deterministic_and_hash_chained() {
    let o = org(Mode::SelfManaged);
    let sim = gitlab_sim::start(o.world, quiet(Mode::SelfManaged), "127.0.0.1:0")
        .await
        .unwrap();
    let c = client(&sim.url, "admin-token");
    let (s1, _, t1) = sync_once(&c, "org", None).await;
    let (s2, _, t2) = sync_once(&c, "org", Some(s1.sha256.clone())).await;
    let body = |t: &str| {
        t.lines()
            .skip(1)
            .take(t.lines().count() - 2)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(body(&t1), body(&t2), "same state, different records");
    assert_ne!(
        t1.lines().next(),
        t2.lines().next(),
        "headers carry their own id and time"
    );
    assert_eq!(s2.prev_sha256.as_deref(), Some(s1.sha256.as_str()));
    assert_eq!(snapshot::verify(t2.as_bytes()).unwrap().sha256, s2.sha256);
    // Tampering is detected.
    let tampered = t2.replacen("\"access_level\":50", "\"access_level\":40", 1);
    assert!(matches!(
        snapshot::verify(tampered.as_bytes()),
        Err(snapshot::ReadError::HashMismatch { .. })
    ));
    // Records appear in the interface's order.
    let order = [
        "snapshot",
        "user",
        "group",
        "project",
        "membership",
        "share",
        "invitation",
        "role",
        "saml_group_link",
        "access",
        "summary",
    ];
    let types: Vec<usize> = snapshot::records(t1.as_bytes())
        .map(|r| {
            let name = r.unwrap().type_name();
            order.iter().position(|o| *o == name).unwrap()
        })
        .collect();
    assert!(
        types.windows(2).all(|w| w[0] <= w[1]),
        "records out of order"
    );
    assert_eq!(
        s1.counts["access"],
        t1.lines()
            .filter(|l| l.starts_with("{\"type\":\"access\""))
            .count() as u64
    );
}

#[tokio::test]
async fn an_unreadable_project_makes_the_snapshot_partial_and_says_why() {
    let o = org(Mode::SelfManaged);
    let vault = o.ids["vault"];
    let mut cfg = quiet(Mode::SelfManaged);
    cfg.faults.rules.push(gitlab_sim::FaultRule {
        path: format!("/projects/{vault}"),
        status: Some(403),
        method: None,
        ..Default::default()
    });
    let sim = gitlab_sim::start(o.world, cfg, "127.0.0.1:0")
        .await
        .unwrap();
    let (summary, records, _) = sync_once(&client(&sim.url, "admin-token"), "org", None).await;
    assert!(!summary.complete);
    assert!(
        summary
            .errors
            .iter()
            .all(|e| e.resource == Some(ResourceRef::Project(vault)))
    );
    assert!(
        summary
            .errors
            .iter()
            .any(|e| e.code == "forbidden" && e.what.contains("members"))
    );
    // Everything else is still there.
    assert!(records.iter().any(
        |r| matches!(r, Record::Access(a) if a.resource == ResourceRef::Project(o.ids["deep"]))
    ));
}

#[tokio::test]
async fn a_share_from_an_invisible_group_is_reported_not_ignored() {
    // On GitLab.com the owner of `org` cannot read `partners`.
    let o = org(Mode::GitlabCom);
    let sim = gitlab_sim::start(o.world, quiet(Mode::GitlabCom), "127.0.0.1:0")
        .await
        .unwrap();
    let (summary, _, _) = sync_once(&client(&sim.url, "owner-token"), "org", None).await;
    assert!(!summary.complete);
    assert_eq!(summary.errors.len(), 1, "{:?}", summary.errors);
    assert_eq!(
        summary.errors[0].resource,
        Some(ResourceRef::Group(o.ids["partners"]))
    );
    assert!(summary.errors[0].what.contains("outside the scope"));
}

#[tokio::test]
async fn gitlab_com_user_details_come_from_billable_and_enterprise_users() {
    let mut o = org(Mode::GitlabCom);
    let top = o.ids["org"];
    let alice = o.ids["alice"];
    o.world.users.get_mut(&alice).unwrap().enterprise_group_id = Some(top);
    o.world.users.get_mut(&alice).unwrap().last_activity_on = Some(o.world.today());
    o.world.shares.clear();
    let sim = gitlab_sim::start(o.world, quiet(Mode::GitlabCom), "127.0.0.1:0")
        .await
        .unwrap();
    let (summary, records, _) = sync_once(&client(&sim.url, "owner-token"), "org", None).await;
    assert!(summary.complete, "{:?}", summary.errors);
    let users: BTreeMap<u64, _> = records
        .iter()
        .filter_map(|r| {
            if let Record::User(u) = r {
                Some((u.id, u.clone()))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        users[&alice].email.as_deref(),
        Some("alice@example.com"),
        "enterprise user email"
    );
    assert!(
        users[&alice].last_activity_on.is_some(),
        "from billable_members"
    );
    assert_eq!(
        users[&o.ids["bob"]].email, None,
        "not an enterprise user: no email"
    );
    assert_eq!(users[&o.ids["bot"]].kind, UserKind::Bot);
    assert!(
        sim.sim
            .counts()
            .keys()
            .all(|k| !k.starts_with("GET /users"))
    );
}

#[tokio::test]
async fn transient_faults_and_throttling_still_give_the_complete_snapshot() {
    let baseline = {
        let o = org(Mode::SelfManaged);
        let sim = gitlab_sim::start(o.world, quiet(Mode::SelfManaged), "127.0.0.1:0")
            .await
            .unwrap();
        sync_once(&client(&sim.url, "admin-token"), "org", None)
            .await
            .2
    };
    let body = |t: &str| {
        t.lines()
            .skip(1)
            .take(t.lines().count() - 2)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // 20% 5xx plus dropped connections and lock conflicts.
    let o = org(Mode::SelfManaged);
    let mut cfg = quiet(Mode::SelfManaged);
    cfg.faults.error_rate = 0.2;
    cfg.faults.drop_rate = 0.03;
    cfg.faults.lock_rate = 0.03;
    let sim = gitlab_sim::start(o.world, cfg, "127.0.0.1:0")
        .await
        .unwrap();
    let (summary, _, text) = sync_once(&client(&sim.url, "admin-token"), "org", None).await;
    assert!(summary.complete, "{:?}", summary.errors);
    assert!(summary.retries > 0);
    assert_eq!(body(&text), body(&baseline));
    // A 429 storm: a throttle far below what the sync wants.
    let o = org(Mode::SelfManaged);
    let mut cfg = quiet(Mode::SelfManaged);
    cfg.rate_limit = Some(gitlab_sim::UserRateLimit {
        limit: 12,
        period_secs: 1,
    });
    let sim = gitlab_sim::start(o.world, cfg, "127.0.0.1:0")
        .await
        .unwrap();
    let (summary, _, text) = sync_once(&client(&sim.url, "admin-token"), "org", None).await;
    assert!(summary.complete, "{:?}", summary.errors);
    assert!(summary.rate_limit_waits > 0, "the throttle never engaged");
    assert_eq!(body(&text), body(&baseline));
}

#[tokio::test]
async fn an_unreadable_scope_or_a_dead_token_is_an_error_not_a_snapshot() {
    let o = org(Mode::SelfManaged);
    let sim = gitlab_sim::start(o.world, quiet(Mode::SelfManaged), "127.0.0.1:0")
        .await
        .unwrap();
    let opts = SyncOptions::new(Scope::Group(IdOrPath::parse("no-such-group")));
    let e = sync::crawl(&client(&sim.url, "admin-token"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, SyncError::Scope { .. }), "{e}");
    assert!(e.to_string().contains("no-such-group"));
    let e = sync::crawl(&client(&sim.url, "wrong-token"), &opts)
        .await
        .unwrap_err();
    assert!(matches!(e, SyncError::Auth(_)), "{e}");
    let e = sync::crawl(
        &client(&sim.url, "owner-token"),
        &SyncOptions::new(Scope::Instance),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, SyncError::InstanceNeedsAdmin), "{e}");
}

#[tokio::test]
async fn the_instance_scope_reads_every_group_project_and_user() {
    let o = org(Mode::SelfManaged);
    let n_users = o.world.users.len();
    let sim = gitlab_sim::start(o.world, quiet(Mode::SelfManaged), "127.0.0.1:0")
        .await
        .unwrap();
    let (summary, records, _) = sync_once(&client(&sim.url, "admin-token"), "instance", None).await;
    assert!(summary.complete, "{:?}", summary.errors);
    assert_eq!(summary.counts["user"], n_users as u64);
    assert_eq!(summary.counts["group"], 7);
    assert!(
        records
            .iter()
            .filter_map(|r| if let Record::Group(g) = r {
                Some(g.in_scope)
            } else {
                None
            })
            .all(|s| s)
    );
}

#[tokio::test]
async fn diffs_report_changes_and_suppress_removals_against_partial_snapshots() {
    let o = org(Mode::SelfManaged);
    let ids = o.ids.clone();
    let sim = gitlab_sim::start(o.world, quiet(Mode::SelfManaged), "127.0.0.1:0")
        .await
        .unwrap();
    let c = client(&sim.url, "admin-token");
    let dir = std::env::temp_dir().join(format!("gl-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_, _, before) = sync_once(&c, "org", None).await;
    std::fs::write(dir.join("a.ndjson"), &before).unwrap();
    // Behind the worker's back: alice loses org/a, erin joins org/ops, carol's partners role drops.
    {
        let mut w = sim.sim.world.write().unwrap();
        w.members
            .get_mut(&Resource::Group(ids["a"]))
            .unwrap()
            .remove(&ids["alice"]);
        w.set_member(Resource::Group(ids["ops"]), ids["erin"], 30, None);
        w.members
            .get_mut(&Resource::Group(ids["partners"]))
            .unwrap()
            .get_mut(&ids["carol"])
            .unwrap()
            .access_level = 10;
    }
    let (_, _, after) = sync_once(&c, "org", None).await;
    std::fs::write(dir.join("b.ndjson"), &after).unwrap();
    let mut out = Vec::new();
    let counts = diff::diff_files(&dir.join("a.ndjson"), &dir.join("b.ndjson"), &mut out).unwrap();
    let lines: Vec<diff::DiffLine> = String::from_utf8(out.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let changes: Vec<&diff::DiffRecord> = lines
        .iter()
        .filter_map(|l| {
            if let diff::DiffLine::AccessChange(c) = l {
                Some(c)
            } else {
                None
            }
        })
        .collect();
    // alice: org/a, b, c and deep removed; erin: ops and deploy added; carol: ops and deploy 20 → 10.
    assert_eq!(
        (counts.removed, counts.added, counts.changed),
        (4, 2, 2),
        "{changes:#?}"
    );
    assert!(
        changes
            .iter()
            .filter(|c| c.change == diff::Change::AccessRemoved)
            .all(|c| c.user_id == ids["alice"])
    );
    let carol = changes.iter().find(|c| c.user_id == ids["carol"]).unwrap();
    assert_eq!(
        (
            carol.before.as_ref().unwrap().access_level,
            carol.after.as_ref().unwrap().access_level
        ),
        (20, 10)
    );
    validate_lines(&String::from_utf8(out).unwrap(), DIFF_SCHEMA);

    // Against a partial snapshot: no removals, and the header says why.
    sim.sim
        .config
        .lock()
        .unwrap()
        .faults
        .rules
        .push(gitlab_sim::FaultRule {
            path: format!("/projects/{}", ids["vault"]),
            status: Some(500),
            method: None,
            ..Default::default()
        });
    let (partial, _, text) = sync_once(&c, "org", None).await;
    assert!(!partial.complete);
    std::fs::write(dir.join("c.ndjson"), &text).unwrap();
    let mut out = Vec::new();
    let counts = diff::diff_files(&dir.join("a.ndjson"), &dir.join("c.ndjson"), &mut out).unwrap();
    assert_eq!(counts.removed, 0);
    assert!(counts.removals_suppressed >= 4);
    let header: diff::DiffLine =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    assert!(
        matches!(header, diff::DiffLine::Diff(h) if !h.removals_reported && h.reason.is_some())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

const SNAPSHOT_SCHEMA: &str = include_str!("../../schemas/gitlab-access-snapshot.v1.schema.json");
const DIFF_SCHEMA: &str = include_str!("../../schemas/gitlab-access-diff.v1.schema.json");

fn validate_lines(text: &str, schema: &str) {
    let schema: serde_json::Value = serde_json::from_str(schema).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for (i, line) in text.lines().enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let errors: Vec<String> = validator.iter_errors(&v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "line {}: {line}\n{errors:#?}", i + 1);
    }
}

#[tokio::test]
async fn real_snapshots_conform_to_the_schema() {
    let o = org(Mode::SelfManaged);
    let mut w = o.world;
    let role = w.next_id();
    w.member_roles.insert(
        role,
        gitlab_sim::model::MemberRole {
            id: role,
            name: "Auditor".into(),
            base_access_level: 10,
            group_id: None,
        },
    );
    w.saml_links.insert(
        o.ids["org"],
        vec![gitlab_sim::model::SamlGroupLink {
            name: "eng".into(),
            access_level: 30,
            member_role_id: None,
            provider: None,
        }],
    );
    let mut cfg = quiet(Mode::SelfManaged);
    cfg.faults.rules.push(gitlab_sim::FaultRule {
        path: format!("/projects/{}", o.ids["vault"]),
        status: Some(404),
        method: None,
        ..Default::default()
    });
    let sim = gitlab_sim::start(w, cfg, "127.0.0.1:0").await.unwrap();
    let (summary, records, text) = sync_once(&client(&sim.url, "admin-token"), "org", None).await;
    assert!(
        !summary.errors.is_empty(),
        "the partial case is covered too"
    );
    for t in [
        "user",
        "group",
        "project",
        "membership",
        "share",
        "invitation",
        "role",
        "saml_group_link",
        "access",
    ] {
        assert!(
            records.iter().any(|r| r.type_name() == t),
            "no {t} record to validate"
        );
    }
    validate_lines(&text, SNAPSHOT_SCHEMA);
    // And a seeded organisation, GitLab.com flavour.
    let seeded = gitlab_sim::seed::generate(&gitlab_sim::SeedSpec::small(4, Mode::GitlabCom));
    let sim = gitlab_sim::start(seeded.world, quiet(Mode::GitlabCom), "127.0.0.1:0")
        .await
        .unwrap();
    let (_, _, text) = sync_once(&client(&sim.url, &seeded.token), "org", None).await;
    validate_lines(&text, SNAPSHOT_SCHEMA);
}

/// While provisioning runs in the process, a sync's requests reach GitLab one at a time;
/// without it they overlap (16 in flight).
#[tokio::test(flavor = "multi_thread")]
async fn a_sync_yields_to_provisioning_one_request_at_a_time() {
    use gitlab_connector::client::Precedence;
    let latency = Duration::from_millis(5);
    let mut cfg = quiet(Mode::SelfManaged);
    cfg.faults.latency_ms = latency.as_millis() as u64;
    let o = org(Mode::SelfManaged);
    let sim = gitlab_sim::start(o.world, cfg, "127.0.0.1:0")
        .await
        .unwrap();
    let c = client(&sim.url, "admin-token");

    // Nothing in the foreground: the crawl keeps several requests in flight.
    sync_once(&c, "org", None).await;
    assert!(
        sim.sim.most_in_flight() > 1,
        "a sync alone overlaps its requests"
    );

    // A provisioning job holds the foreground for the whole sync.
    let p = Precedence::new();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let job = {
        let p = p.clone();
        tokio::spawn(async move { p.foreground(done_rx).await })
    };
    while !p.busy() {
        tokio::task::yield_now().await;
    }
    sim.sim.reset_most_in_flight();
    let before: u64 = sim.sim.counts().values().map(|c| c.requests).sum();
    let started = std::time::Instant::now();
    let (summary, records, _) = p.background(sync_once(&c, "org", None)).await;
    let took = started.elapsed();
    let requests = sim.sim.counts().values().map(|c| c.requests).sum::<u64>() - before;
    assert!(summary.complete, "{:?}", summary.errors);
    assert!(!records.is_empty());
    assert_eq!(
        sim.sim.most_in_flight(),
        1,
        "one request of the sync at a time while provisioning runs"
    );
    // One at a time, each taking at least the simulator's latency: a lower bound that
    // overlapping requests would not meet.
    let least = latency * u32::try_from(requests).unwrap();
    assert!(
        took >= least,
        "{requests} requests one at a time took {took:?}, less than {least:?}"
    );
    done_tx.send(()).unwrap();
    job.await.unwrap().unwrap();
}
