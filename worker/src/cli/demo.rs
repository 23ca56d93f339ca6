//! `gitlab-worker demo`: the quick start, with no external service. An in-process simulated
//! GitLab and a temporary SQLite database; the same job handler and JIT scheduler as `serve`.

use std::collections::{BTreeMap, HashMap};
use std::io::BufReader;
use std::path::Path;
use std::sync::Arc;

use chrono::Utc;
use gitlab_connector::model::{Record, ResourceRef};
use gitlab_sim::{Mode, Resource, SimConfig, UserKind, World};
use serde_json::{Value, json};

use super::exit;
use crate::config::{ConnectorSettings, Settings, TokenSource};
use crate::jobs::{Delivery, Handler, JobStatus};
use crate::store::Store;

const TOKEN: &str = "sim-demo-admin-token";

fn world() -> World {
    let mut w = World::new(Mode::SelfManaged);
    let today = w.today();
    let root = w.add_user("root", UserKind::Human);
    w.users.get_mut(&root).unwrap().is_admin = true;
    let names = ["ada", "alice", "bob", "grace", "linus", "margaret"];
    let ids: HashMap<&str, u64> = names
        .iter()
        .map(|n| (*n, w.add_user(n, UserKind::Human)))
        .collect();
    let acme = w.add_group("acme", None);
    let platform = w.add_group("platform", Some(acme));
    let security = w.add_group("security", Some(acme));
    let api = w.add_project("api", platform);
    let vault = w.add_project("vault", security);
    let g = Resource::Group;
    w.set_member(g(acme), ids["ada"], 50, None);
    w.set_member(g(platform), ids["grace"], 40, None);
    w.set_member(g(platform), ids["bob"], 30, None);
    w.set_member(g(security), ids["bob"], 20, None);
    w.set_member(Resource::Project(api), ids["linus"], 30, None);
    w.set_member(Resource::Project(vault), ids["margaret"], 40, None);
    w.set_member(
        Resource::Project(vault),
        ids["bob"],
        30,
        Some(today + chrono::Duration::days(30)),
    );
    w.share(Resource::Project(api), security, 20, None);
    w.add_token(
        root,
        "connector",
        TOKEN,
        &["api"],
        Some(today + chrono::Duration::days(90)),
    );
    w.add_token(
        ids["bob"],
        "laptop",
        "sim-demo-bob-laptop-token",
        &["api"],
        None,
    );
    w.reindex();
    w
}

fn job(id: &str, kind: &str, params: Value) -> Vec<u8> {
    json!({"schema": "gitlab-connector.job.v1", "job_id": id, "connector": "demo", "kind": kind,
           "requested_by": "demo", "params": params})
    .to_string()
    .into_bytes()
}

fn heading(n: u32, title: &str) {
    println!("\n== {n}. {title}");
}

/// Usernames and full paths, for readable output.
struct Names {
    users: HashMap<u64, String>,
    groups: HashMap<u64, String>,
    projects: HashMap<u64, String>,
}

impl Names {
    fn of(sim: &gitlab_sim::Running) -> Self {
        let w = sim.sim.world.read().expect("lock");
        let groups: HashMap<u64, String> = w
            .groups
            .keys()
            .map(|id| {
                let path: Vec<String> = w
                    .ancestors_and_self(*id)
                    .iter()
                    .rev()
                    .map(|g| w.groups[g].path.clone())
                    .collect();
                (*id, path.join("/"))
            })
            .collect();
        let projects = w
            .projects
            .iter()
            .map(|(id, p)| {
                (
                    *id,
                    format!(
                        "{}/{}",
                        p.group_id
                            .and_then(|g| groups.get(&g).cloned())
                            .unwrap_or_default(),
                        p.path
                    ),
                )
            })
            .collect();
        Self {
            users: w
                .users
                .iter()
                .map(|(id, u)| (*id, u.username.clone()))
                .collect(),
            groups,
            projects,
        }
    }

    fn target(&self, t: &Value) -> String {
        let id = t["id"].as_u64().unwrap_or(0);
        match t["type"].as_str() {
            Some("group") => self.groups.get(&id).cloned(),
            Some("project") => self.projects.get(&id).cloned(),
            Some("user") => self.users.get(&id).map(|u| format!("account {u}")),
            _ => None,
        }
        .unwrap_or_else(|| t.to_string())
    }
}

