//! Point-in-time answers through the built binary (docs/auditors.md): a history of three syncs
//! run by `serve` from NATS, with a member added between them and a JIT grant that came and
//! went; `access who|user|history` asked before, between and after the snapshots, in every
//! format, and checked against the simulator's own effective access.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gitlab_e2e::{NatsServer, Worker, publish_job, read_stream, sqlite_url, tempdir};
use gitlab_sim::{Mode, Resource, SimConfig, UserKind, World};
use serde_json::{Value, json};

const TOKEN: &str = "sim-connector-token-for-auditors";
const HOSTILE: &str = "<img src=x onerror=alert(1)>\"'&";

/// ```text
/// org                 owner 50, carol 30
/// ├── a               bob 20
/// │   └── p1          (project)
/// └── b
/// partners (outside)  frank 40; shared with org/a at 30
/// ```
fn org() -> (World, BTreeMap<&'static str, u64>) {
    let mut w = World::new(Mode::SelfManaged);
    let today = w.today();
    let mut ids = BTreeMap::new();
    let root = w.add_user("root", UserKind::Human);
    w.users.get_mut(&root).unwrap().is_admin = true;
    for n in ["owner", "alice", "bob", "carol", "dave", "frank", "mallory"] {
        ids.insert(n, w.add_user(n, UserKind::Human));
    }
    // A display name that would run as script if the page did not escape it.
    w.users.get_mut(&ids["mallory"]).unwrap().name = HOSTILE.into();
    let org = w.add_group("org", None);
    let a = w.add_group("a", Some(org));
    let b = w.add_group("b", Some(org));
    let partners = w.add_group("partners", None);
    let p1 = w.add_project("p1", a);
    ids.extend([
        ("org", org),
        ("a", a),
        ("b", b),
        ("partners", partners),
        ("p1", p1),
    ]);
    w.set_member(Resource::Group(org), ids["owner"], 50, None);
    w.set_member(Resource::Group(org), ids["carol"], 30, None);
    w.set_member(Resource::Group(a), ids["bob"], 20, None);
    w.set_member(Resource::Group(partners), ids["frank"], 40, None);
    w.set_member(Resource::Group(b), ids["mallory"], 20, None);
    w.share(Resource::Group(a), partners, 30, None);
    w.users.get_mut(&ids["carol"]).unwrap().last_activity_on =
        Some(today - chrono::Duration::days(3));
    w.add_token(
        root,
        "connector",
        TOKEN,
        &["api"],
        Some(today + chrono::Duration::days(90)),
    );
    w.reindex();
    (w, ids)
}

/// A stored history: snapshot 1; dave added to org/a; alice granted maintainer on org/a for
/// a few seconds; snapshot 2 (both seen); the grant expires; snapshot 3.
pub struct History {
    pub sim: gitlab_sim::Running,
    pub ids: BTreeMap<&'static str, u64>,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// The three snapshots' ids.
    pub snapshots: Vec<String>,
    pub before_all: DateTime<Utc>,
    _nats: NatsServer,
}

