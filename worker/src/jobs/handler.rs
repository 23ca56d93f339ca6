//! Executes one job delivery, whatever brought it (NATS, `run-job`, `demo`): validation,
//! idempotency by `job_id`, routing by kind, and the result committed with the messages that
//! announce it (the outbox). What the transport does with the outcome is [`Disposition`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use gitlab_connector::Client;
use gitlab_connector::api::Capability;
use tracing::Instrument;

use super::envelope::{Job, JobKind, Rejection, parse_job};
use super::result::{JobError, JobResult, JobStatus};
use super::{provision, sync_job};
use crate::config::ConnectorSettings;
use crate::store::{Begin, OutboxMessage, Store, StoreError};

/// One configured GitLab: its settings, its client, and what its token allows.
pub struct Connector {
    pub settings: ConnectorSettings,
    pub client: Client,
    /// From the start-up token check; `None` when it was not checked (tests, `migrate`).
    pub capability: Option<Capability>,
}

/// Subject names (interface.md section 3).
#[derive(Debug, Clone)]
pub struct Subjects {
    pub prefix: String,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }
    pub fn stream(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix.to_uppercase())
    }
    pub fn jobs_all(&self) -> String {
        format!("{}.jobs.>", self.prefix)
    }
    pub fn result(&self, connector: &str, kind: &str) -> String {
        format!(
            "{}.results.{}.{}",
            self.prefix,
            token(connector, "unknown"),
            token(kind, "invalid")
        )
    }
    pub fn dlq(&self, connector: &str, kind: &str) -> String {
        format!(
            "{}.dlq.{}.{}",
            self.prefix,
            token(connector, "unknown"),
            token(kind, "invalid")
        )
    }
    pub fn event(&self, connector: &str, kind: &str) -> String {
        format!("{}.events.{connector}.{kind}", self.prefix)
    }
    pub fn snapshot_bucket(&self) -> String {
        self.stream("SNAPSHOTS")
    }
}

/// A subject token from text a job supplied: anything that is not a plain token (empty, or with
/// dots, wildcards or spaces) becomes `fallback`, so a malformed job cannot address other subjects.
fn token<'a>(s: &'a str, fallback: &'a str) -> &'a str {
    if !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        s
    } else {
        fallback
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
    /// The error message for the DLQ copy.
    pub error: Option<JobError>,
    /// True when the job id was seen before and its stored result was published again.
    pub repeated: bool,
}

/// Delivery facts the transport knows.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// 1 for the first delivery.
    pub attempt: u32,
    /// No further delivery will come: a transient failure is final.
    pub last_attempt: bool,
    /// The JetStream stream sequence, to name republished results uniquely (0 without NATS).
    pub stream_seq: u64,
}

impl Delivery {
    pub fn once() -> Self {
        Self {
            attempt: 1,
            last_attempt: true,
            stream_seq: 0,
        }
    }
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

pub struct Handler {
    pub store: Store,
    pub connectors: BTreeMap<String, Arc<Connector>>,
    pub subjects: Subjects,
    /// Where snapshots are written before they are stored.
    pub spool_dir: PathBuf,
    /// Commit result and event messages to the outbox (false for `run-job`, which only prints).
    pub publish: bool,
    /// How long a running job is reserved for its delivery without a renewal (renewed every
    /// third of it). `serve` uses the consumer's `ack_wait`, so a dead worker's job is taken
    /// over when NATS redelivers it.
    pub lease: Duration,
}

/// A job outcome before it is committed.
pub(crate) struct Outcome {
    pub result: JobResult,
    /// For transient failures that may be retried.
    pub retry: bool,
}

fn retry_delay(attempt: u32) -> Duration {
    // 5 s, 10 s, 20 s, ... capped at 5 min, with ±20% jitter so retries spread out.
    let base = 5u64
        .saturating_mul(1u64 << attempt.saturating_sub(1).min(6))
        .min(300);
    let jitter = fastrand::f64() * 0.4 + 0.8;
    Duration::from_secs_f64(base as f64 * jitter)
}

impl Handler {
    /// Handles one delivery. An `Err` means the store failed: nothing was decided, the
    /// transport must retry the delivery.
    pub async fn handle(
        &self,
        payload: &[u8],
        delivery: Delivery,
    ) -> Result<Handled, HandlerError> {
        let started = Utc::now();
        let job = match parse_job(payload, started) {
            Ok(job) => job,
            Err(rejection) => return self.reject(rejection, started, delivery).await,
        };
        let span = tracing::info_span!("job", job_id = %job.job_id, connector = %job.connector, kind = job.kind().as_str(), attempt = delivery.attempt);
        self.handle_valid(job, payload, started, delivery)
            .instrument(span)
            .await
    }

