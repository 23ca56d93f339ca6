//! Publishes committed outbox rows in order, each with its deterministic `Nats-Msg-Id`, and
//! marks them sent once JetStream acknowledged them. A crash between the two publishes the row
//! again and JetStream drops the duplicate, so nothing is lost and nothing is doubled.
//!
//! One publisher per lane (`OutboxLane`): results go out on their own while a sync's snapshot
//! is exported, diffed and uploaded on the events lane, so no result waits behind a sync.
//!
//! No row can block the others: a row NATS refuses for good (over the server's max payload,
//! refused by the stream, a snapshot no longer stored) is parked with its reason, a small
//! notice goes to the DLQ, `gitlab_worker_outbox_parked` counts it and `/readyz` reports it
//! until an operator dismisses it (`gitlab-worker outbox parked` / `outbox dismiss`). A row
//! that fails for a passing reason (NATS down, a timeout) is retried with a backoff, in order.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::jobs::context::SpoolFile;
use crate::jobs::events::{AccessEvents, Chunks, record_drift, write_diff};
use crate::store::{OutboxLane, OutboxMessage, SnapshotInfo, Store, StoreError};
use crate::subjects::{Subjects, msg_id};
use gitlab_connector::snapshot::ReadError;

/// A snapshot exported to a spool file during one flush: its id and the file.
type Exported = (String, SpoolFile);

#[derive(Clone)]
pub struct OutboxPublisher {
    pub store: Store,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    /// The rows this publisher sends (the store wakes it when it commits rows for them).
    pub lane: OutboxLane,
    /// Where snapshots are exported to while their object and events are published.
    pub spool_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("publish to {subject}: {message}")]
    Publish {
        subject: String,
        message: String,
        /// NATS refused the message itself: sending it again cannot succeed.
        permanent: bool,
    },
    #[error("spool file: {0}")]
    Spool(#[from] std::io::Error),
    #[error("the snapshot's access events: {0}")]
    Events(ReadError),
}

impl PublishError {
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            PublishError::Publish {
                permanent: true,
                ..
            } | PublishError::Store(StoreError::SnapshotNotFound(_) | StoreError::Pruned { .. })
                | PublishError::Events(ReadError::Invalid { .. })
        )
    }
}

/// Whether JetStream refused the message itself (too large for the server or the stream, or
/// another answer of the stream) rather than being unreachable for a while.
fn refused(kind: PublishErrorKind) -> bool {
    matches!(
        kind,
        PublishErrorKind::MaxPayloadExceeded | PublishErrorKind::Other
    )
}

/// Rows read from the outbox at a time.
const OUTBOX_BATCH: u64 = 200;

fn publish_error(subject: &str, kind: PublishErrorKind, e: &dyn std::fmt::Display) -> PublishError {
    PublishError::Publish {
        subject: subject.to_string(),
        message: e.to_string(),
        permanent: refused(kind),
    }
}

impl OutboxPublisher {
    /// Publishes every unsent row; returns how many were sent.
    pub async fn flush(&self) -> Result<usize, PublishError> {
        let mut sent = 0;
        // A sync's object upload and its access events follow each other and both need the
        // snapshot exported: it is exported once.
        let mut exported = None;
        loop {
            let rows = self.store.unsent_outbox(self.lane, OUTBOX_BATCH).await?;
            if rows.is_empty() {
                return Ok(sent);
            }
            // A short batch was all there was: rows committed meanwhile wake the publisher
            // again (`notify_one` keeps the wake-up), so no second look is needed now.
            let last_batch = (rows.len() as u64) < OUTBOX_BATCH;
            let mut rows = rows.into_iter().peekable();
            while let Some((id, message)) = rows.next() {
                if matches!(message, OutboxMessage::Publish { .. }) {
                    // A run of plain messages is sent together and acknowledged together.
                    let mut run = vec![(id, message)];
                    while let Some(next) =
                        rows.next_if(|(_, m)| matches!(m, OutboxMessage::Publish { .. }))
                    {
                        run.push(next);
                    }
                    sent += self.publish_run(run).await?;
                    continue;
                }
                match self.send(id, &message, &mut exported).await {
                    Ok(()) => {
                        self.store.mark_sent(&[id]).await?;
                        self.count_sent(1);
                        sent += 1;
                    }
                    Err(e) if e.is_permanent() => self.park(id, &message, &e).await?,
                    Err(e) => return Err(e),
                }
            }
            if last_batch {
                return Ok(sent);
            }
        }
    }

