//! Publishes committed outbox rows in order, each with its deterministic `Nats-Msg-Id`, and
//! marks them sent once JetStream acknowledged them. A crash between the two publishes the row
//! again and JetStream drops the duplicate, so nothing is lost and nothing is doubled.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store::{OutboxMessage, Store};
use crate::subjects::Subjects;

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
    Store(#[from] crate::store::StoreError),
    #[error("publish to {subject}: {message}")]
    Publish { subject: String, message: String },
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
                self.send(&message).await?;
                self.store.mark_sent(id).await?;
                metrics::counter!("gitlab_worker_outbox_published_total").increment(1);
                sent += 1;
            }
        }
    }

    async fn send(&self, m: &OutboxMessage) -> Result<(), PublishError> {
        match m {
            OutboxMessage::Publish {
                msg_id,
                subject,
                payload,
            } => {
                let err = |e: &dyn std::fmt::Display| PublishError::Publish {
                    subject: subject.clone(),
                    message: e.to_string(),
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
                    .map_err(|e| err(&e))?;
                ack.await.map_err(|e| err(&e))?;
            }
            OutboxMessage::SnapshotObject {
                object_name,
                snapshot_id,
                ..
            } => {
                let bucket = self.subjects.snapshot_bucket();
                let err = |e: &dyn std::fmt::Display| PublishError::Publish {
                    subject: format!("object store {bucket}/{object_name}"),
                    message: e.to_string(),
                };
                let snap = self.store.find_snapshot(snapshot_id).await?;
                let mut bytes = Vec::new();
                self.store.export_snapshot(&snap, &mut bytes).await?;
                let store = self
                    .js
                    .get_object_store(&bucket)
                    .await
                    .map_err(|e| err(&e))?;
                store
                    .put(object_name.as_str(), &mut bytes.as_slice())
                    .await
                    .map_err(|e| err(&e))?;
            }
        }
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