    async fn reject(
        &self,
        rejection: Rejection,
        started: chrono::DateTime<Utc>,
        delivery: Delivery,
    ) -> Result<Handled, HandlerError> {
        // A job id already answered is answered the same way, even if this copy is damaged.
        if let Some(id) = &rejection.job_id
            && let Some(h) = self.repeated(id, delivery).await?
        {
            return Ok(h);
        }
        tracing::warn!(job_id = ?rejection.job_id, "job rejected: {}", rejection.message);
        let result = JobResult::rejected(&rejection, started, delivery.attempt);
        self.answer_unstored(result, delivery).await
    }

    /// Publishes a result that is not stored under its job id (rejections before acceptance).
    async fn answer_unstored(
        &self,
        result: JobResult,
        delivery: Delivery,
    ) -> Result<Handled, HandlerError> {
        let json = serde_json::to_string(&result).expect("results serialize");
        if self.publish {
            let msg_id = if result.job_id.is_empty() {
                format!("rejected:{}", delivery.stream_seq)
            } else if delivery.stream_seq > 0 {
                format!("{}:rejected:{}", result.job_id, delivery.stream_seq)
            } else {
                result.job_id.clone()
            };
            self.store
                .enqueue(vec![OutboxMessage::Publish {
                    msg_id,
                    subject: self.subjects.result(&result.connector, &result.kind),
                    payload: json.clone(),
                }])
                .await?;
        }
        Ok(Handled {
            status: result.status,
            kind: result.kind.clone(),
            connector: result.connector.clone(),
            job_id: result.job_id.clone(),
            disposition: Disposition::Done { dead_letter: true },
            error: result.error.clone(),
            repeated: false,
            result: json,
        })
    }

    /// The stored answer to a job id seen before, published again.
    async fn repeated(
        &self,
        job_id: &str,
        delivery: Delivery,
    ) -> Result<Option<Handled>, HandlerError> {
        let Some(row) = self.store.job(job_id).await? else {
            return Ok(None);
        };
        let Some(result) = row.result.filter(|_| row.state == "finished") else {
            return Ok(None);
        };
        let seq = u64::try_from(row.stream_seq).unwrap_or(0);
        Ok(Some(self.republish(job_id, &result, seq, delivery).await?))
    }

    async fn republish(
        &self,
        job_id: &str,
        stored: &str,
        ran_at_seq: u64,
        delivery: Delivery,
    ) -> Result<Handled, HandlerError> {
        let parsed: JobResult = serde_json::from_str(stored).map_err(|e| StoreError::Damaged {
            id: job_id.into(),
            message: format!("the stored result cannot be read: {e}"),
        })?;
        tracing::info!(job_id, status = ?parsed.status, "job id seen before: its stored result is published again, nothing executed");
        if self.publish {
            self.store
                .enqueue(vec![OutboxMessage::Publish {
                    // The message that ran the job, redelivered (its ack was lost): the same id
                    // as the first publication, so the results stream drops it as a duplicate.
                    // Another message with the same job id: an id of its own, which the
                    // stream would otherwise drop inside its duplicate window.
                    msg_id: if ran_at_seq != 0 && ran_at_seq == delivery.stream_seq {
                        job_id.to_string()
                    } else {
                        format!("{job_id}:repeat:{}", delivery.stream_seq)
                    },
                    subject: self.subjects.result(&parsed.connector, &parsed.kind),
                    payload: stored.to_string(),
                }])
                .await?;
        }
        // The very message that ran a failed job, redelivered: its DLQ copy may not have been
        // made, so it is made again (deduplicated by the DLQ's message id). Another message
        // reusing the job id is only answered.
        let same_message = ran_at_seq != 0 && ran_at_seq == delivery.stream_seq;
        let dead_letter =
            same_message && matches!(parsed.status, JobStatus::Failed | JobStatus::Rejected);
        Ok(Handled {
            status: parsed.status,
            kind: parsed.kind.clone(),
            connector: parsed.connector.clone(),
            job_id: job_id.into(),
            disposition: Disposition::Done { dead_letter },
            error: parsed.error.clone(),
            repeated: true,
            result: stored.to_string(),
        })
    }