    /// Publishes a run of plain messages without waiting for each acknowledgement before the
    /// next (one round trip for the run, not one per message), then marks the acknowledged
    /// ones sent in one statement. A message NATS refuses for good is parked; a passing
    /// failure stops the flush, and the rows from it on are sent again later (their message
    /// ids make JetStream drop what it already has).
    async fn publish_run(&self, run: Vec<(i64, OutboxMessage)>) -> Result<usize, PublishError> {
        let mut acks = Vec::with_capacity(run.len());
        for (id, message) in &run {
            let OutboxMessage::Publish {
                msg_id,
                subject,
                payload,
            } = message
            else {
                continue;
            };
            let built = jetstream::message::PublishMessage::build()
                .payload(payload.clone().into())
                .message_id(msg_id);
            match self.js.send_publish(subject.clone(), built).await {
                Ok(ack) => acks.push((*id, message, subject, Ok(ack))),
                Err(e) => {
                    let failed = Err(publish_error(subject, e.kind(), &e));
                    acks.push((*id, message, subject, failed));
                    break;
                }
            }
        }
        let mut done = Vec::with_capacity(acks.len());
        let mut failed = None;
        for (id, message, subject, ack) in acks {
            let answer = match ack {
                Ok(ack) => ack
                    .await
                    .map(|_| ())
                    .map_err(|e| publish_error(subject, e.kind(), &e)),
                Err(e) => Err(e),
            };
            match answer {
                Ok(()) => done.push(id),
                Err(e) if e.is_permanent() => self.park(id, message, &e).await?,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.store.mark_sent(&done).await?;
        self.count_sent(done.len());
        match failed {
            Some(e) => Err(e),
            None => Ok(done.len()),
        }
    }

    fn count_sent(&self, n: usize) {
        metrics::counter!("gitlab_worker_outbox_published_total").increment(n as u64);
    }

    async fn park(
        &self,
        id: i64,
        message: &OutboxMessage,
        error: &PublishError,
    ) -> Result<(), PublishError> {
        let (subject, bytes) = match message {
            OutboxMessage::Publish {
                subject, payload, ..
            } => (subject.as_str(), payload.len()),
            OutboxMessage::SnapshotObject { object_name, .. } => (object_name.as_str(), 0),
            OutboxMessage::Object {
                object_name,
                payload,
                ..
            } => (object_name.as_str(), payload.len()),
            OutboxMessage::AccessEvents { subject, .. } => (subject.as_str(), 0),
        };
        let reason = error.to_string();
        tracing::error!(
            msg_id = message.msg_id(),
            subject,
            bytes,
            "an outbox message cannot be published and is parked: {reason}"
        );
        let notice = json!({
            "schema": "gitlab-connector.parked.v1",
            "msg_id": message.msg_id(),
            "subject": subject,
            "bytes": bytes,
            "reason": reason,
            "parked_at": chrono::Utc::now(),
        });
        self.store
            .park_outbox(
                id,
                &reason,
                OutboxMessage::Publish {
                    msg_id: msg_id::parked(message.msg_id()),
                    subject: self.subjects.dlq_for_outbox(subject),
                    payload: notice.to_string(),
                },
            )
            .await?;
        metrics::counter!("gitlab_worker_outbox_parked_total").increment(1);
        Ok(())
    }

    async fn send(
        &self,
        id: i64,
        m: &OutboxMessage,
        exported: &mut Option<Exported>,
    ) -> Result<(), PublishError> {
        match m {
            OutboxMessage::Publish {
                msg_id,
                subject,
                payload,
            } => self.publish(subject, msg_id, payload.clone()).await,
            OutboxMessage::SnapshotObject {
                object_name,
                snapshot_id,
                ..
            } => {
                let snap = self.store.find_snapshot(snapshot_id).await?;
                let file = self.export_once(&snap, exported).await?;
                let mut reader = tokio::fs::File::open(file).await?;
                self.put_object(object_name, &mut reader).await
            }
            OutboxMessage::Object {
                object_name,
                payload,
                ..
            } => self.put_object(object_name, &mut payload.as_bytes()).await,
            OutboxMessage::AccessEvents { subject, spec, .. } => {
                self.send_access_events(id, subject, spec, exported).await
            }
        }
    }

    async fn publish(
        &self,
        subject: &str,
        msg_id: &str,
        payload: String,
    ) -> Result<(), PublishError> {
        let err =
            |kind: PublishErrorKind, e: &dyn std::fmt::Display| publish_error(subject, kind, e);
        let ack = self
            .js
            .send_publish(
                subject.to_string(),
                jetstream::message::PublishMessage::build()
                    .payload(payload.into())
                    .message_id(msg_id),
            )
            .await
            .map_err(|e| err(e.kind(), &e))?;
        ack.await.map_err(|e| err(e.kind(), &e))?;
        Ok(())
    }

    /// A private file in the spool folder, removed when dropped; the name is new each time so
    /// that what a killed worker left behind is never in the way.
    fn spool(&self, what: &str) -> Result<(SpoolFile, BufWriter<std::fs::File>), PublishError> {
        crate::files::private_dir(&self.spool_dir)?;
        let file = SpoolFile::new(
            self.spool_dir
                .join(format!("outbox-{what}-{:016x}.ndjson", fastrand::u64(..))),
        );
        let out = BufWriter::new(crate::files::create_private(file.path())?);
        Ok((file, out))
    }

    /// A stored snapshot exported to a spool file (records streamed from the database).
    async fn export(&self, snap: &SnapshotInfo, what: &str) -> Result<SpoolFile, PublishError> {
        let (file, mut out) = self.spool(what)?;
        self.store.export_snapshot(snap, &mut out).await?;
        out.flush()?;
        Ok(file)
    }

    /// The live state after batch `upto` on snapshot `base_id` (the snapshot alone for `None`),
    /// exported to a spool file.
    async fn export_live(
        &self,
        base_id: &str,
        upto: Option<i64>,
    ) -> Result<SpoolFile, PublishError> {
        let info = self.store.find_snapshot(base_id).await?;
        let mut batches = match upto {
            Some(_) => {
                self.store
                    .batches_on(&info.connector, &info.scope, info.seq, None)
                    .await?
            }
            None => Vec::new(),
        };
        batches.retain(|b| Some(b.id) <= upto);
        let overrides = crate::store::Store::overrides(&batches)?;
        let (file, mut out) = self.spool("base")?;
        self.store.export_with(&info, &overrides, &mut out).await?;
        out.flush()?;
        Ok(file)
    }

    /// The export of `snap`, made now unless `exported` already holds it.
    async fn export_once<'e>(
        &self,
        snap: &SnapshotInfo,
        exported: &'e mut Option<Exported>,
    ) -> Result<&'e std::path::Path, PublishError> {
        if exported
            .as_ref()
            .is_none_or(|(id, _)| *id != snap.snapshot_id)
        {
            *exported = None;
            let file = self.export(snap, "snapshot").await?;
            *exported = Some((snap.snapshot_id.clone(), file));
        }
        Ok(exported.as_ref().map(|(_, f)| f.path()).expect("set above"))
    }

