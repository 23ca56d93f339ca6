//! Evidence bundles (docs/evidence.md): a stored snapshot written out with what an auditor needs
//! to trust it offline. `manifest.json` names every file's sha256, the snapshot's hash chain from
//! the first stored snapshot of its connector and scope, its completeness, API request counts,
//! read errors, the worker version and the GitLab instance; it is signed with Ed25519 into
//! `manifest.sig` (base64), the public key alongside as `public_key.pem`. `verify` checks the
//! signature, every file's hash, the snapshot file's own hash and the chain, with nothing but
//! the folder.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::store::{SnapshotInfo, Store, StoreError};

pub const MANIFEST_SCHEMA: &str = "gitlab-connector.evidence.v1";
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
pub const PUBLIC_KEY: &str = "public_key.pem";

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410) before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error(
        "no signing key: set EVIDENCE_SIGNING_KEY_FILE to a key made with `gitlab-worker evidence keygen --out FILE`"
    )]
    NoKey,
    #[error(
        "{path} is not an Ed25519 private key (PKCS#8 PEM, as `evidence keygen` writes): {message}"
    )]
    BadKey { path: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} exists and is not empty: choose a new folder for the evidence")]
    NotEmpty(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot diff against {since}: {message}")]
    Diff { since: String, message: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> EvidenceError + '_ {
    move |source| EvidenceError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text.split_once(&begin)?.1.split_once(&end)?.0;
    let joined: String = body.split_whitespace().collect();
    B64.decode(joined).ok()
}

fn hex(bytes: &[u8]) -> String {
    gitlab_connector::snapshot::hex(bytes)
}

fn sha256_file(path: &Path) -> Result<(String, u64), EvidenceError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = Sha256::new();
    let bytes = std::io::copy(&mut f, &mut h).map_err(io(path))?;
    Ok((hex(&h.finalize()), bytes))
}

/// A new signing key, written as PKCS#8 PEM (mode 0600; an existing file is not replaced).
/// Returns the public key's fingerprint (sha256 of its DER).
pub fn keygen(out: &Path) -> Result<String, EvidenceError> {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| EvidenceError::BadKey {
        path: out.display().to_string(),
        message: e.to_string(),
    })?;
    let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| EvidenceError::BadKey {
        path: out.display().to_string(),
        message: e.to_string(),
    })?;
    let mut f = crate::files::create_private(out).map_err(io(out))?;
    f.write_all(pem("PRIVATE KEY", doc.as_ref()).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io(out))?;
    Ok(fingerprint(pair.public_key().as_ref()))
}

fn spki(public: &[u8]) -> Vec<u8> {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public);
    der
}

fn fingerprint(public: &[u8]) -> String {
    hex(&Sha256::digest(spki(public)))
}

fn load_key(path: &Path) -> Result<Ed25519KeyPair, EvidenceError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let bad = |message: String| EvidenceError::BadKey {
        path: path.display().to_string(),
        message,
    };
    let der = unpem(&text, "PRIVATE KEY").ok_or_else(|| bad("no PRIVATE KEY block".into()))?;
    Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| bad(e.to_string()))
}

/// What to export.
pub struct Export<'a> {
    pub snapshot: &'a str,
    pub since: Option<&'a str>,
    pub out: &'a Path,
    pub key_file: Option<&'a Path>,
}

