//! python-gitlab, a real client nobody here wrote, pages the simulator with `get_all=True` and
//! must get every record.

use std::path::PathBuf;
use std::process::Command;

use gitlab_sim::{Mode, Resource, SeedSpec, SimConfig};

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("GITLAB_SIM_PYTHON") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join(".tools/venv/bin/python");
    assert!(
        venv.exists(),
        "python-gitlab is not installed: run `bash scripts/test` once (it creates .tools/venv), or set GITLAB_SIM_PYTHON"
    );
    venv
}

#[tokio::test]
async fn python_gitlab_pages_everything() {
    let seeded = gitlab_sim::seed::generate(&SeedSpec {
        seed: 11,
        users: 260,
        groups: 15,
        projects: 45,
        depth: 3,
        memberships: 1800,
        shares: 5,
        mode: Mode::SelfManaged,
    });
    let w = seeded.world.clone();
    let sim = gitlab_sim::start(
        seeded.world,
        SimConfig::for_mode(Mode::SelfManaged),
        "127.0.0.1:0",
    )
    .await
    .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/page_all.py");
    let url = sim.url.clone();
    let token = seeded.token.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(script)
            .env("GITLAB_URL", url)
            .env("GITLAB_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python-gitlab failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["users"], w.users.len());
    assert_eq!(got["groups"], w.groups.len());
    assert_eq!(got["projects"], w.projects.len());
    for (kind, key) in [("group", "group_members"), ("project", "project_members")] {
        let expected: serde_json::Map<String, serde_json::Value> = w
            .members
            .iter()
            .filter(|(r, m)| {
                !m.is_empty()
                    && matches!(
                        (r, kind),
                        (Resource::Group(_), "group") | (Resource::Project(_), "project")
                    )
            })
            .map(|(r, m)| {
                let id = match r {
                    Resource::Group(g) | Resource::Project(g) => *g,
                };
                (id.to_string(), serde_json::json!(m.len()))
            })
            .collect();
        assert_eq!(got[key], serde_json::Value::Object(expected), "{key}");
    }
    // It really paged: several pages for users at python-gitlab's default page size.
    assert!(sim.sim.counts()["GET /users"].requests >= 13);
}
