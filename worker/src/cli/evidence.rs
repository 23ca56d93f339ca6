//! `gitlab-worker evidence keygen|export|verify` (docs/evidence.md).

use super::{EvidenceCommand, exit, fail, settings_and_store};
use crate::evidence;

pub async fn run(config: Option<&std::path::Path>, command: EvidenceCommand) -> u8 {
    match command {
        EvidenceCommand::Keygen { out } => match evidence::keygen(&out) {
            Ok(fp) => {
                eprintln!(
                    "signing key written to {} (mode 0600); public key sha256 {fp}",
                    out.display()
                );
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::FAILURE
            }
        },
        EvidenceCommand::Export {
            snapshot,
            out,
            since,
        } => {
            let (settings, store) = match settings_and_store(config, false).await {
                Ok(x) => x,
                Err(code) => return code,
            };
            let done = evidence::export(
                &store,
                evidence::Export {
                    snapshot: &snapshot,
                    since: since.as_deref(),
                    out: &out,
                    key_file: settings.evidence_signing_key_file.as_deref(),
                },
            )
            .await;
            match done {
                Ok(m) => {
                    eprintln!(
                        "evidence for snapshot {} written to {}; signed by key sha256 {}",
                        m["snapshot"]["snapshot_id"].as_str().unwrap_or_default(),
                        out.display(),
                        m["public_key_sha256"].as_str().unwrap_or_default()
                    );
                    exit::OK
                }
                Err(evidence::EvidenceError::NoKey) => {
                    eprintln!("error: {}", evidence::EvidenceError::NoKey);
                    exit::USAGE
                }
                Err(evidence::EvidenceError::Store(e)) => fail(&e.into()),
                Err(e) => {
                    eprintln!("error: {e}");
                    exit::FAILURE
                }
            }
        }
        EvidenceCommand::Verify { dir } => {
            let v = evidence::verify(&dir);
            if v.problems.is_empty() {
                eprintln!(
                    "{}: signature, file hashes and hash chain hold; signed by key sha256 {}",
                    dir.display(),
                    v.key_sha256.unwrap_or_default()
                );
                exit::OK
            } else {
                for p in &v.problems {
                    println!("{p}");
                }
                eprintln!(
                    "{}: {} problem(s); the evidence does not hold",
                    dir.display(),
                    v.problems.len()
                );
                exit::FAILURE
            }
        }
    }
}
