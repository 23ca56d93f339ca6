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
