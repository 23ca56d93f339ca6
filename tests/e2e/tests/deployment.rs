//! The shipped deployment is safe by default (docs/security.md): NATS asks for a password, no
//! port is published beyond this machine, the worker's HTTP port is not published, and secrets
//! stay out of git and out of the image's build context. No Docker engine runs here, so these
//! are checks of the files themselves.

use gitlab_e2e::workspace_root;

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The lines of one top-level service of docker/compose.yaml.
fn service<'a>(compose: &'a str, name: &str) -> Vec<&'a str> {
    let header = format!("  {name}:");
    compose
        .lines()
        .skip_while(|l| *l != header)
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .collect()
}

#[test]
fn nats_requires_authentication_and_publishes_on_loopback_only() {
    let compose = read("docker/compose.yaml");
    assert!(
        compose.contains("authorization {"),
        "NATS runs without authentication"
    );
    assert!(
        compose.contains("NATS_PASSWORD_FILE"),
        "the worker does not authenticate"
    );
    for name in ["nats", "postgres", "worker"] {
        for line in service(&compose, name) {
            let line = line.trim();
            if line.starts_with("ports:") || line.starts_with("- \"") && line.contains(':') {
                assert!(
                    line.contains("127.0.0.1:"),
                    "{name} publishes a port beyond this machine: {line}"
                );
            }
        }
    }
    assert!(
        !service(&compose, "worker")
            .iter()
            .any(|l| l.trim().starts_with("ports:")),
        "the worker's HTTP port is published"
    );
}

#[test]
fn secrets_stay_out_of_git_and_out_of_the_build_context() {
    let gitignore = read(".gitignore");
    assert!(gitignore.lines().any(|l| l.trim() == "/docker/secrets/"));
    let dockerignore = read(".dockerignore");
    for must in ["docker/secrets", ".git", "target", ".tools"] {
        assert!(
            dockerignore.lines().any(|l| l.trim() == must),
            ".dockerignore does not exclude {must}"
        );
    }
    let dockerfile = read("docker/Dockerfile");
    assert!(
        dockerfile.contains("--no-default-features"),
        "the image links the simulator"
    );
}
