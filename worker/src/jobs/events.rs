//! The events a stored snapshot announces (docs/contract.md, "Events"):
//! `<p>.events.<connector>.snapshot`, its summary, and `<p>.events.<connector>.access`, the
//! access diff against the previous complete snapshot in chunks below NATS's max payload. The
//! full snapshot goes to the object store; both events name the object. The access events are
//! built when they are published, streaming from the stored snapshots (`AccessEvents`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use gitlab_connector::model::Record;
use gitlab_connector::snapshot::{self, ReadError, diff};
use serde::{Deserialize, Serialize};
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

/// The snapshot's summary event, built from its file.
pub fn snapshot_event(
    subjects: &Subjects,
    job_id: &str,
    path: &Path,
    object_name: &str,
) -> Result<OutboxMessage, ReadError> {
    let summary = snapshot::verify(open(path)?)?;
    let h = header(path)?;
    let object = json!({"bucket": subjects.snapshot_bucket(), "name": object_name});
    // Read errors can number thousands (a partial sync of a large scope): the event names the
    // first of them and how many there are; the snapshot object's trailer has them all.
    let errors_total = summary.errors.len();
    let errors: Vec<_> = summary.errors.iter().take(MAX_EVENT_ERRORS).collect();
    Ok(OutboxMessage::Publish {
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
    })
}

/// What the access events of one stored snapshot are built from when they are published: the
/// outbox keeps this small description, not the diff, so a sync of a million memberships holds
/// no copy of its diff in memory or in the outbox (docs/worker.md, "Bounded messages").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEvents {
    pub job_id: String,
    pub connector: String,
    pub scope: String,
    pub snapshot_id: String,
    /// The previous complete snapshot of the connector and scope, diffed against.
    pub base_snapshot_id: Option<String>,
    pub object: Value,
    /// Chunks published so far (a publisher that stopped halfway goes on from here).
    #[serde(default)]
    pub sent: usize,
}

impl AccessEvents {
    pub fn message(&self, subjects: &Subjects) -> OutboxMessage {
        OutboxMessage::AccessEvents {
            msg_id: msg_id::access_events(&self.snapshot_id),
            subject: subjects.event(&self.connector, "access"),
            spec: serde_json::to_string(self).unwrap_or_default(),
        }
    }

    /// The envelope of chunk `chunk` of `chunks`, with the diff lines spliced in (they are
    /// already JSON: not parsed and written again).
    pub fn payload(&self, chunk: usize, chunks: usize, lines: &[String]) -> String {
        let meta = json!({
            "schema": EVENT_SCHEMA,
            "type": "access",
            "connector": self.connector,
            "scope": self.scope,
            "job_id": self.job_id,
            "snapshot_id": self.snapshot_id,
            "from_snapshot_id": self.base_snapshot_id,
            "chunk": chunk,
            "chunks": chunks,
            "object": self.object,
        })
        .to_string();
        let size: usize = lines.iter().map(|l| l.len() + 1).sum();
        let mut payload = String::with_capacity(meta.len() + size + 16);
        payload.push_str(&meta[..meta.len() - 1]);
        payload.push_str(",\"lines\":[");
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                payload.push(',');
            }
            payload.push_str(l);
        }
        payload.push_str("]}");
        payload
    }
}

/// Writes the access diff of the snapshot at `path` against `base` (every access is new when
/// there is none) as NDJSON lines: header, changes, summary. Both are read as streams.
pub fn write_diff(path: &Path, base: Option<&Path>, out: &mut impl Write) -> Result<(), ReadError> {
    let invalid = |e: &dyn std::fmt::Display| ReadError::Invalid {
        line: 0,
        message: e.to_string(),
    };
    if let Some(b) = base {
        diff::diff_files(b, path, out).map_err(|e| invalid(&e))?;
        return Ok(());
    }
    let summary = snapshot::verify(open(path)?)?;
    let h = header(path)?;
    let mut line = |l: &diff::DiffLine| -> Result<(), std::io::Error> {
        serde_json::to_writer(&mut *out, l).map_err(std::io::Error::other)?;
        out.write_all(b"\n")
    };
    line(&diff::DiffLine::Diff(diff::DiffHeader {
        from_snapshot_id: None,
        to_snapshot_id: h.snapshot_id.clone(),
        from_sha256: None,
        to_sha256: summary.sha256.clone(),
        connector: h.connector.clone(),
        scope: h.scope.clone(),
        removals_reported: false,
        reason: Some("no earlier complete snapshot of this connector and scope".into()),
    }))?;
    let counts = diff::diff(std::iter::empty(), access(path)?, false, |r| {
        line(&diff::DiffLine::AccessChange(r))
    })?;
    line(&diff::DiffLine::DiffSummary(counts))?;
    out.flush()?;
    Ok(())
}

/// The lines of a diff file in chunks of at most `CHUNK_BYTES` (a longer line is a chunk of
/// its own), read one chunk at a time.
pub struct Chunks {
    lines: std::io::Lines<BufReader<std::fs::File>>,
    carry: Option<String>,
}

impl Chunks {
    pub fn open(path: &Path) -> Result<Self, ReadError> {
        Ok(Self {
            lines: open(path)?.lines(),
            carry: None,
        })
    }

    /// How many chunks the file makes.
    pub fn count(path: &Path) -> Result<usize, ReadError> {
        let mut chunks = Self::open(path)?;
        let mut n = 0;
        while chunks.next_chunk()?.is_some() {
            n += 1;
        }
        Ok(n.max(1))
    }

    pub fn next_chunk(&mut self) -> Result<Option<Vec<String>>, ReadError> {
        let mut chunk: Vec<String> = Vec::new();
        let mut size = 0usize;
        loop {
            let line = match self.carry.take() {
                Some(l) => l,
                None => match self.lines.next() {
                    Some(l) => l?,
                    None => break,
                },
            };
            if line.is_empty() {
                continue;
            }
            if size + line.len() > CHUNK_BYTES && !chunk.is_empty() {
                self.carry = Some(line);
                break;
            }
            size += line.len() + 1;
            chunk.push(line);
        }
        Ok((!chunk.is_empty()).then_some(chunk))
    }
}
