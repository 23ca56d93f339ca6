//! Seeded generation: deterministic, realistic, and the binary's three-line contract.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use gitlab_sim::{Mode, Resource, SeedSpec, UserKind};

fn spec(seed: u64, mode: Mode) -> SeedSpec {
    SeedSpec {
        seed,
        users: 500,
        groups: 40,
        projects: 120,
        depth: 4,
        memberships: 3000,
        shares: 12,
        mode,
    }
}

#[test]
fn the_same_seed_gives_the_same_organisation() {
    let a = gitlab_sim::seed::generate(&spec(7, Mode::SelfManaged));
    let b = gitlab_sim::seed::generate(&spec(7, Mode::SelfManaged));
    let c = gitlab_sim::seed::generate(&spec(8, Mode::SelfManaged));
    assert_eq!(a.token, b.token);
    assert_eq!(a.world.canonical_json(), b.world.canonical_json());
    assert_ne!(a.world.canonical_json(), c.world.canonical_json());
}

#[test]
fn organisations_are_realistic() {
    let s = gitlab_sim::seed::generate(&spec(3, Mode::SelfManaged));
    let w = &s.world;
    let top = w.group_by_ref("org").unwrap();
    let tree: Vec<u64> = std::iter::once(top).chain(w.descendants(top)).collect();
    assert_eq!(tree.len(), 40);
    let max_depth = tree
        .iter()
        .map(|g| w.ancestors_and_self(*g).len() - 1)
        .max()
        .unwrap();
    assert!((2..=4).contains(&max_depth), "depth {max_depth}");
    assert_eq!(w.projects_of(top, true).len(), 120);
    let in_scope: usize = tree
        .iter()
        .map(|g| Resource::Group(*g))
        .chain(w.projects_of(top, true).into_iter().map(Resource::Project))
        .map(|r| w.members.get(&r).map_or(0, |m| m.len()))
        .sum();
    assert_eq!(in_scope, 3000);
    // Power law: the biggest resource dwarfs the median.
    let mut sizes: Vec<usize> = w.members.values().map(|m| m.len()).collect();
    sizes.sort_unstable();
    assert!(
        sizes[sizes.len() - 1] > 8 * sizes[sizes.len() / 2].max(1),
        "{sizes:?}"
    );
    let all: Vec<_> = w.members.values().flat_map(|m| m.values()).collect();
    assert!(
        all.iter()
            .any(|m| m.expires_at.is_some_and(|d| d >= w.today())),
        "expiring memberships"
    );
    assert!(
        all.iter()
            .any(|m| m.expires_at.is_some_and(|d| d < w.today())),
        "expired, not yet removed"
    );
    assert!(
        all.iter()
            .any(|m| m.state == gitlab_sim::model::MemberState::Awaiting),
        "awaiting"
    );
    assert!(all.iter().any(|m| m.access_level == 5), "minimal access");
    assert!(w.users.values().any(|u| u.kind == UserKind::ServiceAccount));
    assert!(w.users.values().any(|u| u.kind == UserKind::ProjectBot));
    assert!(w.users.values().any(|u| u.state == "blocked"));
    assert!(!w.shares.is_empty() && !w.invitations.is_empty() && !w.member_roles.is_empty());
    // The token is an admin's on self-managed …
    let admin = &w.users[&w.tokens.values().next().unwrap().user_id];
    assert!(admin.is_admin);
    // … and a top-level group owner's on GitLab.com.
    let com = gitlab_sim::seed::generate(&spec(3, Mode::GitlabCom));
    let holder = com.world.tokens.values().next().unwrap().user_id;
    assert!(!com.world.users[&holder].is_admin);
    assert_eq!(
        com.world.effective_level(
            holder,
            Resource::Group(com.world.group_by_ref("org").unwrap())
        ),
        50
    );
    assert!(!com.world.saml_links.is_empty());
}

#[tokio::test]
async fn the_binary_prints_url_token_and_scope_first() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gitlab-sim"))
        .args([
            "--seed",
            "5",
            "--users",
            "50",
            "--groups",
            "5",
            "--projects",
            "10",
            "--memberships",
            "100",
            "--listen",
            "127.0.0.1:0",
            "--mode",
            "gitlab-com",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = lines.next().unwrap().unwrap();
    let token = lines.next().unwrap().unwrap();
    let scope = lines.next().unwrap().unwrap();
    let url = url
        .strip_prefix("GITLAB_URL=http://127.0.0.1:")
        .map(|port| format!("http://127.0.0.1:{port}"))
        .expect("URL line");
    assert!(!url.ends_with(":0"), "the real port is printed");
    let token = token
        .strip_prefix("GITLAB_TOKEN=")
        .expect("token line")
        .to_string();
    assert_eq!(scope, "GITLAB_SCOPE=org");
    let (status, _, body) =
        crate::common::raw_get(&format!("{url}/api/v4/groups/org"), &token).await;
    assert_eq!(status, 200, "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn help_documents_every_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_gitlab-sim"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--seed",
        "--users",
        "--groups",
        "--projects",
        "--depth",
        "--memberships",
        "--shares",
        "--listen",
        "--mode",
        "--rate-limit",
        "--error-rate",
        "--drop-rate",
        "--lock-rate",
        "--latency-ms",
        "--offset-cap",
    ] {
        assert!(help.contains(opt), "{opt} missing from --help");
    }
}