fn show_changes(r: &Value, names: &Names) {
    for c in r["changes"].as_array().into_iter().flatten() {
        let who = c["user_id"]
            .as_u64()
            .map(|u| names.users.get(&u).cloned().unwrap_or(format!("user {u}")))
            .or_else(|| c["email"].as_str().map(str::to_string))
            .unwrap_or_default();
        println!(
            "   {:<18} {:<20} on {:<22} {} -> {}{}",
            c["action"].as_str().unwrap_or(""),
            who,
            names.target(&c["target"]),
            c["before"],
            c["after"],
            c["note"]
                .as_str()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default()
        );
    }
    for w in r["warnings"].as_array().into_iter().flatten() {
        println!("   note: {}", w.as_str().unwrap_or(""));
    }
}

async fn run_job(h: &Handler, bytes: Vec<u8>) -> anyhow::Result<Value> {
    let handled = h.handle(&bytes, Delivery::once()).await?;
    let r: Value = serde_json::from_str(&handled.result)?;
    println!(
        "   result: {} (job {}, {} change(s))",
        r["status"].as_str().unwrap_or(""),
        r["job_id"].as_str().unwrap_or(""),
        r["changes"].as_array().map_or(0, Vec::len)
    );
    if handled.status == JobStatus::Failed || handled.status == JobStatus::Rejected {
        anyhow::bail!("the demo job failed: {}", r["error"]);
    }
    Ok(r)
}

fn level_name(l: u64) -> &'static str {
    match u16::try_from(l).map(crate::history::role) {
        Ok("no access" | "custom") | Err(_) => "none",
        Ok(name) => name,
    }
}

/// Names of users and resources in a snapshot file.
fn snapshot_names(
    path: &Path,
) -> anyhow::Result<(BTreeMap<u64, String>, BTreeMap<ResourceRef, String>)> {
    let mut users = BTreeMap::new();
    let mut res = BTreeMap::new();
    for r in gitlab_connector::snapshot::records(BufReader::new(std::fs::File::open(path)?)) {
        match r? {
            Record::User(u) => {
                users.insert(u.id, u.username);
            }
            Record::Group(g) => {
                res.insert(ResourceRef::Group(g.id), g.full_path);
            }
            Record::Project(p) => {
                res.insert(ResourceRef::Project(p.id), p.path_with_namespace);
            }
            _ => {}
        }
    }
    Ok((users, res))
}

pub async fn run() -> u8 {
    match demo().await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: the demo failed: {e:#}");
            exit::FAILURE
        }
    }
}

/// The demo's running parts: the simulator, the store and the handler `serve` would build.
struct Demo {
    sim: gitlab_sim::Running,
    store: Store,
    handler: Arc<Handler>,
    names: Names,
    dir: std::path::PathBuf,
}

