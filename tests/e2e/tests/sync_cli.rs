//! `gitlab-worker sync` as a user runs it: the built binary against the simulator.

use std::process::Output;

use gitlab_sim::{FaultRule, Mode, SeedSpec, SimConfig};

fn worker_sync(url: &str, token: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = assert_cmd::Command::cargo_bin("gitlab-worker").unwrap();
    cmd.arg("sync")
        .args(extra)
        .env_clear()
        .env("GITLAB_URL", url)
        .env("GITLAB_TOKEN", token)
        .env("GITLAB_SCOPE", "org")
        .env(
            "DATABASE_URL",
            gitlab_e2e::sqlite_url(&gitlab_e2e::tempdir("sync-db")),
        );
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("gl-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test(flavor = "multi_thread")]
async fn a_complete_sync_exits_0_and_chains_to_the_previous_snapshot() {
    let sim = gitlab_sim::start_seeded(&SeedSpec::small(9, Mode::SelfManaged))
        .await
        .unwrap();
    let dir = tmpdir("complete");
    let (a, b) = (dir.join("a.ndjson"), dir.join("b.ndjson"));
    let (url, token) = (sim.url.clone(), sim.token.clone());
    let (a2, b2) = (a.clone(), b.clone());
    let (first, second) = tokio::task::spawn_blocking(move || {
        let first = worker_sync(&url, &token, &["--out", a2.to_str().unwrap()], &[]);
        let second = worker_sync(
            &url,
            &token,
            &[
                "--out",
                b2.to_str().unwrap(),
                "--prev",
                a2.to_str().unwrap(),
            ],
            &[],
        );
        (first, second)
    })
    .await
    .unwrap();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        second.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(stderr.contains("complete snapshot"), "{stderr}");
    assert!(!stderr.contains(&sim.token), "the token was printed");
    let sa = gitlab_connector::snapshot::verify(std::io::BufReader::new(
        std::fs::File::open(&a).unwrap(),
    ))
    .unwrap();
    let sb = gitlab_connector::snapshot::verify(std::io::BufReader::new(
        std::fs::File::open(&b).unwrap(),
    ))
    .unwrap();
    assert!(sa.complete && sa.prev_sha256.is_none());
    assert_eq!(sb.prev_sha256, Some(sa.sha256));
    assert!(!dir.join("a.ndjson.partial-write").exists());
    // A diff of the two files: nothing changed.
    let diff = assert_cmd::Command::cargo_bin("gitlab-worker")
        .unwrap()
        .args(["snapshots", "diff"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(diff.status.success());
    let last = String::from_utf8(diff.stdout)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    assert_eq!(
        last,
        r#"{"type":"diff_summary","added":0,"removed":0,"changed":0,"removals_suppressed":0}"#
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_sync_exits_3_and_names_what_was_not_read() {
    let seeded = gitlab_sim::seed::generate(&SeedSpec::small(9, Mode::SelfManaged));
    let project = *seeded.world.projects.keys().next().unwrap();
    let mut cfg = SimConfig::for_mode(Mode::SelfManaged);
    cfg.faults.rules.push(FaultRule {
        path: format!("/projects/{project}"),
        status: Some(403),
        method: None,
        ..Default::default()
    });
    let sim = gitlab_sim::start(seeded.world, cfg, "127.0.0.1:0")
        .await
        .unwrap();
    let dir = tmpdir("partial");
    let out = dir.join("s.ndjson");
    let (url, token, o) = (sim.url.clone(), seeded.token.clone(), out.clone());
    let run = tokio::task::spawn_blocking(move || {
        worker_sync(&url, &token, &["--out", o.to_str().unwrap()], &[])
    })
    .await
    .unwrap();
    assert_eq!(run.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("PARTIAL") && stderr.contains(&format!("project {project}")),
        "{stderr}"
    );
    let summary = gitlab_connector::snapshot::verify(std::io::BufReader::new(
        std::fs::File::open(&out).unwrap(),
    ))
    .unwrap();
    assert!(!summary.complete);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn configuration_errors_exit_2_and_name_the_setting() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("GITLAB_TOKEN", "x")], "GITLAB_URL"),
        (
            &[("GITLAB_URL", "https://gitlab.example.com")],
            "GITLAB_TOKEN",
        ),
        (
            &[
                ("GITLAB_URL", "https://gitlab.example.com"),
                ("GITLAB_TOKEN", "secret-value-123"),
                ("GITLAB_RATE_LIMIT_PER_MINUTE", "lots"),
            ],
            "GITLAB_RATE_LIMIT_PER_MINUTE",
        ),
        (
            &[
                ("GITLAB_URL", "https://gitlab.example.com"),
                ("GITLAB_TOKEN_FILE", "/nonexistent/token"),
            ],
            "GITLAB_TOKEN_FILE",
        ),
    ];
    for (env, setting) in cases {
        let mut cmd = assert_cmd::Command::cargo_bin("gitlab-worker").unwrap();
        cmd.args(["sync", "--scope", "org"]).env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{setting}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(setting), "{setting}: {stderr}");
        assert!(!stderr.contains("secret-value-123"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rejected_token_exits_2_without_printing_it() {
    let sim = gitlab_sim::start_seeded(&SeedSpec::small(9, Mode::SelfManaged))
        .await
        .unwrap();
    let url = sim.url.clone();
    let run =
        tokio::task::spawn_blocking(move || worker_sync(&url, "not-a-valid-token-4711", &[], &[]))
            .await
            .unwrap();
    assert_eq!(
        run.status.code(),
        Some(2),
        "an unusable token is a configuration error"
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("GITLAB_TOKEN"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-a-valid-token-4711"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_problems_are_reported_before_the_sync() {
    let mut seeded = gitlab_sim::seed::generate(&SeedSpec::small(9, Mode::SelfManaged));
    let root = *seeded
        .world
        .users
        .iter()
        .find(|(_, u)| u.is_admin)
        .unwrap()
        .0;
    let today = seeded.world.today();
    seeded
        .world
        .add_token(root, "expired", "expired-token-1", &["api"], Some(today));
    seeded.world.add_token(
        root,
        "soon",
        "expiring-token-1",
        &["api"],
        Some(today + chrono::Duration::days(3)),
    );
    seeded.world.add_token(
        root,
        "ro",
        "readonly-token-1",
        &["read_api"],
        Some(today + chrono::Duration::days(90)),
    );
    seeded.world.add_token(
        root,
        "user",
        "user-scope-token-1",
        &["read_user"],
        Some(today + chrono::Duration::days(90)),
    );
    let sim = gitlab_sim::start(
        seeded.world,
        SimConfig::for_mode(Mode::SelfManaged),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let url = sim.url.clone();
    let runs = tokio::task::spawn_blocking(move || {
        [
            "expired-token-1",
            "expiring-token-1",
            "readonly-token-1",
            "user-scope-token-1",
        ]
        .map(|t| worker_sync(&url, t, &["--out", "/dev/null"], &[]))
    })
    .await
    .unwrap();
    let text = |o: &Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(runs[0].status.code(), Some(2));
    assert!(
        text(&runs[0]).contains("expired") && text(&runs[0]).contains("GITLAB_TOKEN"),
        "{}",
        text(&runs[0])
    );
    assert_eq!(runs[1].status.code(), Some(0), "{}", text(&runs[1]));
    assert!(text(&runs[1]).contains("3 days left"), "{}", text(&runs[1]));
    assert_eq!(runs[2].status.code(), Some(0), "{}", text(&runs[2]));
    assert!(
        text(&runs[2]).contains("sync-only mode"),
        "{}",
        text(&runs[2])
    );
    assert_eq!(runs[3].status.code(), Some(2));
    // Refused by GitLab itself (403 insufficient_scope) or by our scope check: either way the
    // message says which token to create.
    assert!(
        text(&runs[3]).contains("GITLAB_TOKEN") && text(&runs[3]).contains("create a token with"),
        "{}",
        text(&runs[3])
    );
    for r in &runs {
        assert!(
            !text(r).contains("-token-1"),
            "a token was printed: {}",
            text(r)
        );
    }
}
