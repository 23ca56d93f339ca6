//! The events a stored snapshot announces (docs/contract.md, "Events"):
//! `<p>.events.<connector>.snapshot`, its summary, and `<p>.events.<connector>.access`, the
//! access diff against the previous complete snapshot in chunks below NATS's max payload. The
//! full snapshot goes to the object store; both events name the object.

use std::io::BufReader;
use std::path::Path;

use gitlab_connector::model::Record;
use gitlab_connector::snapshot::{self, ReadError, diff};
use serde_json::{Value, json};

use crate::store::OutboxMessage;
use crate::subjects::{Subjects, msg_id};

pub const EVENT_SCHEMA: &str = "gitlab-connector.event.v1";

/// Payload bytes of diff lines per access event: far below NATS's default 1 MiB max payload,
/// leaving room for the envelope and headers.
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Read errors named in a snapshot event (all of them are in the snapshot object).
pub const MAX_EVENT_ERRORS: usize = 100;

fn open(p: &Path) -> Result<BufReader<std::fs::File>, ReadError> {
    Ok(BufReader::new(std::fs::File::open(p)?))
}

fn header(p: &Path) -> Result<gitlab_connector::model::SnapshotHeader, ReadError> {
    match snapshot::records(open(p)?).next() {
        Some(Ok(Record::Snapshot(h))) => Ok(h),
        Some(Err(e)) => Err(e),
        _ => Err(ReadError::Invalid {
            line: 1,
            message: "not a snapshot header".into(),
        }),
    }
}

fn access(
    p: &Path,
) -> Result<impl Iterator<Item = gitlab_connector::model::AccessRecord>, ReadError> {
    Ok(snapshot::records(open(p)?).filter_map(|r| match r {
        Ok(Record::Access(a)) => Some(a),
        _ => None,
    }))
}

/// Builds the outbox messages for the snapshot at `path`, diffed against `base` (the previous
/// complete snapshot of the same connector and scope, if any).
pub fn build(
    subjects: &Subjects,
    job_id: &str,
    path: &Path,
    base: Option<&Path>,
    object_name: &str,
) -> Result<Vec<OutboxMessage>, ReadError> {
    let summary = snapshot::verify(open(path)?)?;
    let h = header(path)?;
    let object = json!({"bucket": subjects.snapshot_bucket(), "name": object_name});
    // Read errors can number thousands (a partial sync of a large scope): the event names the
    // first of them and how many there are; the snapshot object's trailer has them all.
    let errors_total = summary.errors.len();
    let errors: Vec<_> = summary.errors.iter().take(MAX_EVENT_ERRORS).collect();
    let mut out = vec![OutboxMessage::Publish {
        msg_id: msg_id::snapshot_event(&h.snapshot_id),
        subject: subjects.event(&h.connector, "snapshot"),
        payload: json!({
            "schema": EVENT_SCHEMA,
            "type": "snapshot",
            "connector": h.connector,
            "scope": h.scope,
            "job_id": job_id,
            "snapshot_id": h.snapshot_id,
            "started_at": h.started_at,
            "finished_at": summary.finished_at,
            "complete": summary.complete,
            "counts": summary.counts,
            "errors": errors,
            "errors_total": errors_total,
            "sha256": summary.sha256,
            "prev_sha256": summary.prev_sha256,
            "object": object,
        })
        .to_string(),
    }];

    // The diff as NDJSON lines: header, changes, summary.
    let mut lines: Vec<String> = Vec::new();
    let from_id: Value = match base {
        Some(b) => {
            let mut buf = Vec::new();
            diff::diff_files(b, path, &mut buf).map_err(|e| ReadError::Invalid {
                line: 0,
                message: e.to_string(),
            })?;
            lines.extend(
                String::from_utf8_lossy(&buf)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
            Value::String(header(b)?.snapshot_id)
        }
        None => {
            // No earlier complete snapshot: every access is new.
            let header = diff::DiffLine::Diff(diff::DiffHeader {
                from_snapshot_id: None,
                to_snapshot_id: h.snapshot_id.clone(),
                from_sha256: None,
                to_sha256: summary.sha256.clone(),
                connector: h.connector.clone(),
                scope: h.scope.clone(),
                removals_reported: false,
                reason: Some("no earlier complete snapshot of this connector and scope".into()),
            });
            lines.push(serde_json::to_string(&header).map_err(std::io::Error::other)?);
            let counts = diff::diff(std::iter::empty(), access(path)?, false, |r| {
                lines.push(
                    serde_json::to_string(&diff::DiffLine::AccessChange(r))
                        .map_err(std::io::Error::other)?,
                );
                Ok::<_, std::io::Error>(())
            })?;
            lines.push(
                serde_json::to_string(&diff::DiffLine::DiffSummary(counts))
                    .map_err(std::io::Error::other)?,
            );
            Value::Null
        }
    };
    let mut chunks: Vec<Vec<&str>> = vec![Vec::new()];
    let mut size = 0usize;
    for l in &lines {
        if size + l.len() > CHUNK_BYTES && !chunks.last().is_some_and(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += l.len() + 1;
        chunks.last_mut().expect("one chunk at least").push(l);
    }
    let n = chunks.len();
    for (i, chunk) in chunks.into_iter().enumerate() {
        let meta = json!({
            "schema": EVENT_SCHEMA,
            "type": "access",
            "connector": h.connector,
            "scope": h.scope,
            "job_id": job_id,
            "snapshot_id": h.snapshot_id,
            "from_snapshot_id": from_id,
            "chunk": i + 1,
            "chunks": n,
            "object": object,
        })
        .to_string();
        // The diff lines are already JSON: spliced in, not parsed and written again.
        let mut payload = String::with_capacity(meta.len() + CHUNK_BYTES + 16);
        payload.push_str(&meta[..meta.len() - 1]);
        payload.push_str(",\"lines\":[");
        payload.push_str(&chunk.join(","));
        payload.push_str("]}");
        out.push(OutboxMessage::Publish {
            msg_id: msg_id::access_event(&h.snapshot_id, i + 1),
            subject: subjects.event(&h.connector, "access"),
            payload,
        });
    }
    Ok(out)
}
