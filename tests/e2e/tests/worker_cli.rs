//! The worker's commands without NATS: `sync` into the database, `snapshots`, `run-job`,
//! `migrate`, and the `--config` file with several connectors.

use std::path::Path;
use std::process::Output;

use gitlab_e2e::{sqlite_url, tempdir};
use gitlab_sim::{Mode, SeedSpec};
use serde_json::Value;

struct Sim {
    running: gitlab_sim::Running,
    token: String,
}

async fn sim() -> Sim {
    let seeded = gitlab_sim::start_seeded(&SeedSpec::small(5, Mode::SelfManaged))
        .await
        .unwrap();
    Sim {
        token: seeded.token.clone(),
        running: seeded.running,
    }
}

/// Runs the built binary on a blocking thread (the simulator runs on this test's runtime).
async fn worker(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let stdin = stdin.map(str::to_string);
    tokio::task::spawn_blocking(move || {
        let mut cmd = assert_cmd::Command::cargo_bin("gitlab-worker").unwrap();
        cmd.args(&args).env_clear();
        for (k, v) in &env {
            cmd.env(k, v);
        }
        if let Some(s) = stdin {
            cmd.write_stdin(s);
        }
        cmd.output().unwrap()
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_stores_snapshots_that_auditors_list_show_diff_and_export() {
    let s = sim().await;
    let dir = tempdir("cli-snapshots");
    let db = sqlite_url(&dir);
    let env = [
        ("GITLAB_URL", s.running.url.as_str()),
        ("GITLAB_TOKEN", s.token.as_str()),
        ("GITLAB_SCOPE", "org"),
        ("DATABASE_URL", db.as_str()),
    ];
    let a = dir.join("a.ndjson");
    let out = worker(&["sync", "--out", a.to_str().unwrap()], &env, None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("stored as snapshot"));
    // Without --out the snapshot goes to standard output, and is stored too.
    let out = worker(&["sync"], &env, None).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let b_bytes = out.stdout;

    let list = worker(
        &["snapshots", "list", "--json"],
        &[("DATABASE_URL", &db)],
        None,
    )
    .await;
    assert_eq!(list.status.code(), Some(0), "{}", text(&list.stderr));
    let rows: Vec<Value> = text(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    // The second chains to the first through the database.
    assert_eq!(rows[1]["prev_sha256"], rows[0]["sha256"]);
    let (id_a, id_b) = (
        rows[0]["snapshot_id"].as_str().unwrap().to_string(),
        rows[1]["snapshot_id"].as_str().unwrap().to_string(),
    );
    let table = worker(&["snapshots", "list"], &[("DATABASE_URL", &db)], None).await;
    assert!(text(&table.stdout).contains(&id_a));

    let show = worker(
        &["snapshots", "show", &id_b[..30]],
        &[("DATABASE_URL", &db)],
        None,
    )
    .await;
    assert_eq!(show.status.code(), Some(0), "{}", text(&show.stderr));
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["snapshot"]["snapshot_id"], id_b.as_str());
    assert_eq!(shown["summary"]["complete"], true);

    let export = worker(
        &["snapshots", "export", &id_a],
        &[("DATABASE_URL", &db)],
        None,
    )
    .await;
    assert_eq!(export.stdout, std::fs::read(&a).unwrap(), "byte-identical");
    let export_b = worker(
        &["snapshots", "export", &id_b],
        &[("DATABASE_URL", &db)],
        None,
    )
    .await;
    assert_eq!(export_b.stdout, b_bytes);

    let csv = worker(
        &["snapshots", "export", &id_a, "--format", "csv"],
        &[("DATABASE_URL", &db)],
        None,
    )
    .await;
    assert_eq!(csv.status.code(), Some(0), "{}", text(&csv.stderr));
    let csv = text(&csv.stdout);
    let access = shown["summary"]["counts"]["access"].as_u64().unwrap() as usize;
    assert_eq!(
        csv.lines().count(),
        access + 1,
        "a header and one row per access record"
    );
    assert!(csv.starts_with("user_id,username,"));

    // Stored ids and files diff the same way.
    let diff = worker(
        &["snapshots", "diff", &id_a, &id_b],
        &[("DATABASE_URL", &db)],
        None,
    )
    .await;
    assert_eq!(diff.status.code(), Some(0), "{}", text(&diff.stderr));
    let first: Value = serde_json::from_str(text(&diff.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["type"], "diff");
    assert_eq!(first["from_snapshot_id"], id_a.as_str());

    let missing = worker(
        &["snapshots", "show", "nope"],
        &[("DATABASE_URL", &db)],
        None,
    )
    .await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("snapshots list"));
}

fn job(id: &str, kind: &str, connector: &str, params: Value) -> String {
    serde_json::json!({"schema": "gitlab-connector.job.v1", "job_id": id, "connector": connector, "kind": kind, "params": params}).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_job_executes_one_job_and_prints_its_result() {
    let s = sim().await;
    let dir = tempdir("cli-runjob");
    let db = sqlite_url(&dir);
    let env = [
        ("GITLAB_URL", s.running.url.as_str()),
        ("GITLAB_TOKEN", s.token.as_str()),
        ("GITLAB_SCOPE", "org"),
        ("DATABASE_URL", db.as_str()),
    ];
    let sync = job("rj-1", "sync", "default", serde_json::json!({}));
    let out = worker(&["run-job", "-"], &env, Some(&sync)).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["snapshot"]["complete"], true);

    // The same job id again: the stored result, and no GitLab request beyond the token check.
    let before: u64 = s.running.sim.counts().values().map(|c| c.requests).sum();
    let file = dir.join("job.json");
    std::fs::write(&file, &sync).unwrap();
    let again = worker(&["run-job", file.to_str().unwrap()], &env, None).await;
    assert_eq!(again.stdout, out.stdout);
    let after: u64 = s.running.sim.counts().values().map(|c| c.requests).sum();
    assert_eq!(after - before, 1, "only GET /personal_access_tokens/self");

    let bad = worker(&["run-job", "-"], &env, Some("{\"schema\": 1}")).await;
    assert_eq!(bad.status.code(), Some(2));
    let r: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(r["status"], "rejected");
    assert_eq!(r["error"]["code"], "invalid_job");

    let grant = job(
        "rj-2",
        "grant",
        "default",
        serde_json::json!({"user": {"id": 1}, "target": {"group": "org"}, "access_level": 30}),
    );
    let out = worker(&["run-job", "-"], &env, Some(&grant)).await;
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["changes"][0]["action"], "add_member", "{r}");

    let other = job("rj-3", "sync", "elsewhere", serde_json::json!({}));
    let out = worker(&["run-job", "-"], &env, Some(&other)).await;
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["error"]["code"], "unknown_connector");
    assert!(r["error"]["message"].as_str().unwrap().contains("default"));

    let missing = worker(&["run-job", "/nonexistent/job.json"], &env, None).await;
    assert_eq!(missing.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_applies_the_schema_once() {
    let dir = tempdir("cli-migrate");
    let db = sqlite_url(&dir);
    let first = worker(&["migrate"], &[("DATABASE_URL", &db)], None).await;
    assert_eq!(first.status.code(), Some(0), "{}", text(&first.stderr));
    assert!(text(&first.stderr).contains("11 migration(s) applied"));
    let second = worker(&["migrate"], &[("DATABASE_URL", &db)], None).await;
    assert!(text(&second.stderr).contains("0 migration(s) applied"));
    let bad = worker(&["migrate"], &[("DATABASE_URL", "mysql://x")], None).await;
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("DATABASE_URL"));
    let pw = worker(
        &["migrate"],
        &[("DATABASE_URL", "postgres://u:hunter2secret@127.0.0.1:1/db")],
        None,
    )
    .await;
    assert_eq!(pw.status.code(), Some(1));
    assert!(
        !text(&pw.stderr).contains("hunter2secret"),
        "{}",
        text(&pw.stderr)
    );
}

fn write(dir: &Path, name: &str, content: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_file_declares_several_connectors_and_names_bad_settings() {
    let s = sim().await;
    let dir = tempdir("cli-config");
    let db = sqlite_url(&dir);
    let token_file = write(&dir, "token", &format!("{}\n", s.token));
    let config = write(
        &dir,
        "worker.toml",
        &format!(
            r#"database_url = "{db}"

[[connectors]]
id = "first"
url = "{url}"
token_file = "{token_file}"
scope = "org"

[[connectors]]
id = "second"
url = "{url}"
token_env = "SECOND_TOKEN"
scope = "org"
rate_limit_per_minute = 60000
"#,
            url = s.running.url
        ),
    );
    let env = [("SECOND_TOKEN", s.token.as_str())];
    let out = worker(
        &["--config", &config, "run-job", "-"],
        &env,
        Some(&job("c-1", "sync", "second", serde_json::json!({}))),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["connector"], "second");
    assert_eq!(r["status"], "succeeded");
    // `sync` with several connectors asks which one.
    let out = worker(&["--config", &config, "sync", "--no-store"], &env, None).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--connector"),
        "{}",
        text(&out.stderr)
    );

    let cases = [
        (
            "[[connectors]]\nid = \"x\"\nurl = \"https://gitlab.example.com\"\ntoken_file = \"/nonexistent/token\"\n",
            "connectors[0].token_file",
        ),
        (
            "[[connectors]]\nid = \"bad id\"\nurl = \"https://gitlab.example.com\"\ntoken_env = \"HOME\"\n",
            "connectors[0].id",
        ),
        (
            "[[connectors]]\nid = \"x\"\nurl = \"https://gitlab.example.com\"\n",
            "connectors[0].token_file",
        ),
        ("concurency = 4\n", "concurency"),
        (
            "[[connectors]]\nid = \"x\"\nurl = \"not a url\"\ntoken_env = \"SECOND_TOKEN\"\n",
            "connectors[0].url",
        ),
        (
            "[[connectors]]\nid = \"x\"\nurl = \"https://a.example\"\ntoken_env = \"SECOND_TOKEN\"\n[[connectors]]\nid = \"x\"\nurl = \"https://b.example\"\ntoken_env = \"SECOND_TOKEN\"\n",
            "declared twice",
        ),
    ];
    for (i, (content, named)) in cases.iter().enumerate() {
        let bad = write(&dir, &format!("bad{i}.toml"), content);
        let out = worker(&["--config", &bad, "run-job", "-"], &env, Some("{}")).await;
        assert_eq!(
            out.status.code(),
            Some(2),
            "{content}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(named),
            "{named}: {}",
            text(&out.stderr)
        );
        assert!(!text(&out.stderr).contains(&s.token));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_to_start_with_a_token_gitlab_rejects() {
    let s = sim().await;
    let dir = tempdir("cli-badtoken");
    let out = worker(
        &["serve"],
        &[
            ("GITLAB_URL", s.running.url.as_str()),
            ("GITLAB_TOKEN", "not-a-valid-token-for-this-sim"),
            ("DATABASE_URL", &sqlite_url(&dir)),
            ("NATS_URL", "nats://127.0.0.1:1"),
        ],
        None,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("connector \"default\""), "{err}");
    assert!(!err.contains("not-a-valid-token-for-this-sim"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_without_any_external_service() {
    let started = std::time::Instant::now();
    let out = worker(&["demo"], &[], None).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    for step in [
        "== 1. Full sync",
        "alice on acme/platform is maintainer",
        "expired: undone",
        "alice on acme/platform is now none",
        "invite",
        "residual access after re-reading GitLab: []",
        "access_removed  bob",
        "audit log:",
    ] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}