    /// Publishes a snapshot's access diff in chunks, built now from the stored snapshots: the
    /// diff is written to a spool file and read back one chunk at a time, and the row records
    /// each chunk JetStream acknowledged, so a publisher that stops halfway goes on where it
    /// stopped (and the deterministic message ids drop what it sent twice).
    async fn send_access_events(
        &self,
        id: i64,
        subject: &str,
        spec: &str,
        exported: &mut Option<Exported>,
    ) -> Result<(), PublishError> {
        let mut spec: AccessEvents =
            serde_json::from_str(spec).map_err(|e| PublishError::Publish {
                subject: subject.to_string(),
                message: format!("the outbox row does not describe access events: {e}"),
                permanent: true,
            })?;
        let snap = self.store.find_snapshot(&spec.snapshot_id).await?;
        let base = match &spec.base_snapshot_id {
            Some(b) => Some(self.export_live(b, spec.base_batch_id).await?),
            None => None,
        };
        let (diff, mut out) = self.spool("diff")?;
        let new = self.export_once(&snap, exported).await?;
        write_diff(new, base.as_ref().map(SpoolFile::path), &mut out)
            .map_err(PublishError::Events)?;
        if spec.cause == "reconcile"
            && spec.sent == 0
            && let Some(b) = &base
        {
            let drift = record_drift(b.path(), new).map_err(PublishError::Events)?;
            for (kind, n) in drift {
                tracing::info!(connector = %spec.connector, kind, n, "reconcile found drift");
                metrics::counter!("gitlab_worker_drift_total", "connector" => spec.connector.clone(), "kind" => kind).increment(n);
            }
        }
        out.flush()?;
        drop((base, out));
        let chunks = Chunks::count(diff.path()).map_err(PublishError::Events)?;
        let mut reader = Chunks::open(diff.path()).map_err(PublishError::Events)?;
        let mut chunk = 0;
        while let Some(lines) = reader.next_chunk().map_err(PublishError::Events)? {
            chunk += 1;
            if chunk <= spec.sent {
                continue;
            }
            let payload = spec.payload(chunk, chunks, &lines);
            self.publish(
                subject,
                &msg_id::access_event(&spec.snapshot_id, chunk),
                payload,
            )
            .await?;
            spec.sent = chunk;
            let progress = serde_json::to_string(&spec).map_err(std::io::Error::other)?;
            self.store.outbox_progress(id, &progress).await?;
        }
        Ok(())
    }