/// Writes the bundle; the manifest as written.
pub async fn export(store: &Store, e: Export<'_>) -> Result<Value, EvidenceError> {
    let key = load_key(e.key_file.ok_or(EvidenceError::NoKey)?)?;
    let snap = store.find_snapshot(e.snapshot).await?;
    let since = match e.since {
        Some(s) => Some(store.find_snapshot(s).await?),
        None => None,
    };
    if e.out.exists()
        && std::fs::read_dir(e.out)
            .map_err(io(e.out))?
            .next()
            .is_some()
    {
        return Err(EvidenceError::NotEmpty(e.out.display().to_string()));
    }
    crate::files::private_dir(e.out).map_err(io(e.out))?;
    let file = |name: &str| e.out.join(name);

    let snapshot_path = file("snapshot.ndjson");
    let mut w = std::io::BufWriter::new(
        crate::files::create_private(&snapshot_path).map_err(io(&snapshot_path))?,
    );
    store.export_snapshot(&snap, &mut w).await?;
    w.flush().map_err(io(&snapshot_path))?;
    drop(w);
    let csv_path = file("access.csv");
    let mut w =
        std::io::BufWriter::new(crate::files::create_private(&csv_path).map_err(io(&csv_path))?);
    crate::cli::write_access_csv(&snapshot_path, &mut w)?;
    w.flush().map_err(io(&csv_path))?;
    drop(w);
    let mut names = vec!["snapshot.ndjson", "access.csv"];
    if let Some(base) = &since {
        let base_path = e.out.join(".since.ndjson");
        let mut w = std::io::BufWriter::new(
            crate::files::create_private(&base_path).map_err(io(&base_path))?,
        );
        store.export_snapshot(base, &mut w).await?;
        w.flush().map_err(io(&base_path))?;
        drop(w);
        let diff_path = file("diff.ndjson");
        let mut w = std::io::BufWriter::new(
            crate::files::create_private(&diff_path).map_err(io(&diff_path))?,
        );
        let diffed =
            gitlab_connector::snapshot::diff::diff_files(&base_path, &snapshot_path, &mut w);
        let _ = std::fs::remove_file(&base_path);
        diffed.map_err(|err| EvidenceError::Diff {
            since: base.snapshot_id.clone(),
            message: err.to_string(),
        })?;
        w.flush().map_err(io(&diff_path))?;
        names.push("diff.ndjson");
    }
    let mut files = serde_json::Map::new();
    for n in &names {
        let (sha, bytes) = sha256_file(&file(n))?;
        files.insert(n.to_string(), json!({"sha256": sha, "bytes": bytes}));
    }
    let manifest = manifest(
        store,
        &snap,
        since.as_ref(),
        files,
        key.public_key().as_ref(),
    )
    .await?;
    let text = serde_json::to_string_pretty(&manifest).unwrap_or_default() + "\n";
    let sig = key.sign(text.as_bytes());
    for (name, content) in [
        (MANIFEST, text),
        (SIGNATURE, B64.encode(sig.as_ref()) + "\n"),
        (
            PUBLIC_KEY,
            pem("PUBLIC KEY", &spki(key.public_key().as_ref())),
        ),
    ] {
        let p = file(name);
        let mut f = crate::files::create_private(&p).map_err(io(&p))?;
        f.write_all(content.as_bytes()).map_err(io(&p))?;
    }
    Ok(manifest)
}

async fn manifest(
    store: &Store,
    snap: &SnapshotInfo,
    since: Option<&SnapshotInfo>,
    files: serde_json::Map<String, Value>,
    public: &[u8],
) -> Result<Value, EvidenceError> {
    let header: Value = serde_json::from_str(&snap.header).unwrap_or(Value::Null);
    let summary: Value = serde_json::from_str(&snap.summary).unwrap_or(Value::Null);
    let chain: Vec<Value> = store
        .list_snapshots(Some(&snap.connector))
        .await?
        .into_iter()
        .filter(|s| s.scope == snap.scope && s.seq <= snap.seq)
        .map(|s| {
            json!({"snapshot_id": s.snapshot_id, "sha256": s.sha256, "prev_sha256": s.prev_sha256,
                   "complete": s.complete, "finished_at": s.finished_at})
        })
        .collect();
    Ok(json!({
        "schema": MANIFEST_SCHEMA,
        "created_at": chrono::Utc::now(),
        "worker_version": env!("CARGO_PKG_VERSION"),
        "connector": snap.connector,
        "scope": snap.scope,
        "gitlab": {"base_url": header["base_url"], "instance": header["instance"]},
        "snapshot": {
            "snapshot_id": snap.snapshot_id,
            "sha256": snap.sha256,
            "prev_sha256": snap.prev_sha256,
            "complete": snap.complete,
            "started_at": snap.started_at,
            "finished_at": snap.finished_at,
            "counts": summary["counts"],
            "api_requests": summary["api_requests"],
            "too_many_requests": summary["too_many_requests"],
            "retries": summary["retries"],
            "read_errors": summary["errors"],
            "warnings": summary["warnings"],
        },
        "since": since.map(|s| json!({"snapshot_id": s.snapshot_id, "sha256": s.sha256})),
        "chain": chain,
        "files": files,
        "public_key_sha256": fingerprint(public),
    }))
}

