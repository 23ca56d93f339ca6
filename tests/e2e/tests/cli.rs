//! The built `gitlab-worker` binary exposes the command line of docs/contract.md, "Commands".

use assert_cmd::Command;

fn worker() -> Command {
    Command::cargo_bin("gitlab-worker")
        .expect("gitlab-worker is built by `cargo build --workspace`")
}

#[test]
fn help_lists_every_command_of_the_interface() {
    let out = worker().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in ["serve", "sync", "run-job", "migrate", "demo", "snapshots"] {
        assert!(help.contains(cmd), "`{cmd}` missing from --help:\n{help}");
    }
    let snapshots = worker().args(["snapshots", "--help"]).output().unwrap();
    let text = String::from_utf8(snapshots.stdout).unwrap();
    for cmd in ["list", "show", "diff", "export"] {
        assert!(text.contains(cmd), "`snapshots {cmd}` missing:\n{text}");
    }
}

#[test]
fn unknown_commands_are_usage_errors() {
    let out = worker().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("frobnicate"), "{err}");
}

#[test]
fn export_format_is_validated() {
    let out = worker()
        .args(["snapshots", "export", "1", "--format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().contains("ndjson"));
}

#[test]
fn config_show_prints_the_effective_policy_and_no_secret() {
    let out = worker()
        .args(["config", "show"])
        .env("GITLAB_URL", "https://gitlab.example.com")
        .env("GITLAB_TOKEN", "glpat-FAKE-cfg-01")
        .env("GITLAB_SCOPE", "acme")
        .env("GITLAB_PROTECTED_USERS", "BreakGlass")
        .env("GITLAB_ACCOUNT_ACTIONS", "block,ban")
        .env(
            "NATS_URL",
            "nats://worker:nats-pass-0001@nats.example.com:4222",
        )
        .env("NATS_USER", "worker")
        .env("NATS_PASSWORD", "nats-pass-0001")
        .env("DATABASE_URL", "postgres://w:db-pass-0001@db/gitlab")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for secret in ["glpat-FAKE-cfg-01", "nats-pass-0001", "db-pass-0001"] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let policy = &v["connectors"][0]["policy"];
    assert_eq!(policy["max_grant_level"], "maintainer");
    assert_eq!(policy["max_jit_seconds"], 2_592_000);
    assert_eq!(policy["allow_permanent_grants"], true);
    assert_eq!(
        policy["account_actions"],
        serde_json::json!(["block", "ban"])
    );
    assert_eq!(policy["protected_users"], serde_json::json!(["breakglass"]));
    assert_eq!(v["connectors"][0]["token"]["env"], "GITLAB_TOKEN");
}

#[test]
fn a_bad_policy_setting_is_a_usage_error_naming_it() {
    let out = worker()
        .args(["config", "show"])
        .env("GITLAB_URL", "https://gitlab.example.com")
        .env("GITLAB_TOKEN", "glpat-FAKE-cfg-02")
        .env("GITLAB_MAX_GRANT_LEVEL", "superuser")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("GITLAB_MAX_GRANT_LEVEL"), "{err}");
    assert!(!err.contains("glpat-FAKE-cfg-02"));
}

#[test]
fn a_database_url_that_does_not_parse_is_not_printed_with_its_password() {
    let out = worker()
        .args(["migrate"])
        .env("DATABASE_URL", "mysql://w:p@ss#w0rd-db-secret@db/gitlab")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("DATABASE_URL"), "{err}");
    assert!(!err.contains("w0rd-db-secret"), "{err}");
}

#[test]
fn scale_out_settings_are_shown_and_bad_ones_are_usage_errors() {
    let show = |env: &[(&str, &str)]| {
        let mut cmd = worker();
        cmd.args(["config", "show"])
            .env("GITLAB_URL", "https://gitlab.example.com")
            .env("GITLAB_TOKEN", "glpat-FAKE-cfg-03");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = show(&[]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["concurrency"],
        serde_json::json!({"provision": 4, "sync": 2})
    );
    assert_eq!(v["nats"]["stream_replicas"], 1);
    // The older WORKER_CONCURRENCY still sets the provisioning pool; the new name wins.
    let out = show(&[
        ("WORKER_CONCURRENCY", "6"),
        ("WORKER_CONCURRENCY_SYNC", "3"),
        ("NATS_STREAM_REPLICAS", "3"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["concurrency"],
        serde_json::json!({"provision": 6, "sync": 3})
    );
    assert_eq!(v["nats"]["stream_replicas"], 3);
    let out = show(&[
        ("WORKER_CONCURRENCY", "6"),
        ("WORKER_CONCURRENCY_PROVISION", "9"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["concurrency"]["provision"], 9);
    for (name, value) in [
        ("WORKER_CONCURRENCY_SYNC", "0"),
        ("WORKER_CONCURRENCY_PROVISION", "many"),
        ("NATS_STREAM_REPLICAS", "7"),
        ("NATS_STREAM_REPLICAS", "0"),
    ] {
        let out = show(&[(name, value)]);
        assert_eq!(out.status.code(), Some(2), "{name}={value}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(name), "{name}={value}: {err}");
    }
}
