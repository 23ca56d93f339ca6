//! Publishes committed outbox rows in order, each with its deterministic `Nats-Msg-Id`, and
//! marks them sent once JetStream acknowledged them. A crash between the two publishes the row
//! again and JetStream drops the duplicate, so nothing is lost and nothing is doubled.
//!
//! No row can block the others: a row NATS refuses for good (over the server's max payload,
//! refused by the stream, a snapshot no longer stored) is parked with its reason, a small
//! notice goes to the DLQ, `gitlab_worker_outbox_parked` counts it and `/readyz` reports it
//! until an operator dismisses it (`gitlab-worker outbox parked` / `outbox dismiss`). A row
//! that fails for a passing reason (NATS down, a timeout) is retried with a backoff, in order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishErrorKind;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{OutboxMessage, Store, StoreError};
use crate::subjects::{Subjects, msg_id};

#[derive(Clone)]
pub struct OutboxPublisher {
    pub store: Store,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    /// Woken when rows were committed.
    pub wake: Arc<Notify>,
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
}

impl PublishError {
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            PublishError::Publish {
                permanent: true,
                ..
            } | PublishError::Store(StoreError::SnapshotNotFound(_))
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

impl OutboxPublisher {
    /// Publishes every unsent row; returns how many were sent.
    pub async fn flush(&self) -> Result<usize, PublishError> {
        let mut sent = 0;
        loop {
            let rows = self.store.unsent_outbox(100).await?;
            if rows.is_empty() {
                return Ok(sent);
            }
            for (id, message) in rows {
                match self.send(&message).await {
                    Ok(()) => {
                        self.store.mark_sent(id).await?;
                        metrics::counter!("gitlab_worker_outbox_published_total").increment(1);
                        sent += 1;
                    }
                    Err(e) if e.is_permanent() => self.park(id, &message, &e).await?,
                    Err(e) => return Err(e),
                }
            }
        }
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

    async fn send(&self, m: &OutboxMessage) -> Result<(), PublishError> {
        match m {
            OutboxMessage::Publish {
                msg_id,
                subject,
                payload,
            } => {
                let err =
                    |kind: PublishErrorKind, e: &dyn std::fmt::Display| PublishError::Publish {
                        subject: subject.clone(),
                        message: e.to_string(),
                        permanent: refused(kind),
                    };
                let ack = self
                    .js
                    .send_publish(
                        subject.clone(),
                        jetstream::message::PublishMessage::build()
                            .payload(payload.clone().into())
                            .message_id(msg_id),
                    )
                    .await
                    .map_err(|e| err(e.kind(), &e))?;
                ack.await.map_err(|e| err(e.kind(), &e))?;
            }
            OutboxMessage::SnapshotObject {
                object_name,
                snapshot_id,
                ..
            } => {
                let snap = self.store.find_snapshot(snapshot_id).await?;
                let mut bytes = Vec::new();
                self.store.export_snapshot(&snap, &mut bytes).await?;
                self.put_object(object_name, &bytes).await?;
            }
            OutboxMessage::Object {
                object_name,
                payload,
                ..
            } => self.put_object(object_name, payload.as_bytes()).await?,
        }
        Ok(())
    }

    /// Uploads to the snapshot bucket (the object store chunks it: no size limit applies).
    async fn put_object(&self, name: &str, mut bytes: &[u8]) -> Result<(), PublishError> {
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
        store.put(name, &mut bytes).await.map_err(|e| err(&e))?;
        Ok(())
    }

    /// Runs until `stop` is cancelled, then flushes once more.
    pub async fn run(self, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            match self.flush().await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!("outbox: {e}; retrying");
                }
            }
            if let Ok(n) = self.store.parked_count().await {
                metrics::gauge!("gitlab_worker_outbox_parked").set(n as f64);
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
                _ = self.wake.notified() => {}
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
