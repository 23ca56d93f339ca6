//! The handler's interface to a transport (NATS, `run-job`, `demo`): what it is told about a
//! delivery, and what it answers.

use std::time::Duration;

use super::result::{JobError, JobStatus};
use crate::store::{StoreError, attempts_left};

/// A job handed back to wait for a slot of a per-group limit (`Error::SlotLater`) is not
/// making an attempt: up to this many such deliveries per job are not counted against
/// `NATS_MAX_DELIVER` (the consumer delivers this many more times), after which the job waits
/// for its slots in place.
pub const DEFERRALS_MAX: u32 = 16;

/// A slot at most this far away is waited for in the worker; a later one defers the job.
pub const DEFER_HOLD: Duration = Duration::from_secs(1);

/// A deferred job comes back this long before its slot (it reads GitLab before the write).
pub const DEFER_LEAD: Duration = Duration::from_millis(300);

/// How long a job (or a JIT expiry) deferred to `slot` stays away.
pub fn come_back_in(slot: &gitlab_connector::client::Slot) -> Duration {
    slot.wait().saturating_sub(DEFER_LEAD)
}

/// Delivery facts the transport knows.
#[derive(Debug, Clone, Default)]
pub struct Delivery {
    /// 1 for the first delivery.
    pub attempt: u32,
    /// The attempts a job gets (`NATS_MAX_DELIVER`; 0: no limit).
    pub attempt_budget: u32,
    /// Earlier deliveries of the job that were deferrals (known once the store is read).
    pub deferrals: u32,
    /// The JetStream stream sequence, to name republished results uniquely (0 without NATS).
    pub stream_seq: u64,
    /// The subject the job was published on (`None` without NATS): its connector and kind must
    /// be the envelope's, so NATS subject permissions mean something.
    pub subject: Option<String>,
}

impl Delivery {
    /// The only delivery there will be (`run-job`, `demo`).
    pub fn once() -> Self {
        Self {
            attempt: 1,
            attempt_budget: 1,
            ..Self::default()
        }
    }

    fn attempts_left(&self) -> Option<u32> {
        attempts_left(self.attempt, self.deferrals, self.attempt_budget)
    }

    /// No further attempt will come: a transient failure is final.
    pub fn last_attempt(&self) -> bool {
        self.attempts_left().is_none_or(|left| left == 0)
    }

    /// The job's last attempt was made by an earlier delivery that stopped (NATS delivers the
    /// message again because deferrals left it deliveries): this one must not run it.
    pub fn beyond_budget(&self) -> bool {
        self.attempts_left().is_none()
    }
}

/// What the transport should do with the delivery once the handler returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// The job is finished and its result committed (or, for a rejection, ready to publish).
    Done {
        /// Copy the job to the DLQ (failed or rejected) before removing it from the queue.
        dead_letter: bool,
    },
    /// A transient failure: hand the job back for another delivery after `delay`.
    Retry { delay: Duration },
}

/// The handler's answer to one delivery.
#[derive(Debug, Clone)]
pub struct Handled {
    /// The result envelope as published (JSON).
    pub result: String,
    pub status: JobStatus,
    pub kind: String,
    pub connector: String,
    pub job_id: String,
    pub disposition: Disposition,
    /// The error, for the DLQ copy's headers.
    pub error: Option<JobError>,
    /// True when the job id was seen before and its stored result was published again.
    pub repeated: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The database could not record the job: the delivery must be retried, not answered.
    #[error("the job store is unavailable: {0}")]
    Store(#[from] StoreError),
    /// The job's code panicked: a bug, reported with the job and retried like a store failure.
    #[error("the job's handler panicked ({0}); this is a bug in gitlab-worker, please report it")]
    Panicked(String),
}

/// The delay before a transient failure's next attempt: 5 s, 10 s, 20 s, ... capped at 5 min,
/// with ±20% jitter so retries spread out.
pub fn retry_delay(attempt: u32) -> Duration {
    let base = 5u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(6))
        .min(300);
    let jitter = fastrand::f64() * 0.4 + 0.8;
    Duration::from_secs_f64(base as f64 * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_and_are_capped() {
        for (attempt, base) in [(1u32, 5.0), (2, 10.0), (3, 20.0), (7, 300.0), (40, 300.0)] {
            let d = retry_delay(attempt).as_secs_f64();
            assert!(
                (base * 0.8..=base * 1.2).contains(&d),
                "attempt {attempt}: {d}"
            );
        }
    }
}