    /// Uploads to the snapshot bucket (the object store chunks it: no size limit applies).
    async fn put_object(
        &self,
        name: &str,
        data: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<(), PublishError> {
        let bucket = self.subjects.snapshot_bucket();
        let err = |e: &dyn std::fmt::Display| PublishError::Publish {
            subject: format!("object store {bucket}/{name}"),
            message: e.to_string(),
            permanent: false,
        };
        let store = self
            .js
            .get_object_store(&bucket)
            .await
            .map_err(|e| err(&e))?;
        store.put(name, data).await.map_err(|e| err(&e))?;
        Ok(())
    }

    /// Runs until `stop` is cancelled, then flushes once more.
    pub async fn run(self, stop: CancellationToken) {
        let mut failures = 0u32;
        let mut counted: Option<std::time::Instant> = None;
        loop {
            match self.flush().await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!("outbox: {e}; retrying");
                }
            }
            // Counted every few seconds, not on every wake-up (one per committed job), and by
            // one lane (the count is of every lane's parked rows).
            if self.lane == OutboxLane::Results
                && counted.is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
                && let Ok(n) = self.store.parked_count().await
            {
                metrics::gauge!("gitlab_worker_outbox_parked").set(n as f64);
                counted = Some(std::time::Instant::now());
            }
            // Backoff on failures (NATS down); otherwise wait for new rows, with a periodic
            // sweep in case a wake-up was missed.
            let wait = if failures > 0 {
                Duration::from_millis(200 * u64::from(failures.min(25)))
            } else {
                Duration::from_secs(2)
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.store.outbox_commits().committed(self.lane) => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
        if let Err(e) = self.flush().await {
            tracing::warn!(
                "outbox: final flush failed: {e}; the rows stay and are published on the next start"
            );
        }
    }
}