impl History {
    pub async fn build() -> Self {
        gitlab_connector::client::install_crypto_provider();
        let (world, ids) = org();
        let sim = gitlab_sim::start(world, SimConfig::for_mode(Mode::SelfManaged), "127.0.0.1:0")
            .await
            .unwrap();
        let nats = tokio::task::spawn_blocking(NatsServer::start)
            .await
            .unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(&nats.url).await.unwrap());
        let dir = tempdir("auditors");
        let env = worker_env(&sim.url, &nats.url, &dir);
        let before_all = Utc::now();
        let worker = serve(&env).await;
        let run = |job_id: &'static str, kind: &'static str, params: Value| {
            let js = js.clone();
            async move {
                let job = json!({"schema": "gitlab-connector.job.v1", "job_id": job_id, "connector": "default", "kind": kind, "params": params, "requested_by": "reviewer@example.com", "reason": "ticket SEC-42"});
                publish_job(
                    &js,
                    &format!("gitlab.jobs.default.{kind}"),
                    job.to_string(),
                    Some(job_id),
                )
                .await;
                gitlab_e2e::job_result(&js, job_id).await
            }
        };
        let mut snapshots = Vec::new();
        let r = run("sync-1", "sync", json!({})).await;
        assert_eq!(r["status"], "succeeded", "{r}");
        snapshots.push(snapshot_of(&r));
        sim.sim
            .world
            .write()
            .unwrap()
            .set_member(Resource::Group(ids["a"]), ids["dave"], 30, None);
        // 8 s: long enough that snapshot 2 (taken right after the grant) finishes well before the
        // grant ends, even on a loaded machine; the browser test asks about a time between them.
        let r = run(
            "jit-alice",
            "grant",
            json!({"user": {"username": "alice"}, "target": {"group": "org/a"}, "access_level": 40, "duration_seconds": 8}),
        )
        .await;
        assert_eq!(r["status"], "succeeded", "{r}");
        let r = run("sync-2", "sync", json!({})).await;
        snapshots.push(snapshot_of(&r));
        let expired = tokio::time::timeout(Duration::from_secs(40), async {
            loop {
                let evs = read_stream(
                    &js,
                    "GITLAB_EVENTS",
                    "gitlab.events.default.access",
                    1000,
                    Duration::from_millis(500),
                )
                .await;
                if evs.iter().any(|m| {
                    serde_json::from_slice::<Value>(&m.payload).unwrap()["cause"] == "jit_expiry"
                }) {
                    break;
                }
            }
        })
        .await;
        assert!(
            expired.is_ok(),
            "the JIT grant did not expire:\n{}",
            worker.stderr()
        );
        let r = run("sync-3", "sync", json!({})).await;
        snapshots.push(snapshot_of(&r));
        worker.terminate();
        Self {
            sim,
            ids,
            dir,
            env,
            snapshots,
            before_all,
            _nats: nats,
        }
    }

    pub async fn cli(&self, args: &[&str]) -> Output {
        gitlab_e2e::run_worker(args, &self.env).await
    }

    pub async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--format", "json"]);
        let out = self.cli(&args).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The worker's settings for the simulator, NATS and a SQLite file in `dir`.
fn worker_env(sim: &str, nats: &str, dir: &std::path::Path) -> Vec<(String, String)> {
    vec![
        ("GITLAB_URL".into(), sim.into()),
        ("GITLAB_TOKEN".into(), TOKEN.into()),
        ("GITLAB_SCOPE".into(), "org".into()),
        ("DATABASE_URL".into(), sqlite_url(dir)),
        ("NATS_URL".into(), nats.into()),
    ]
}

/// `gitlab-worker serve` with this environment.
pub async fn serve(env: &[(String, String)]) -> Worker {
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        Worker::serve(&env)
    })
    .await
    .unwrap()
}

fn snapshot_of(r: &Value) -> String {
    assert_eq!(r["status"], "succeeded", "{r}");
    r["snapshot"]["snapshot_id"].as_str().unwrap().to_string()
}

