//! The ack policy, in one place: what a handled delivery becomes on the wire ([`decide`]), and
//! carrying it out ([`apply`]: the DLQ copy with its headers, the NAK, the TERM; [`hand_back`]
//! at the shutdown deadline).
//!
//! | handler outcome | action |
//! |---|---|
//! | done (succeeded, noop, repeated job id) | `double_ack` after the state is committed |
//! | done, failed or rejected | copy to the DLQ (publish acknowledged), then `Term` |
//! | transient failure, deliveries left | `Nak` with the handler's backoff delay |
//! | the store failed (nothing decided), or the handler panicked | `Nak` after a short delay; on the last delivery, DLQ + `Term` |
//! | shutdown deadline passed | `Nak` without delay, so another instance takes it at once |

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, message::Acker};
use bytes::Bytes;

use crate::jobs::{Disposition, Handled, HandlerError, parse_job};
use crate::store::Store;
use crate::subjects::{Subjects, UNKNOWN_CONNECTOR, UNKNOWN_KIND, msg_id};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckAction {
    Ack,
    Nak(Option<Duration>),
    DeadLetter { code: String, message: String },
}

/// How long to wait before a delivery whose store write failed is tried again.
pub const STORE_RETRY: Duration = Duration::from_secs(5);

pub fn decide(outcome: &Result<Handled, HandlerError>, last_attempt: bool) -> AckAction {
    match outcome {
        Ok(h) => match &h.disposition {
            Disposition::Done { dead_letter: false } => AckAction::Ack,
            Disposition::Done { dead_letter: true } => AckAction::DeadLetter {
                code: h
                    .error
                    .as_ref()
                    .map_or_else(|| "failed".into(), |e| e.code.clone()),
                message: h
                    .error
                    .as_ref()
                    .map_or_else(String::new, |e| e.message.clone()),
            },
            // The handler already turns a transient failure on the last attempt into a result.
            Disposition::Retry { delay } => AckAction::Nak(Some(*delay)),
        },
        Err(e) if last_attempt => AckAction::DeadLetter {
            code: "internal".into(),
            message: format!("{e}; the job was not executed"),
        },
        Err(_) => AckAction::Nak(Some(STORE_RETRY)),
    }
}

/// The delivery being acknowledged, as the DLQ copy describes it.
pub struct DeliveryFacts<'a> {
    pub subject: &'a str,
    pub stream_seq: u64,
    pub delivered: i64,
    pub payload: &'a Bytes,
    pub original_msg_id: Option<&'a str>,
}

/// Carries out `action` for a delivery.
pub async fn apply(
    js: &jetstream::Context,
    subjects: &Subjects,
    acker: &Acker,
    action: &AckAction,
    outcome: &Result<Handled, HandlerError>,
    facts: &DeliveryFacts<'_>,
) {
    let acked = match action {
        AckAction::Ack => acker.double_ack().await,
        AckAction::Nak(delay) => acker.ack_with(AckKind::Nak(*delay)).await,
        AckAction::DeadLetter { code, message } => {
            let (connector, kind) = match outcome {
                Ok(h) => (h.connector.as_str(), h.kind.as_str()),
                Err(_) => (UNKNOWN_CONNECTOR, UNKNOWN_KIND),
            };
            match dead_letter(js, subjects, connector, kind, code, message, facts).await {
                Ok(()) => acker.double_ack_with(AckKind::Term).await,
                Err(e) => {
                    tracing::warn!(
                        "could not copy the job to the DLQ ({e}); it is handed back and tried again"
                    );
                    acker.ack_with(AckKind::Nak(Some(STORE_RETRY))).await
                }
            }
        }
    };
    if let Err(e) = acked {
        // The job's state is committed; a redelivery finds it and answers from the store.
        tracing::warn!(
            ?action,
            "the ack did not reach NATS ({e}); a redelivery will be answered from the stored result"
        );
    }
}

