//! `gitlab-worker hooks install|status|uninstall` against the simulator's webhook APIs, and the
//! worker's check of GitLab's view (`gitlab_worker_hook_healthy`) when GitLab pauses a hook
//! that keeps failing.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gitlab_e2e::{NatsServer, Worker, sqlite_url, tempdir};
use gitlab_sim::{Mode, Resource, SeedSpec};
use serde_json::{Value, json};

struct Env {
    sim: gitlab_sim::SeededSim,
    secret: PathBuf,
    db: String,
}

async fn env() -> Env {
    gitlab_connector::client::install_crypto_provider();
    let sim = gitlab_sim::start_seeded(&SeedSpec::small(7, Mode::SelfManaged))
        .await
        .unwrap();
    let dir = tempdir("hooks-install");
    Env {
        sim,
        secret: dir.join("secrets").join("webhook"),
        db: sqlite_url(&dir),
    }
}

impl Env {
    fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GITLAB_URL", self.sim.running.url.clone()),
            ("GITLAB_TOKEN", self.sim.token.clone()),
            ("GITLAB_SCOPE", self.sim.scope.clone()),
            ("DATABASE_URL", self.db.clone()),
            (
                "GITLAB_WEBHOOK_SECRET_FILE",
                self.secret.display().to_string(),
            ),
        ]
    }

    /// Runs the CLI: (exit code, stdout lines as JSON, stderr).
    async fn cli(&self, args: &[&str]) -> (i32, Vec<Value>, String) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let vars = self.vars();
        let out = tokio::task::spawn_blocking(move || {
            assert_cmd::Command::cargo_bin("gitlab-worker")
                .unwrap()
                .args(&args)
                .env_clear()
                .envs(vars)
                .timeout(Duration::from_secs(60))
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (
            out.status.code().unwrap_or(-1),
            stdout,
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    fn secret(&self) -> String {
        std::fs::read_to_string(&self.secret)
            .unwrap()
            .trim()
            .to_string()
    }

    fn group_hooks(&self) -> Vec<gitlab_sim::hooks::GroupHook> {
        self.sim
            .sim
            .world
            .read()
            .unwrap()
            .group_hooks
            .values()
            .cloned()
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_install_is_idempotent_and_status_shows_a_paused_hook() {
    let e = env().await;
    // Nothing listens at this address: GitLab's deliveries fail.
    let url = "http://127.0.0.1:9/";

    // Before the secret exists, serve refuses to start and says how to make it.
    let (code, _, stderr) = {
        let mut vars = e.vars();
        vars.push(("NATS_URL", "nats://127.0.0.1:9".into()));
        let out = tokio::task::spawn_blocking(move || {
            assert_cmd::Command::cargo_bin("gitlab-worker")
                .unwrap()
                .arg("serve")
                .env_clear()
                .envs(vars)
                .timeout(Duration::from_secs(30))
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        (
            out.status.code(),
            (),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("hooks install"), "{stderr}");

    let (code, out, stderr) = e.cli(&["hooks", "install", "--url", url]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out[0]["kind"], "group");
    let first = e.secret();
    assert_eq!(first.len(), 64);
    assert_eq!(
        std::fs::metadata(&e.secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let hooks = e.group_hooks();
    assert_eq!(hooks.len(), 1);
    let h = &hooks[0];
    assert_eq!(h.url, "http://127.0.0.1:9/hooks/gitlab/default");
    assert_eq!(h.token.as_deref(), Some(first.as_str()));
    assert!(h.member_events && h.subgroup_events && h.project_events);
    assert!(!h.push_events && h.enable_ssl_verification);
    assert!(!stderr.contains(&first), "the secret is never printed");
    assert!(!out[0].to_string().contains(&first));

    // Again: the same hook, a new secret.
    let (code, _, stderr) = e.cli(&["hooks", "install", "--url", url]).await;
    assert_eq!(code, 0, "{stderr}");
    let second = e.secret();
    assert_ne!(first, second);
    let hooks = e.group_hooks();
    assert_eq!(hooks.len(), 1, "installed once");
    assert_eq!(hooks[0].token.as_deref(), Some(second.as_str()));

    // A system hook too (self-managed, administrator).
    let (code, out, stderr) = e.cli(&["hooks", "install", "--url", url, "--system"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out[0]["kind"], "system");
    assert_eq!(e.sim.sim.world.read().unwrap().system_hooks.len(), 1);

    let (code, out, stderr) = e.cli(&["hooks", "status"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|h| h["alert_status"] == "executable"));

    // Deliveries fail: after 4 failures in a row GitLab pauses the hook.
    let (top, user) = {
        let w = e.sim.sim.world.read().unwrap();
        let top = w.index.group_by_path[&e.sim.scope.to_lowercase()];
        let user = w
            .users
            .values()
            .find(|u| w.effective_level(u.id, Resource::Group(top)) == 0)
            .unwrap()
            .id;
        (top, user)
    };
    let sim_addr = e.sim.running.url.trim_start_matches("http://").to_string();
    for level in [10, 20] {
        let body = json!({"resource": {"type": "group", "id": top}, "user_id": user, "access_level": level}).to_string();
        let addr = sim_addr.clone();
        let (s, _) = tokio::task::spawn_blocking(move || {
            gitlab_e2e::http(
                &addr,
                "POST",
                "/_sim/members",
                &[("Content-Type", "application/json")],
                body.as_bytes(),
            )
        })
        .await
        .unwrap();
        assert_eq!(s, 204);
    }
    let group_hook = e.group_hooks()[0].id;
    let deadline = Instant::now() + Duration::from_secs(20);
    while e
        .sim
        .sim
        .hook_attempts()
        .iter()
        .filter(|a| a.hook_id == group_hook && a.status.is_none() && !a.dropped)
        .count()
        < 4
    {
        assert!(Instant::now() < deadline, "4 failed deliveries");
        let seen = e.sim.sim.hook_attempts().len();
        e.sim
            .sim
            .wait_for_hook_attempts(seen + 1, Duration::from_secs(10))
            .await;
    }
    let (code, out, _) = e.cli(&["hooks", "status"]).await;
    assert_eq!(code, 1, "a paused hook is not healthy");
    let group = out.iter().find(|h| h["kind"] == "group").unwrap();
    assert_eq!(group["alert_status"], "temporarily_disabled", "{group}");
    assert!(group["disabled_until"].is_string());

    // The worker sees it too.
    let nats = tokio::task::spawn_blocking(NatsServer::start)
        .await
        .unwrap();
    let mut vars = e.vars();
    vars.push(("NATS_URL", nats.url.clone()));
    vars.push(("HOOK_CHECK_INTERVAL_SECONDS", "1".into()));
    vars.push(("RECONCILE_INTERVAL_SECONDS", "0".into()));
    let worker = tokio::task::spawn_blocking(move || Worker::serve(&vars))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = worker.get("/metrics");
        if metrics
            .lines()
            .any(|l| l.starts_with("gitlab_worker_hook_healthy{connector=\"default\"} 0"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hook health not reported:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        worker
            .stderr()
            .contains("GitLab stopped sending this webhook"),
        "{}",
        worker.stderr()
    );

    // Installing again enables it (an edited hook is enabled again), and uninstall removes both.
    for extra in [None, Some("--system")] {
        let mut args = vec!["hooks", "install", "--url", url];
        args.extend(extra);
        let (code, _, stderr) = e.cli(&args).await;
        assert_eq!(code, 0, "{stderr}");
    }
    let (code, out, _) = e.cli(&["hooks", "status"]).await;
    assert_eq!(code, 0, "{out:?}");
    let (code, _, stderr) = e.cli(&["hooks", "uninstall", "--system"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("2 webhook(s) removed"), "{stderr}");
    assert!(e.group_hooks().is_empty());
    assert!(e.sim.sim.world.read().unwrap().system_hooks.is_empty());
    let (code, _, stderr) = e.cli(&["hooks", "status"]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("no webhook installed"), "{stderr}");
}