/// Rows of an access answer by username (who) or resource path (user).
fn by<'a>(answer: &'a Value, field: &str) -> BTreeMap<String, &'a Value> {
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let k = match field {
                "username" => r["username"].as_str().unwrap().to_string(),
                _ => r["resource"]["path"].as_str().unwrap().to_string(),
            };
            (k, r)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn who_user_and_history_answer_before_between_and_after_snapshots() {
    let h = History::build().await;
    // The snapshots' own finish times, as stored.
    let list = h.cli(&["snapshots", "list", "--json"]).await;
    let stored: Vec<Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(stored.len(), 3);
    let finished: Vec<DateTime<Utc>> = stored
        .iter()
        .map(|s| s["finished_at"].as_str().unwrap().parse().unwrap())
        .collect();
    let at = |i: usize| (finished[i] + chrono::Duration::milliseconds(1)).to_rfc3339();

    // Before the first snapshot: said, not answered empty.
    let before = h.before_all - chrono::Duration::seconds(60);
    let out = h
        .cli(&["access", "who", "group:org/a", "--at", &before.to_rfc3339()])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("before the first stored snapshot"), "{err}");

    // Between snapshots 1 and 2: the first one's state.
    let a1 = h
        .json(&["access", "who", "group:org/a", "--at", &at(0)])
        .await;
    assert_eq!(a1["based_on"]["snapshot_id"], h.snapshots[0]);
    assert_eq!(a1["based_on"]["complete"], true);
    let rows = by(&a1, "username");
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["bob", "carol", "frank", "owner"]
    );
    assert_eq!(rows["carol"]["access_level"], 30);
    assert_eq!(rows["carol"]["paths"][0]["via"], "inherited");
    assert_eq!(rows["carol"]["paths"][0]["group_path"], "org");
    assert_eq!(rows["carol"]["since_history_start"], true);
    assert_eq!(
        rows["carol"]["last_activity_on"],
        (chrono::Utc::now().date_naive() - chrono::Duration::days(3)).to_string()
    );
    assert_eq!(rows["frank"]["paths"][0]["via"], "shared");
    assert_eq!(rows["frank"]["paths"][0]["group_path"], "partners");
    let chain: Vec<&str> = rows["frank"]["paths"][0]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["partners", "org/a"]);
    assert_eq!(rows["bob"]["paths"][0]["via"], "direct");

    // At snapshot 2: dave (added between) and alice's JIT grant; dave since snapshot 2.
    let a2 = h
        .json(&["access", "who", "group:org/a", "--at", &at(1)])
        .await;
    assert_eq!(a2["based_on"]["snapshot_id"], h.snapshots[1]);
    let rows = by(&a2, "username");
    assert_eq!(rows["alice"]["access_level"], 40);
    assert_eq!(rows["dave"]["access_level"], 30);
    let dave_since: DateTime<Utc> = rows["dave"]["since"].as_str().unwrap().parse().unwrap();
    assert_eq!(dave_since, finished[1]);
    assert_eq!(rows["dave"]["since_history_start"], false);
    let carol_since: DateTime<Utc> = rows["carol"]["since"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        carol_since, finished[0],
        "unbroken since the first snapshot"
    );

    // Alice's reach at snapshot 2: the group and, inherited through it, its project.
    let u2 = h.json(&["access", "user", "alice", "--at", &at(1)]).await;
    let rows = by(&u2, "path");
    assert_eq!(
        rows.keys().map(String::as_str).collect::<Vec<_>>(),
        ["org/a", "org/a/p1"]
    );
    let p1 = rows["org/a/p1"];
    assert_eq!(p1["access_level"], 40);
    assert_eq!(p1["paths"][0]["via"], "inherited");
    let chain: Vec<&str> = p1["paths"][0]["chain"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(chain, ["org/a", "org/a/p1"]);

    // Now (snapshot 3): the grant is gone; every answer matches GitLab's own computation.
    let now = h.json(&["access", "who", "group:org/a"]).await;
    assert_eq!(now["based_on"]["snapshot_id"], h.snapshots[2]);
    let rows = by(&now, "username");
    assert!(!rows.contains_key("alice"));
    {
        let w = h.sim.sim.world.read().unwrap();
        let a = Resource::Group(h.ids["a"]);
        let mut expected: Vec<(u64, u16)> = w
            .users
            .keys()
            .map(|u| (*u, w.effective_level(*u, a)))
            .filter(|(_, l)| *l > 0)
            .collect();
        expected.sort();
        let mut got: Vec<(u64, u16)> = now["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["user_id"].as_u64().unwrap(),
                    r["access_level"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got, expected,
            "the answer matches GitLab's effective access"
        );
    }
    let u3 = h.json(&["access", "user", "alice"]).await;
    assert!(u3["rows"].as_array().unwrap().is_empty());
    let by_id = h
        .json(&["access", "who", &format!("group:{}", h.ids["a"])])
        .await;
    assert_eq!(by_id["rows"], now["rows"]);

    // The JIT grant that came and went, with its causes, oldest first.
    let hist = h.json(&["access", "history", "--user", "alice"]).await;
    let seen: Vec<(String, String, String)> = hist["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["resource"]["path"] == "org/a")
        .map(|r| {
            (
                r["cause"].as_str().unwrap().to_string(),
                r["record"].as_str().unwrap().to_string(),
                r["after"]["access_level"].to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("provisioning".into(), "membership".into(), "40".into()),
            ("sync".into(), "access".into(), "40".into()),
            ("jit_expiry".into(), "membership".into(), "null".into()),
            ("sync".into(), "access".into(), "null".into()),
        ],
        "{hist:#}"
    );
    let grant = &hist["rows"][0];
    assert_eq!(grant["job_id"], "jit-alice");
    assert_eq!(grant["job_kind"], "grant");
    assert_eq!(grant["requested_by"], "reviewer@example.com");
    assert_eq!(grant["reason"], "ticket SEC-42");

    // A window: only what changed between snapshots 1 and 2 on org/a (dave, alice).
    let window = h
        .json(&[
            "access",
            "history",
            "--resource",
            "group:org/a",
            "--since",
            &at(0),
            "--until",
            &at(1),
        ])
        .await;
    let users: Vec<&str> = window["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["record"] == "access")
        .map(|r| r["username"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "dave"]);
    let everything = h.json(&["access", "history"]).await;
    assert!(everything["rows"].as_array().unwrap().len() >= hist["rows"].as_array().unwrap().len());

    // CSV and table: the same rows.
    let csv = h
        .cli(&["access", "user", "alice", "--at", &at(1), "--format", "csv"])
        .await;
    let csv = String::from_utf8(csv.stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("as_of,snapshot_id,user_id,username"));
    assert!(
        lines[1].contains(",org/a,40,maintainer,direct (maintainer) until "),
        "{csv}"
    );
    let table = h
        .cli(&["access", "who", "group:org/a", "--at", &at(1)])
        .await;
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("shared with partners (developer)"),
        "{table}"
    );
    assert!(table.contains(&h.snapshots[1]), "{table}");

    // Bad questions: clear errors.
    let out = h.cli(&["access", "who", "org/a"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("group:PATH"));
    let out = h.cli(&["access", "who", "group:org/nope"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not in the stored history"));
    let out = h
        .cli(&["access", "user", "alice", "--at", "yesterday"])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}

/// The address the worker printed for the auditors' page.
fn ui_address(w: &Worker) -> String {
    let log = w.stderr();
    log.lines()
        .find_map(|l| l.strip_prefix("gitlab-worker: auditors' page on http://"))
        .unwrap_or_else(|| panic!("no auditors' page:\n{log}"))
        .trim()
        .to_string()
}

/// Where screenshots go: `UI_SCREENSHOTS_DIR` (docs/screenshots when refreshing the docs), else
/// the target folder.
fn screenshot_dir() -> PathBuf {
    std::env::var_os("UI_SCREENSHOTS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| gitlab_e2e::workspace_root().join("target/screenshots"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auditor_finds_a_user_goes_back_in_time_follows_a_path_and_downloads_the_csv() {
    use gitlab_e2e::webdriver::{Browser, chromium_available};
    assert!(
        chromium_available(),
        "Debian's chromium and chromium-driver are needed: `bash scripts/test` installs them"
    );
    let h = History::build().await;
    let list = h.cli(&["snapshots", "list", "--json"]).await;
    let finished: Vec<DateTime<Utc>> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["finished_at"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    // A whole second after snapshot 2 (the page's picker has second precision), before 3.
    let at = chrono::DurationRound::duration_trunc(finished[1], chrono::Duration::seconds(1))
        .unwrap()
        + chrono::Duration::seconds(1);
    assert!(at < finished[2], "snapshot 3 came within a second of 2");
    let mut env = h.env.clone();
    env.push(("UI_LISTEN".into(), "127.0.0.1:0".into()));
    let worker = serve(&env).await;
    let ui = format!("http://{}", ui_address(&worker));
    let shots = screenshot_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let downloads = tempdir("downloads");
    let b = Browser::start(&downloads).await;

    // The snapshots and their chain.
    b.goto(&format!("{ui}/")).await;
    let table = b.text("#snapshots").await;
    assert_eq!(table.matches("complete").count(), 3, "{table}");
    assert_eq!(table.matches("linked").count(), 2, "{table}");
    std::fs::write(shots.join("snapshots.png"), b.screenshot().await).unwrap();

    // Search a user and open them: today alice reaches nothing.
    b.type_into("input[name=q]", "alice").await;
    b.click("form.search button").await;
    let url = b.url_when(|u| u.contains("/search")).await;
    assert!(url.contains("/search"), "{url}");
    b.click("#results a").await;
    let user_page = format!("/users/{}", h.ids["alice"]);
    let url = b.url_when(|u| u.ends_with(&user_page)).await;
    assert!(url.ends_with(&user_page), "{url}");
    assert!(b.text("main").await.contains("No access at that time."));

    // Switch the date to while her JIT grant held.
    let value = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    b.script(
        "document.getElementById('at').value = arguments[0];",
        vec![json!(value)],
    )
    .await;
    b.click("form.inline button").await;
    let url = b.url_when(|u| u.contains("at=")).await;
    assert!(url.contains("at="), "the page as of a time: {url}");
    let access = b.text("#access").await;
    assert!(access.contains("org/a/p1"), "{access}");
    assert!(access.contains("40 maintainer"), "{access}");
    assert!(b.text(".basis").await.contains(&h.snapshots[1]));
    std::fs::write(shots.join("user.png"), b.screenshot().await).unwrap();

    // Download the CSV: the same bytes as `access user … --format csv`.
    b.click("#csv").await;
    let file = b
        .downloaded(
            &format!("user-{}-access.csv", h.ids["alice"]),
            Duration::from_secs(20),
        )
        .await;
    let downloaded = std::fs::read_to_string(file).unwrap();
    let cli = h
        .cli(&[
            "access",
            "user",
            "alice",
            "--at",
            &at.to_rfc3339(),
            "--format",
            "csv",
        ])
        .await;
    assert_eq!(downloaded, String::from_utf8(cli.stdout).unwrap());

    // Follow a path to the group it comes through.
    b.click("#access a[href^='/resources/group/']").await;
    let group_page = format!("/resources/group/{}", h.ids["a"]);
    let url = b.url_when(|u| u.contains(&group_page)).await;
    assert!(url.contains(&group_page), "{url}");
    let who = b.text("#access").await;
    assert!(who.contains("alice"), "the time asked about is kept: {who}");
    assert!(who.contains("partners"), "the shared path: {who}");
    std::fs::write(shots.join("resource.png"), b.screenshot().await).unwrap();
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_escapes_gitlab_names_sends_its_policy_and_writes_nothing() {
    let h = History::build().await;
    let mut env = h.env.clone();
    env.push(("UI_LISTEN".into(), "127.0.0.1:0".into()));
    let worker = serve(&env).await;
    let addr = ui_address(&worker);
    let get = |path: String| {
        let addr = addr.clone();
        move || gitlab_e2e::http(&addr, "GET", &path, &[], b"")
    };
    let (status, body) =
        tokio::task::spawn_blocking(get(format!("/resources/group/{}", h.ids["b"])))
            .await
            .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("mallory"), "{body}");
    assert!(
        !body.contains("<img src=x"),
        "a GitLab name reached the page unescaped"
    );
    assert!(
        body.contains("mallory")
            && h.json(&["access", "who", &format!("group:{}", h.ids["b"])])
                .await["rows"]
                .to_string()
                .contains("mallory")
    );
    let (status, body) = tokio::task::spawn_blocking(get(format!("/users/{}", h.ids["mallory"])))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        body.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"),
        "{body}"
    );
    // The policy, on every answer (the raw helper returns the body; headers checked via a
    // second request that keeps them).
    let head = {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            write!(s, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.split("\r\n\r\n").next().unwrap().to_lowercase()
        })
        .await
        .unwrap()
    };
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    for (method, path) in [("POST", "/"), ("DELETE", "/users/1"), ("PUT", "/changes")] {
        let addr = addr.clone();
        let (status, _) =
            tokio::task::spawn_blocking(move || gitlab_e2e::http(&addr, method, path, &[], b""))
                .await
                .unwrap();
        assert_eq!(status, 405, "{method} {path}");
    }
    for bad in [
        "/users/abc",
        "/resources/team/1",
        "/users/1?at=yesterday",
        "/diff",
    ] {
        let (status, _) = tokio::task::spawn_blocking(get(bad.to_string()))
            .await
            .unwrap();
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = tokio::task::spawn_blocking(get("/users/999999".to_string()))
        .await
        .unwrap();
    assert_eq!(status, 404);
    // The difference between the first and the last snapshot: dave came; alice came and went.
    let (status, body) = tokio::task::spawn_blocking(get(format!(
        "/diff?from={}&to={}",
        h.snapshots[0], h.snapshots[2]
    )))
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(">dave<"), "{body}");
    assert!(!body.contains(">alice<"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn off_loopback_the_page_needs_its_token() {
    gitlab_connector::client::install_crypto_provider();
    let (world, _) = org();
    let sim = gitlab_sim::start(world, SimConfig::for_mode(Mode::SelfManaged), "127.0.0.1:0")
        .await
        .unwrap();
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let dir = tempdir("ui-token");
    let mut env = worker_env(&sim.url, &nats.url, &dir);
    env.push(("UI_LISTEN".into(), "0.0.0.0:0".into()));
    // Without a token: the worker refuses to start.
    let out = {
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            assert_cmd::Command::cargo_bin("gitlab-worker")
                .unwrap()
                .arg("serve")
                .env_clear()
                .envs(env)
                .timeout(Duration::from_secs(60))
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UI_TOKEN_FILE"));

    // With one: 401 without it, 200 with it as a bearer token or through the login form.
    let token = "ui-token-0123456789abcdef0123456789";
    let token_file = dir.join("ui.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    env.push(("UI_TOKEN_FILE".into(), token_file.display().to_string()));
    let worker = serve(&env).await;
    assert!(!worker.stderr().contains(token), "the token was printed");
    let port = ui_address(&worker).rsplit(':').next().unwrap().to_string();
    let addr = format!("127.0.0.1:{port}");
    let call = |method: &'static str,
                path: &'static str,
                headers: Vec<(String, String)>,
                body: &'static str| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let h: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            gitlab_e2e::http(&addr, method, path, &h, body.as_bytes())
        })
    };
    assert_eq!(call("GET", "/", vec![], "").await.unwrap().0, 401);
    let wrong = vec![(
        "Authorization".to_string(),
        "Bearer wrong-token".to_string(),
    )];
    assert_eq!(call("GET", "/", wrong, "").await.unwrap().0, 401);
    let right = vec![("Authorization".to_string(), format!("Bearer {token}"))];
    // Authorised; nothing is stored yet, which the page says.
    let (status, body) = call("GET", "/", right, "").await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no stored snapshot") || body.contains("no snapshot"),
        "{body}"
    );
    // The login form sets a cookie that is not the token.
    let form = vec![(
        "Content-Type".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    )];
    let raw = {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let body = format!("token={token}");
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            write!(
                s,
                "POST /login HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        })
        .await
        .unwrap()
    };
    assert!(raw.starts_with("HTTP/1.1 303"), "{raw}");
    let cookie = raw
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("{raw}"))
        .split(';')
        .next()
        .unwrap()
        .to_string();
    assert!(!cookie.contains(token));
    let (status, _) = call("GET", "/", vec![("Cookie".to_string(), cookie)], "")
        .await
        .unwrap();
    assert_eq!(status, 404, "signed in; nothing stored yet");
    let (status, _) = call("POST", "/login", form, "token=wrong").await.unwrap();
    assert_eq!(status, 401);
}