/// Copies the job to `<p>.dlq.<connector>.<kind>` with the error in its headers; the copy must
/// be safely stored (publish acknowledged) before the job leaves the work queue.
async fn dead_letter(
    js: &jetstream::Context,
    subjects: &Subjects,
    connector: &str,
    kind: &str,
    code: &str,
    message: &str,
    facts: &DeliveryFacts<'_>,
) -> Result<(), String> {
    let dlq_subject = subjects.dlq(connector, kind);
    // A header is no place for a long text: the result on the results stream has it whole.
    let mut header = message.replace(['\r', '\n'], " ");
    if header.len() > 1024 {
        let mut cut = 1024;
        while !header.is_char_boundary(cut) {
            cut -= 1;
        }
        header.truncate(cut);
        header.push('…');
    }
    let mut publish = jetstream::message::PublishMessage::build()
        .payload(facts.payload.clone())
        .message_id(msg_id::dlq(facts.stream_seq))
        .header("Gitlab-Connector-Error-Code", code)
        .header("Gitlab-Connector-Error", header.as_str())
        .header("Gitlab-Connector-Original-Subject", facts.subject)
        .header(
            "Gitlab-Connector-Stream-Seq",
            facts.stream_seq.to_string().as_str(),
        )
        .header(
            "Gitlab-Connector-Deliveries",
            facts.delivered.to_string().as_str(),
        );
    if let Some(id) = facts.original_msg_id {
        publish = publish.header("Gitlab-Connector-Original-Msg-Id", id);
    }
    let ack = js
        .send_publish(dlq_subject.clone(), publish)
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map_err(|e| e.to_string())?;
    metrics::counter!("gitlab_worker_dead_lettered_total", "code" => code.to_string()).increment(1);
    tracing::warn!(%dlq_subject, %code, "job dead-lettered: {message}");
    Ok(())
}

/// The shutdown deadline passed with the job unfinished: hand it back at once. Whatever the
/// handler committed stays; the redelivery resumes from it, and the job's lease is given up so
/// it may start at once.
pub async fn hand_back(store: &Store, acker: &Acker, payload: &[u8]) {
    release_lease(store, payload).await;
    if let Err(e) = acker.ack_with(AckKind::Nak(None)).await {
        tracing::warn!("could not hand the job back ({e}); NATS redelivers it after ack_wait");
    }
}

/// Gives up the job's lease so its next delivery may start at once; if that fails the lease
/// simply runs out.
pub async fn release_lease(store: &Store, payload: &[u8]) {
    if let Ok(job) = parse_job(payload, chrono::Utc::now())
        && let Err(e) = store.release_lease(job.job_id.as_str()).await
    {
        tracing::warn!(
            "could not release the job's lease ({e}); it is taken over when the lease runs out"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{JobError, JobStatus};

    fn handled(disposition: Disposition) -> Handled {
        Handled {
            result: "{}".into(),
            status: JobStatus::Failed,
            kind: "sync".into(),
            connector: "default".into(),
            job_id: "j".into(),
            disposition,
            error: Some(JobError {
                code: "forbidden".into(),
                message: "no".into(),
                retryable: false,
            }),
            repeated: false,
        }
    }

    #[test]
    fn every_outcome_maps_to_one_action() {
        assert_eq!(
            decide(
                &Ok(handled(Disposition::Done { dead_letter: false })),
                false
            ),
            AckAction::Ack
        );
        assert_eq!(
            decide(&Ok(handled(Disposition::Done { dead_letter: true })), false),
            AckAction::DeadLetter {
                code: "forbidden".into(),
                message: "no".into()
            }
        );
        let d = Duration::from_secs(7);
        assert_eq!(
            decide(&Ok(handled(Disposition::Retry { delay: d })), false),
            AckAction::Nak(Some(d))
        );
        let store_down = || {
            Err(HandlerError::Store(
                crate::store::StoreError::UnsupportedUrl("x".into()),
            ))
        };
        assert_eq!(
            decide(&store_down(), false),
            AckAction::Nak(Some(STORE_RETRY))
        );
        assert!(matches!(
            decide(&store_down(), true),
            AckAction::DeadLetter { code, .. } if code == "internal"
        ));
        let panicked = || Err(HandlerError::Panicked("index out of bounds".into()));
        assert_eq!(
            decide(&panicked(), false),
            AckAction::Nak(Some(STORE_RETRY))
        );
        assert!(matches!(
            decide(&panicked(), true),
            AckAction::DeadLetter { code, message } if code == "internal" && message.contains("index out of bounds")
        ));
    }
}
