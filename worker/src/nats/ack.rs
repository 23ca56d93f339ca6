//! The ack policy, in one place: what a handled delivery becomes on the wire.
//!
//! | handler outcome | action |
//! |---|---|
//! | done (succeeded, noop, repeated job id) | `double_ack` after the state is committed |
//! | done, failed or rejected | copy to the DLQ (publish acknowledged), then `Term` |
//! | transient failure, deliveries left | `Nak` with the handler's backoff delay |
//! | the store failed (nothing decided), or the handler panicked | `Nak` after a short delay; on the last delivery, DLQ + `Term` |
//! | shutdown deadline passed | `Nak` without delay, so another instance takes it at once |

use std::time::Duration;

use crate::jobs::{Disposition, Handled, HandlerError};

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