/// What `verify` found: the problems (empty when everything holds) and the key's fingerprint.
pub struct Verified {
    pub problems: Vec<String>,
    pub key_sha256: Option<String>,
}

/// Checks a bundle offline: the signature over the manifest, every file's sha256, the snapshot
/// file's own hash and the hash chain.
pub fn verify(dir: &Path) -> Verified {
    let mut problems = Vec::new();
    let read = |name: &str| std::fs::read(dir.join(name));
    let (Ok(manifest_bytes), Ok(sig), Ok(key)) =
        (read(MANIFEST), read(SIGNATURE), read(PUBLIC_KEY))
    else {
        return Verified {
            problems: vec![format!(
                "{}: {MANIFEST}, {SIGNATURE} and {PUBLIC_KEY} must all be there",
                dir.display()
            )],
            key_sha256: None,
        };
    };
    let public = unpem(&String::from_utf8_lossy(&key), "PUBLIC KEY")
        .filter(|der| der.len() == 44 && der[..12] == SPKI_PREFIX)
        .map(|der| der[12..].to_vec());
    let Some(public) = public else {
        return Verified {
            problems: vec![format!("{PUBLIC_KEY}: not an Ed25519 public key")],
            key_sha256: None,
        };
    };
    let signature = B64
        .decode(String::from_utf8_lossy(&sig).trim())
        .unwrap_or_default();
    if UnparsedPublicKey::new(&ED25519, &public)
        .verify(&manifest_bytes, &signature)
        .is_err()
    {
        problems.push(format!(
            "{SIGNATURE}: the signature does not match {MANIFEST} and {PUBLIC_KEY}"
        ));
    }
    let manifest: Value = match serde_json::from_slice(&manifest_bytes) {
        Ok(v) => v,
        Err(e) => {
            problems.push(format!("{MANIFEST}: not JSON ({e})"));
            return Verified {
                problems,
                key_sha256: Some(fingerprint(&public)),
            };
        }
    };
    if manifest["public_key_sha256"] != fingerprint(&public) {
        problems.push(format!("{PUBLIC_KEY}: not the key the manifest names"));
    }
    for (name, want) in manifest["files"].as_object().into_iter().flatten() {
        // Only plain names: a manifest cannot point outside its folder.
        if name.contains('/') || name.starts_with('.') {
            problems.push(format!("{MANIFEST}: the file name {name:?} is not allowed"));
            continue;
        }
        match sha256_file(&dir.join(name)) {
            Ok((sha, _)) if Some(sha.as_str()) == want["sha256"].as_str() => {}
            Ok((sha, _)) => problems.push(format!(
                "{name}: its sha256 is {sha}, the manifest says {}",
                want["sha256"]
            )),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    let snapshot_sha = manifest["snapshot"]["sha256"].as_str().unwrap_or_default();
    match std::fs::File::open(dir.join("snapshot.ndjson"))
        .map_err(gitlab_connector::snapshot::ReadError::from)
        .and_then(|f| gitlab_connector::snapshot::verify(std::io::BufReader::new(f)))
    {
        Ok(s) if s.sha256 == snapshot_sha => {}
        Ok(s) => problems.push(format!(
            "snapshot.ndjson: its summary's sha256 is {}, the manifest's snapshot is {snapshot_sha}",
            s.sha256
        )),
        Err(e) => problems.push(format!("snapshot.ndjson: {e}")),
    }
    problems.extend(chain_problems(&manifest["chain"], snapshot_sha));
    Verified {
        problems,
        key_sha256: Some(fingerprint(&public)),
    }
}

/// Each snapshot's `prev_sha256` is the one before it; the last is the exported snapshot.
fn chain_problems(chain: &Value, snapshot_sha: &str) -> Vec<String> {
    let links = chain.as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for pair in links.windows(2) {
        if pair[1]["prev_sha256"] != pair[0]["sha256"] {
            problems.push(format!(
                "chain: snapshot {} does not follow {} (prev_sha256 {}, the one before is {})",
                pair[1]["snapshot_id"],
                pair[0]["snapshot_id"],
                pair[1]["prev_sha256"],
                pair[0]["sha256"]
            ));
        }
    }
    if links.last().and_then(|l| l["sha256"].as_str()) != Some(snapshot_sha) {
        problems.push("chain: it does not end with the exported snapshot".into());
    }
    problems
}
