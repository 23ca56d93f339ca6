//! The events a stored snapshot announces (docs/contract.md, "Events"):
//! `<p>.events.<connector>.snapshot`, its summary, and `<p>.events.<connector>.access`, the
//! access diff against the previous complete snapshot in chunks below NATS's max payload. The
//! full snapshot goes to the object store; both events name the object. The access events are
//! built when they are published, streaming from the stored snapshots (`AccessEvents`).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use gitlab_connector::model::{Record, Summary};
use gitlab_connector::snapshot::{self, ReadError, diff};
use gitlab_connector::sync::SnapshotMeta;
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

/// The snapshot's summary event, from the summary and identity the sync wrote into the file.
/// The file itself is verified against its hash when it is stored, in the same commit that
/// queues this event, so a damaged file is never announced.
pub fn snapshot_event(
    subjects: &Subjects,
    job_id: &str,
    meta: &SnapshotMeta,
    summary: &Summary,
    object_name: &str,
) -> OutboxMessage {
    let object = json!({"bucket": subjects.snapshot_bucket(), "name": object_name});
    // Read errors can number thousands (a partial sync of a large scope): the event names the
    // first of them and how many there are; the snapshot object's trailer has them all.
    let errors_total = summary.errors.len();
    let errors: Vec<_> = summary.errors.iter().take(MAX_EVENT_ERRORS).collect();
    OutboxMessage::Publish {
        msg_id: msg_id::snapshot_event(&meta.snapshot_id),
        subject: subjects.event(&meta.connector, "snapshot"),
        payload: json!({
            "schema": EVENT_SCHEMA,
            "type": "snapshot",
            "connector": meta.connector,
            "scope": meta.scope,
            "job_id": job_id,
            "snapshot_id": meta.snapshot_id,
            "started_at": meta.started_at,
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
    }
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
    /// The newest change batch on the base when the sync finished: the base is the live state
    /// up to it.
    #[serde(default)]
    pub base_batch_id: Option<i64>,
    /// `sync` or `reconcile`.
    #[serde(default = "sync_cause")]
    pub cause: String,
    pub object: Value,
    /// Chunks published so far (a publisher that stopped halfway goes on from here).
    #[serde(default)]
    pub sent: usize,
}

fn sync_cause() -> String {
    "sync".into()
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
            "cause": self.cause,
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
        with_lines(&meta, lines)
    }
}

/// An event envelope (a JSON object) with `"lines": [...]` added, the lines spliced in as they
/// are (already JSON: not parsed and written again).
fn with_lines(meta: &str, lines: &[String]) -> String {
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

/// Writes the access diff of the snapshot at `path` against `base` (every access is new when
/// there is none) as NDJSON lines: header, changes, summary. Both are read as streams.
/// The base is a live-state export (checked when it was exported, then laid over with change
/// batches): its hash is not checked again.
pub fn write_diff(path: &Path, base: Option<&Path>, out: &mut impl Write) -> Result<(), ReadError> {
    let invalid = |e: &dyn std::fmt::Display| ReadError::Invalid {
        line: 0,
        message: e.to_string(),
    };
    if let Some(b) = base {
        diff::diff_live_files(b, path, out).map_err(|e| invalid(&e))?;
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

/// The records that differ between a live-state export and a full snapshot, by record type
/// (access records left out: they follow from the others): what a reconcile counts as drift.
pub fn record_drift(
    live: &Path,
    full: &Path,
) -> Result<std::collections::BTreeMap<&'static str, u64>, ReadError> {
    fn body(
        p: &Path,
    ) -> Result<impl Iterator<Item = Result<(String, Record, String), ReadError>>, ReadError> {
        Ok(open(p)?.lines().filter_map(|l| {
            let l = match l {
                Ok(l) => l,
                Err(e) => return Some(Err(e.into())),
            };
            if l.is_empty() || l.starts_with("{\"type\":\"access\"") {
                return None;
            }
            match serde_json::from_str::<Record>(&l) {
                Ok(r) => r.order_key().map(|k| Ok((k, r, l))),
                Err(e) => Some(Err(ReadError::Invalid {
                    line: 0,
                    message: e.to_string(),
                })),
            }
        }))
    }
    let mut counts = std::collections::BTreeMap::new();
    let mut a = body(live)?.peekable();
    let mut b = body(full)?.peekable();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some(Err(_)), _) => return Err(a.next().expect("peeked").expect_err("an error")),
            (_, Some(Err(_))) => return Err(b.next().expect("peeked").expect_err("an error")),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(Ok(x)), Some(Ok(y))) => x.0.cmp(&y.0),
        };
        let kind = match order {
            std::cmp::Ordering::Less => a.next().and_then(Result::ok).map(|x| x.1.type_name()),
            std::cmp::Ordering::Greater => b.next().and_then(Result::ok).map(|x| x.1.type_name()),
            std::cmp::Ordering::Equal => {
                let (x, y) = (a.next(), b.next());
                match (x, y) {
                    (Some(Ok(x)), Some(Ok(y))) if x.2 != y.2 => Some(x.1.type_name()),
                    _ => None,
                }
            }
        };
        if let Some(k) = kind {
            *counts.entry(k).or_default() += 1;
        }
    }
    Ok(counts)
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

/// The access events of a live change batch (`cause`: `gitlab_event`, or `reconcile` for what
/// the audit-event poll found): its access changes in chunks, each naming the batch, its chained
/// hash and the hook deliveries that led to it.
pub fn live_access_events(
    subjects: &Subjects,
    batch: &crate::store::ChangeBatch,
    base_snapshot_id: &str,
    changes: &[diff::DiffRecord],
) -> Vec<OutboxMessage> {
    let lines: Vec<String> = changes
        .iter()
        .filter_map(|d| serde_json::to_string(&diff::DiffLine::AccessChange(d.clone())).ok())
        .collect();
    let mut chunks: Vec<Vec<String>> = Vec::new();
    let mut size = 0usize;
    for l in lines {
        if chunks.is_empty()
            || (size + l.len() > CHUNK_BYTES && !chunks.last().is_none_or(Vec::is_empty))
        {
            chunks.push(Vec::new());
            size = 0;
        }
        size += l.len() + 1;
        chunks.last_mut().expect("pushed").push(l);
    }
    let n = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, lines)| {
            let payload = json!({
                "schema": EVENT_SCHEMA,
                "type": "access",
                "cause": batch.cause,
                "connector": batch.connector,
                "scope": batch.scope,
                "snapshot_id": base_snapshot_id,
                "batch_id": batch.id,
                "sha256": batch.sha256,
                "prev_sha256": batch.prev_sha256,
                "applied_at": batch.applied_at,
                "source_events": batch.source_events,
                "chunk": i + 1,
                "chunks": n,
            });
            OutboxMessage::Publish {
                msg_id: msg_id::live_access(&batch.sha256, i + 1),
                subject: subjects.event(&batch.connector, "access"),
                payload: with_lines(&payload.to_string(), &lines),
            }
        })
        .collect()
}