    async fn handle_valid(
        &self,
        job: Job,
        payload: &[u8],
        started: chrono::DateTime<Utc>,
        delivery: Delivery,
    ) -> Result<Handled, HandlerError> {
        let Some(connector) = self.connectors.get(&job.connector).cloned() else {
            let mut result = JobResult::for_job(&job, started, delivery.attempt);
            result.status = JobStatus::Rejected;
            result.finished_at = Utc::now();
            let known: Vec<&str> = self.connectors.keys().map(String::as_str).collect();
            result.error = Some(JobError {
                code: "unknown_connector".into(),
                message: format!(
                    "no connector {:?} is configured on this worker (configured: {}); check the job's `connector` or the worker's CONNECTOR_ID / --config",
                    job.connector,
                    known.join(", ")
                ),
                retryable: false,
            });
            if let Some(h) = self.repeated(&job.job_id, delivery).await? {
                return Ok(h);
            }
            return self.answer_unstored(result, delivery).await;
        };
        let request = String::from_utf8_lossy(payload);
        let attempt = match self
            .store
            .begin_job(
                &job.job_id,
                &job.connector,
                job.kind().as_str(),
                &request,
                delivery.stream_seq,
                self.lease,
            )
            .await?
        {
            Begin::Busy => {
                // The same job id is running in another delivery: come back when it is done
                // (its result is then published again), or drop this copy on its last delivery.
                tracing::info!("the job id is running in another delivery");
                let mut result = JobResult::for_job(&job, started, delivery.attempt);
                result.status = JobStatus::Noop;
                return Ok(Handled {
                    result: serde_json::to_string(&result).expect("results serialize"),
                    status: JobStatus::Noop,
                    kind: result.kind.clone(),
                    connector: result.connector.clone(),
                    job_id: job.job_id.clone(),
                    disposition: if delivery.last_attempt {
                        Disposition::Done { dead_letter: false }
                    } else {
                        Disposition::Retry {
                            delay: (self.lease / 2).max(Duration::from_secs(1)),
                        }
                    },
                    error: None,
                    repeated: true,
                });
            }
            Begin::Finished { result, stream_seq } => {
                return self
                    .republish(&job.job_id, &result, stream_seq, delivery)
                    .await;
            }
            Begin::New => 1,
            Begin::Resume { attempts, .. } => attempts,
        };
        let result = JobResult::for_job(&job, started, attempt);
        // Keep the lease while the job runs, and not a moment longer: the renewal stops when
        // this future ends or is dropped (a shutdown deadline, a panic), so the lease can lapse.
        let renewal = {
            let store = self.store.clone();
            let job_id = job.job_id.clone();
            let lease = self.lease;
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(lease / 3).await;
                    if let Err(e) = store.renew_lease(&job_id, lease).await {
                        tracing::warn!("cannot renew the job's lease: {e}");
                    }
                }
            }))
        };
        let outcome = match job.kind() {
            JobKind::Sync => sync_job::run(self, &connector, &job, started, attempt).await,
            JobKind::Grant => provision::grant(self, &connector, &job, result).await,
            JobKind::Revoke => provision::revoke(self, &connector, &job, result).await,
            JobKind::Invite => provision::invite(self, &connector, &job, result).await,
            JobKind::Deprovision => provision::deprovision(self, &connector, &job, result).await,
            JobKind::RotateToken => {
                super::rotation::rotate_job(self, &connector, &job, result).await
            }
        };
        renewal.abort();
        self.commit(job, outcome, delivery).await
    }

    /// Finishes a job: a retryable failure before the last attempt is handed back without a
    /// result; anything else is committed with its result message.
    async fn commit(
        &self,
        job: Job,
        outcome: Outcome,
        delivery: Delivery,
    ) -> Result<Handled, HandlerError> {
        let mut result = outcome.result;
        if outcome.retry && !delivery.last_attempt {
            let delay = retry_delay(delivery.attempt);
            self.store.release_lease(&job.job_id).await?;
            tracing::warn!(
                delay_s = delay.as_secs(),
                error = ?result.error.as_ref().map(|e| &e.message),
                "transient failure; the job is handed back for another attempt"
            );
            return Ok(Handled {
                result: serde_json::to_string(&result).expect("results serialize"),
                status: result.status,
                kind: result.kind.clone(),
                connector: result.connector.clone(),
                job_id: job.job_id.clone(),
                disposition: Disposition::Retry { delay },
                error: result.error.clone(),
                repeated: false,
            });
        }
        if result.finished_at < result.started_at {
            result.finished_at = Utc::now();
        }
        let json = serde_json::to_string(&result).expect("results serialize");
        let status = status_name(result.status);
        let outbox = if self.publish {
            vec![self.result_message(&result, &json)]
        } else {
            Vec::new()
        };
        self.store
            .finish_job(&job.job_id, status, &json, outbox)
            .await?;
        Ok(self.handled(&job, result, json))
    }

    pub(crate) fn result_message(&self, result: &JobResult, json: &str) -> OutboxMessage {
        OutboxMessage::Publish {
            msg_id: result.job_id.clone(),
            subject: self.subjects.result(&result.connector, &result.kind),
            payload: json.to_string(),
        }
    }

    pub(crate) fn handled(&self, job: &Job, result: JobResult, json: String) -> Handled {
        let dead_letter = matches!(result.status, JobStatus::Failed | JobStatus::Rejected);
        Handled {
            status: result.status,
            kind: result.kind.clone(),
            connector: result.connector.clone(),
            job_id: job.job_id.clone(),
            disposition: Disposition::Done { dead_letter },
            error: result.error.clone(),
            repeated: false,
            result: json,
        }
    }
}

pub(crate) fn status_name(s: JobStatus) -> &'static str {
    match s {
        JobStatus::Succeeded => "succeeded",
        JobStatus::Noop => "noop",
        JobStatus::Failed => "failed",
        JobStatus::Rejected => "rejected",
    }
}

/// Maps a GitLab client error to the result's error code (interface.md section 4).
pub(crate) fn error_code(e: &gitlab_connector::Error) -> &'static str {
    gitlab_connector::provision::result_code(e)
}
