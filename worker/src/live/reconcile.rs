//! `RECONCILE_INTERVAL_SECONDS`: each connector with a webhook secret gets a `reconcile` job at
//! every multiple of the interval (Unix time). Every worker publishes it, with the same job id
//! (`reconcile-<connector>-<slot>`), which is also its `Nats-Msg-Id`: JetStream keeps one, and
//! the job store answers a repeat from the first, so one worker runs it.

use std::time::Duration;

use async_nats::jetstream;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::subjects::Subjects;

/// The job of interval slot `slot` (seconds since the epoch ÷ interval).
pub fn job(connector: &str, slot: u64) -> (String, String) {
    let job_id = format!("reconcile-{connector}-{slot}");
    let envelope = json!({
        "schema": crate::jobs::envelope::JOB_SCHEMA,
        "job_id": job_id,
        "connector": connector,
        "kind": "reconcile",
        "params": {},
        "requested_by": "gitlab-worker",
        "reason": "RECONCILE_INTERVAL_SECONDS",
    });
    (job_id, envelope.to_string())
}

/// Publishes the reconcile jobs of `connectors` at every interval boundary until `stop`.
pub async fn schedule(
    js: jetstream::Context,
    subjects: Subjects,
    connectors: Vec<String>,
    interval: Duration,
    stop: CancellationToken,
) {
    let every = interval.as_secs().max(1);
    loop {
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let slot = now / every + 1;
        let wait = Duration::from_secs(slot * every - now);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        for c in &connectors {
            let (job_id, envelope) = job(c, slot);
            let sent = js
                .send_publish(
                    subjects.job(c, "reconcile"),
                    jetstream::message::PublishMessage::build()
                        .payload(envelope.into())
                        .message_id(&job_id),
                )
                .await;
            let acked = match sent {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match acked {
                Ok(()) => tracing::info!(connector = %c, job_id, "reconcile queued"),
                Err(e) => {
                    tracing::warn!(connector = %c, "could not queue the reconcile job: {e}; the next interval tries again")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_has_one_job_id_that_is_a_valid_job() {
        let (id, envelope) = job("default", 42);
        assert_eq!(id, "reconcile-default-42");
        assert_eq!(job("default", 42).0, id, "every worker names it alike");
        let v: serde_json::Value = serde_json::from_str(&envelope).unwrap();
        assert_eq!(v["kind"], "reconcile");
        crate::ids::JobId::parse(&id).unwrap();
    }
}