async fn demo() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let dir = std::env::temp_dir().join(format!("gitlab-worker-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    let d = start(dir).await?;
    let first_id = full_sync(&d, 1, "demo-sync-1").await?;
    jit_grant(&d).await?;
    invite(&d).await?;
    deprovision(&d).await?;
    access_diff(&d, &first_id).await?;
    audit(&d).await?;
    println!(
        "\nDone in {:.1} s. Next: `gitlab-worker serve` against a real GitLab and NATS (README).",
        started.elapsed().as_secs_f64()
    );
    d.store.close().await?;
    d.sim.stop().await;
    Ok(())
}

async fn start(dir: std::path::PathBuf) -> anyhow::Result<Demo> {
    let sim = gitlab_sim::start(
        world(),
        SimConfig::for_mode(Mode::SelfManaged),
        "127.0.0.1:0",
    )
    .await?;
    println!(
        "A simulated self-managed GitLab runs at {} (in this process).",
        sim.url
    );
    println!(
        "Organisation: acme/{{platform, security}}, projects acme/platform/api and acme/security/vault."
    );

    // The same settings, store and handler `serve` builds, pointed at the simulator.
    let mut settings = Settings::load(None, false)?;
    settings.database_url = format!("sqlite://{}?mode=rwc", dir.join("demo.db").display());
    let connector = ConnectorSettings {
        id: crate::ids::ConnectorId::parse("demo")?,
        url: gitlab_connector::client::BaseUrl::parse(&sim.url)?,
        token: gitlab_connector::Secret::new(TOKEN),
        token_source: TokenSource::Env("GITLAB_TOKEN"),
        token_file: None,
        scope: Some("acme".into()),
        rate_limit_per_minute: None,
        instance: Some(gitlab_connector::InstanceKind::SelfManaged),
        allow_create_users: false,
        rotate_when_days_left: 0,
        policy: crate::policy::Policy::default(),
        limits: crate::config::ClientLimits::default(),
        webhook_secret: None,
        webhook_secret_file: None,
    };
    settings.connectors = BTreeMap::from([(connector.id.clone(), connector)]);
    let store = Store::open(&settings.database_url).await?;
    let connectors = crate::app::connectors(&settings, true).await?;
    let mut handler = crate::app::handler(&settings, store.clone(), connectors, false);
    handler.spool_dir = dir.join("spool");
    let handler = Arc::new(handler);
    println!("Database: SQLite at {}", dir.join("demo.db").display());

    let names = Names::of(&sim);
    Ok(Demo {
        sim,
        store,
        handler,
        names,
        dir,
    })
}

/// A sync; returns the snapshot id.
async fn full_sync(d: &Demo, step: u32, job_id: &str) -> anyhow::Result<String> {
    heading(step, "Full sync");
    let r = run_job(&d.handler, job(job_id, "sync", json!({}))).await?;
    let id = r["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    println!(
        "   snapshot {id}: complete={}, records {}",
        r["snapshot"]["complete"], r["snapshot"]["counts"]
    );
    Ok(id)
}

async fn jit_grant(d: &Demo) -> anyhow::Result<()> {
    let (handler, names, sim) = (&d.handler, &d.names, &d.sim);
    heading(
        2,
        "A 10-second just-in-time grant: alice becomes maintainer of acme/platform",
    );
    let r = run_job(
        handler,
        job(
            "demo-jit",
            "grant",
            json!({"user": {"username": "alice"}, "target": {"group": "acme/platform"},
                   "access_level": "maintainer", "duration_seconds": 10}),
        ),
    )
    .await?;
    show_changes(&r, names);
    let expires: chrono::DateTime<Utc> = r["grant"]["expires_at"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    println!(
        "   expires at {} (GitLab's own expires_at, as a second guard: {})",
        expires.format("%H:%M:%S%.3f UTC"),
        r["grant"]["gitlab_expires_at"].as_str().unwrap_or("")
    );
    let platform = sim
        .sim
        .world
        .read()
        .expect("lock")
        .group_by_ref("acme/platform")
        .unwrap_or(0);
    let alice = sim
        .sim
        .world
        .read()
        .expect("lock")
        .index
        .user_by_username
        .get("alice")
        .copied()
        .unwrap_or(0);
    let level = || {
        sim.sim
            .world
            .read()
            .expect("lock")
            .members
            .get(&Resource::Group(platform))
            .and_then(|m| m.get(&alice))
            .map_or(0, |m| u64::from(m.access_level))
    };
    // The scheduler `serve` runs, checking every 500 ms.
    let expired = loop {
        let done = crate::scheduler::run_due(handler).await;
        if let Some(e) = done.into_iter().next() {
            break e;
        }
        let left = (expires - Utc::now()).num_milliseconds().max(0);
        if left % 2000 < 500 || left < 500 {
            println!(
                "   {:>4.1} s left: alice on acme/platform is {}",
                left as f64 / 1000.0,
                level_name(level())
            );
        }
        tokio::time::sleep(crate::scheduler::TICK).await;
    };
    let undone: chrono::DateTime<Utc> = expired.event["undone_at"]
        .as_str()
        .unwrap_or_default()
        .parse()?;
    println!(
        "   expired: undone {} ms after the expiry; alice on acme/platform is now {}",
        (undone - expires).num_milliseconds(),
        level_name(level())
    );
    show_changes(&expired.event, names);

    Ok(())
}

async fn invite(d: &Demo) -> anyhow::Result<()> {
    let (handler, names) = (&d.handler, &d.names);
    heading(
        3,
        "An invitation: new.hire@example.com as reporter of acme/platform",
    );
    let r = run_job(
        handler,
        job(
            "demo-invite",
            "invite",
            json!({"email": "new.hire@example.com", "target": {"group": "acme/platform"}, "access_level": "reporter"}),
        ),
    )
    .await?;
    show_changes(&r, names);

    Ok(())
}

async fn deprovision(d: &Demo) -> anyhow::Result<()> {
    let (handler, names) = (&d.handler, &d.names);
    heading(
        4,
        "Deprovisioning bob: memberships, invitations, tokens, account",
    );
    let r = run_job(
        handler,
        job(
            "demo-deprovision",
            "deprovision",
            json!({"user": {"username": "bob"}, "actions": ["remove_memberships", "cancel_invitations", "revoke_tokens", "block"]}),
        ),
    )
    .await?;
    show_changes(&r, names);
    println!(
        "   residual access after re-reading GitLab: {}",
        r["residual_access"]
    );

    Ok(())
}

async fn access_diff(d: &Demo, first_id: &str) -> anyhow::Result<()> {
    let (handler, store, dir) = (&d.handler, &d.store, &d.dir);
    heading(5, "Second sync and the access diff against the first");
    let r = run_job(handler, job("demo-sync-2", "sync", json!({}))).await?;
    let second_id = r["snapshot"]["snapshot_id"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let (a, b) = (dir.join("first.ndjson"), dir.join("second.ndjson"));
    for (id, path) in [(first_id, &a), (second_id.as_str(), &b)] {
        let snap = store.find_snapshot(id).await?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        store.export_snapshot(&snap, &mut f).await?;
    }
    let mut diff = Vec::new();
    let counts = gitlab_connector::snapshot::diff::diff_files(&a, &b, &mut diff)?;
    let (users, res) = snapshot_names(&b)?;
    let (users_a, res_a) = snapshot_names(&a)?;
    for line in String::from_utf8_lossy(&diff).lines() {
        let v: Value = serde_json::from_str(line)?;
        if v["type"] != "access_change" {
            continue;
        }
        let uid = v["user_id"].as_u64().unwrap_or(0);
        let r = match (v["resource"]["type"].as_str(), v["resource"]["id"].as_u64()) {
            (Some("group"), Some(id)) => ResourceRef::Group(id),
            (_, Some(id)) => ResourceRef::Project(id),
            _ => continue,
        };
        let name = users
            .get(&uid)
            .or_else(|| users_a.get(&uid))
            .cloned()
            .unwrap_or(uid.to_string());
        let path = res
            .get(&r)
            .or_else(|| res_a.get(&r))
            .cloned()
            .unwrap_or_default();
        let lvl = |s: &Value| s["access_level"].as_u64().map_or("none", level_name);
        println!(
            "   {:<15} {:<8} on {:<22} {} -> {}",
            v["change"].as_str().unwrap_or(""),
            name,
            path,
            lvl(&v["before"]),
            lvl(&v["after"])
        );
    }
    println!(
        "   {} added, {} removed, {} changed",
        counts.added, counts.removed, counts.changed
    );

    Ok(())
}

async fn audit(d: &Demo) -> anyhow::Result<()> {
    let store = &d.store;
    heading(6, "What auditors read");
    let list = store.list_snapshots(Some("demo")).await?;
    for s in &list {
        println!(
            "   snapshot {} complete={} records={} sha256={}…",
            s.snapshot_id,
            s.complete,
            s.record_count,
            &s.sha256[..16]
        );
    }
    let audit = store.audit_entries(None).await?;
    println!("   audit log: {} write(s) in GitLab, e.g.:", audit.len());
    for e in audit.iter().take(4) {
        println!(
            "     {} {} {} -> {}",
            e.at.format("%H:%M:%S"),
            e.action,
            e.target,
            e.outcome
        );
    }
    Ok(())
}

struct Cleanup(std::path::PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
