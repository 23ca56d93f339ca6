//! Evidence bundles through the built binary: keygen, export of a stored snapshot with the diff
//! from an earlier one, verify offline, and a change of one byte in any file found and named.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use gitlab_e2e::{sqlite_url, tempdir};
use gitlab_sim::{Mode, Resource, SeedSpec};
use serde_json::Value;

async fn worker(args: &[&str], env: &[(String, String)]) -> Output {
    gitlab_e2e::run_worker(args, env).await
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_evidence_bundle_verifies_offline_and_any_changed_byte_is_named() {
    gitlab_connector::client::install_crypto_provider();
    let sim = gitlab_sim::start_seeded(&SeedSpec::small(8, Mode::SelfManaged))
        .await
        .unwrap();
    let dir = tempdir("evidence");
    let key = dir.join("keys").join("evidence.pem");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let mut env = vec![
        ("GITLAB_URL".to_string(), sim.running.url.clone()),
        ("GITLAB_TOKEN".to_string(), sim.token.clone()),
        ("GITLAB_SCOPE".to_string(), sim.scope.clone()),
        ("DATABASE_URL".to_string(), sqlite_url(&dir)),
    ];
    // Two stored snapshots with a change between them.
    let out = worker(
        &["sync", "--out", dir.join("a.ndjson").to_str().unwrap()],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    {
        let mut w = sim.sim.world.write().unwrap();
        let top = w.index.group_by_path[&sim.scope.to_lowercase()];
        let user = w
            .users
            .values()
            .find(|u| w.effective_level(u.id, Resource::Group(top)) == 0 && !u.is_bot())
            .unwrap()
            .id;
        w.set_member(Resource::Group(top), user, 30, None);
    }
    let out = worker(
        &["sync", "--out", dir.join("b.ndjson").to_str().unwrap()],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let list = worker(&["snapshots", "list", "--json"], &env).await;
    let ids: Vec<String> = text(&list.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["snapshot_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 2);

    // No key yet: refused, naming the setting.
    let bundle = dir.join("bundle");
    let out = worker(
        &[
            "evidence",
            "export",
            &ids[1],
            "--out",
            bundle.to_str().unwrap(),
        ],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("EVIDENCE_SIGNING_KEY_FILE"));

    let out = worker(
        &["evidence", "keygen", "--out", key.to_str().unwrap()],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = worker(
        &["evidence", "keygen", "--out", key.to_str().unwrap()],
        &env,
    )
    .await;
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing key is not replaced"
    );
    env.push((
        "EVIDENCE_SIGNING_KEY_FILE".to_string(),
        key.display().to_string(),
    ));

    let out = worker(
        &[
            "evidence",
            "export",
            &ids[1],
            "--out",
            bundle.to_str().unwrap(),
            "--since",
            &ids[0],
        ],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("manifest.json")).unwrap()).unwrap();
    gitlab_e2e::assert_valid(
        &gitlab_e2e::schema("gitlab-connector.evidence.v1.schema.json"),
        &manifest,
    );
    assert_eq!(manifest["snapshot"]["snapshot_id"], ids[1].as_str());
    assert_eq!(manifest["chain"].as_array().unwrap().len(), 2);
    assert_eq!(manifest["snapshot"]["complete"], true);
    assert!(manifest["snapshot"]["api_requests"].as_u64().unwrap() > 0);
    assert_eq!(manifest["gitlab"]["instance"], "self-managed");
    // The snapshot byte-identical to the sync's file; the CSV as `snapshots export` writes it;
    // the diff names the new membership.
    assert_eq!(
        std::fs::read(bundle.join("snapshot.ndjson")).unwrap(),
        std::fs::read(dir.join("b.ndjson")).unwrap()
    );
    let csv = worker(&["snapshots", "export", &ids[1], "--format", "csv"], &env).await;
    assert_eq!(
        std::fs::read(bundle.join("access.csv")).unwrap(),
        csv.stdout
    );
    assert!(text(&std::fs::read(bundle.join("diff.ndjson")).unwrap()).contains("access_added"));

    let ok = worker(&["evidence", "verify", bundle.to_str().unwrap()], &env).await;
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}{}",
        text(&ok.stdout),
        text(&ok.stderr)
    );

    // One byte changed in any file: verify fails and names it.
    for name in [
        "snapshot.ndjson",
        "access.csv",
        "diff.ndjson",
        "manifest.json",
        "manifest.sig",
        "public_key.pem",
    ] {
        let copy = dir.join(format!("tampered-{name}"));
        copy_dir(&bundle, &copy);
        let path = copy.join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        let i = bytes.len() / 2;
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        std::fs::write(&path, bytes).unwrap();
        let out = worker(&["evidence", "verify", copy.to_str().unwrap()], &env).await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name} changed: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains(name),
            "{name} named in:\n{}",
            text(&out.stdout)
        );
    }
}
