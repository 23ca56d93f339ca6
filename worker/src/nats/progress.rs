//! Progress acks (`+WPI`) every third of `ack_wait`, so a long job is not redelivered while it
//! runs. The ticker stops when its guard is dropped, however the job ends, so a job can never be
//! held in flight forever.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{AckKind, message::Acker};
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

pub struct ProgressTicker {
    stop: DropGuard,
    task: JoinHandle<()>,
}

impl ProgressTicker {
    pub fn start(acker: Arc<Acker>, ack_wait: Duration) -> Self {
        let stop = CancellationToken::new();
        let period = (ack_wait / 3).max(Duration::from_millis(200));
        let cancelled = stop.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tokio::select! {
                    _ = cancelled.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = acker.ack_with(AckKind::Progress).await {
                            tracing::debug!("progress ack: {e}");
                        }
                    }
                }
            }
        });
        Self {
            stop: stop.drop_guard(),
            task,
        }
    }

    /// Stops the ticker and waits until no progress ack can follow.
    pub async fn stop(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}
