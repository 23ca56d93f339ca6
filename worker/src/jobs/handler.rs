//! The dispatcher: executes one job delivery, whatever brought it (NATS, `run-job`, `demo`).
//! It validates the envelope, makes the job id an idempotency key (one execution, a lease while
//! it runs, the stored result published again for a repeat), routes the job to its kind with a
//! [`JobContext`], and commits the result with the messages that announce it (the outbox).
//! What the transport does with the answer is the [`Disposition`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use gitlab_connector::client::{Deferral, Slot};
use tracing::Instrument;

use super::codes::Code;
use super::context::{Clock, JobContext, JobMeta, PendingSnapshot, Report};
use super::delivery::{
    DEFER_HOLD, DEFERRALS_MAX, Delivery, Disposition, Handled, HandlerError, retry_delay,
};
use super::envelope::{Job, JobParams, Rejection, parse_job};
use super::outcome::{Done, JobFailure};
use super::result::{JobError, JobResult, JobStatus};
use super::{audit, bounded, deprovision, grant, invite, revoke, rotate, sync};
use crate::connector::Connector;
use crate::ids::ConnectorId;
use crate::store::{Begin, JobCompletion, NewJob, OutboxMessage, Settlement, Store, StoreError};
use crate::subjects::{Subjects, msg_id};

pub struct Handler {
    pub store: Store,
    pub connectors: BTreeMap<ConnectorId, Arc<Connector>>,
    pub subjects: Subjects,
    /// Where snapshots are written before they are stored.
    pub spool_dir: PathBuf,
    /// Commit result and event messages to the outbox (false for `run-job`, which only prints).
    pub publish: bool,
    /// How long a running job is reserved for its delivery without a renewal (renewed every
    /// third of it). `serve` uses the consumer's `ack_wait`, so a dead worker's job is taken
    /// over when NATS redelivers it.
    pub lease: Duration,
    /// How long a delivery that finds its job id running in another delivery waits in place
    /// (its message kept alive) for that delivery to end or its lease to lapse, before it
    /// hands its message back. Waiting in place spends no delivery: a job whose runs are cut
    /// short by crashes keeps its deliveries for the runs.
    pub busy_wait: Duration,
    pub clock: Clock,
    /// Envelopes larger than this are rejected without being parsed or echoed.
    pub max_job_bytes: usize,
    /// How long each kind of job may run.
    pub timeouts: crate::config::JobTimeouts,
}

/// A job's end before it is committed.
pub(super) struct Ending {
    pub(super) outcome: Result<Done, JobFailure>,
    pub(super) report: Report,
    pub(super) snapshot: Option<PendingSnapshot>,
    pub(super) settlement: Settlement,
    /// The slot of a per-group limit the job stopped for, to be handed back until it.
    pub(super) deferred: Option<Slot>,
}

fn to_json(result: &JobResult) -> String {
    serde_json::to_string(result).expect("results serialize")
}

impl Handler {
    /// Handles one delivery. An `Err` means the store failed: nothing was decided, the
    /// transport must retry the delivery.
    pub async fn handle(
        &self,
        payload: &[u8],
        delivery: Delivery,
    ) -> Result<Handled, HandlerError> {
        let started = self.clock.now();
        if payload.len() > self.max_job_bytes {
            let rejection = Rejection {
                job_id: None,
                connector: None,
                kind: None,
                code: Code::InvalidJob,
                message: format!(
                    "the job is {} bytes, more than NATS_MAX_JOB_BYTES ({}); it was not read. A job envelope is small: split the work or raise the limit",
                    payload.len(),
                    self.max_job_bytes
                ),
            };
            return self.reject(rejection, started, &delivery).await;
        }
        let job = match parse_job(payload, started) {
            Ok(job) => job,
            Err(rejection) => return self.reject(rejection, started, &delivery).await,
        };
        if let Some(rejection) = delivery
            .subject
            .as_deref()
            .and_then(|subject| self.subject_mismatch(&job, subject))
        {
            return self.reject(rejection, started, &delivery).await;
        }
        let span = tracing::info_span!("job", job_id = %job.job_id, connector = %job.connector, kind = job.kind().as_str(), attempt = delivery.attempt);
        self.handle_valid(job, payload, started, &delivery)
            .instrument(span)
            .await
    }

    async fn reject(
        &self,
        rejection: Rejection,
        started: DateTime<Utc>,
        delivery: &Delivery,
    ) -> Result<Handled, HandlerError> {
        // Not answered from the store even when the job id is known: a job id binds its
        // payload, and this one is not the payload that ran.
        tracing::warn!(job_id = ?rejection.job_id.as_ref().map(|j| j.as_str()), "job rejected: {}", rejection.message);
        let mut result = JobResult::rejected(&rejection, started, delivery.attempt);
        result.finished_at = self.clock.now();
        self.answer_unstored(result, delivery).await
    }

    /// Publishes a result that is not stored under its job id (rejections before acceptance).
    async fn answer_unstored(
        &self,
        result: JobResult,
        delivery: &Delivery,
    ) -> Result<Handled, HandlerError> {
        let json = to_json(&result);
        if self.publish {
            let msg_id = msg_id::rejected(&result.job_id, delivery.stream_seq);
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

    /// A job published on a subject that names another connector or kind than its envelope:
    /// NATS subject permissions (who may publish what) only mean something when they agree.
    fn subject_mismatch(&self, job: &Job, subject: &str) -> Option<Rejection> {
        let expected = self
            .subjects
            .job(job.connector.as_str(), job.kind().as_str());
        (subject != expected).then(|| Rejection {
            job_id: Some(job.job_id.clone()),
            connector: Some(job.connector.clone()),
            kind: Some(job.kind()),
            code: Code::SubjectMismatch,
            message: format!(
                "the job was published on {subject:?} but its envelope is a {} job for connector {:?}, which belongs on {expected:?}; publish it on that subject",
                job.kind().as_str(),
                job.connector.as_str()
            ),
        })
    }

    async fn republish(
        &self,
        job_id: &str,
        stored: &str,
        ran_at_seq: u64,
        delivery: &Delivery,
    ) -> Result<Handled, HandlerError> {
        let parsed: JobResult = serde_json::from_str(stored).map_err(|e| StoreError::Damaged {
            id: job_id.into(),
            message: format!("the stored result cannot be read: {e}"),
        })?;
        tracing::info!(job_id, status = ?parsed.status, "job id seen before: its stored result is published again, nothing executed");
        // The very message that ran the job, redelivered (its ack was lost), is published with
        // the same id as the first publication, so the results stream drops it as a duplicate.
        // Another message with the same job id gets an id of its own, which the stream would
        // otherwise drop inside its duplicate window.
        let same_message = ran_at_seq != 0 && ran_at_seq == delivery.stream_seq;
        if self.publish {
            self.store
                .enqueue(vec![OutboxMessage::Publish {
                    msg_id: if same_message {
                        msg_id::result(job_id)
                    } else {
                        msg_id::repeat(job_id, delivery.stream_seq)
                    },
                    subject: self.subjects.result(&parsed.connector, &parsed.kind),
                    payload: stored.to_string(),
                }])
                .await?;
        }
        // The very message that ran a failed job, redelivered: its DLQ copy may not have been
        // made, so it is made again (deduplicated by the DLQ's message id). Another message
        // reusing the job id is only answered.
        let dead_letter = same_message && parsed.status.is_dead_lettered();
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
        started: DateTime<Utc>,
        delivery: &Delivery,
    ) -> Result<Handled, HandlerError> {
        let Some(connector) = self.connectors.get(job.connector.as_str()).cloned() else {
            let known: Vec<&str> = self.connectors.keys().map(ConnectorId::as_str).collect();
            let mut result = JobResult::for_job(&job, started, delivery.attempt);
            result.status = JobStatus::Rejected;
            result.finished_at = self.clock.now();
            result.error = Some(JobError::new(
                Code::UnknownConnector,
                format!(
                    "no connector {:?} is configured on this worker (configured: {}); check the job's `connector` or the worker's CONNECTOR_ID / --config",
                    job.connector.as_str(),
                    known.join(", ")
                ),
                false,
            ));
            return self.answer_unstored(result, delivery).await;
        };
        let request = String::from_utf8_lossy(payload);
        let begun = self
            .begin(&NewJob {
                job_id: job.job_id.as_str(),
                connector: job.connector.as_str(),
                kind: job.kind().as_str(),
                request: &request,
                payload_sha256: &job.payload_sha256,
                stream_seq: delivery.stream_seq,
                delivered: delivery.attempt,
                attempt_budget: delivery.attempt_budget,
            })
            .await?;
        let (deferrals, held_slot) = match &begun {
            Begin::Resume {
                deferrals,
                held_slot,
                ..
            } => (*deferrals, held_slot.as_deref().and_then(Slot::decode)),
            _ => (0, None),
        };
        let delivery = &Delivery {
            deferrals,
            ..delivery.clone()
        };
        let attempt = match begun {
            Begin::Busy => return self.busy(&job, started, delivery).await,
            Begin::Conflict => {
                let rejection = Rejection {
                    job_id: Some(job.job_id.clone()),
                    connector: Some(job.connector.clone()),
                    kind: Some(job.kind()),
                    code: Code::JobIdConflict,
                    message: format!(
                        "the job id {:?} was used before with another payload; a job id names one job: give this job an id of its own",
                        job.job_id.as_str()
                    ),
                };
                return self.reject(rejection, started, delivery).await;
            }
            Begin::Finished { result, stream_seq } => {
                return self
                    .republish(job.job_id.as_str(), &result, stream_seq, delivery)
                    .await;
            }
            Begin::New => 1,
            Begin::Resume { attempts, .. } => attempts,
        };
        // Keep the lease while the job runs, and not a moment longer: the renewal stops when
        // this future ends or is dropped (a shutdown deadline, a panic), so the lease can lapse.
        let renewal = {
            let store = self.store.clone();
            let job_id = job.job_id.to_string();
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
        if delivery.beyond_budget() {
            renewal.abort();
            return self
                .answer_beyond_budget(&job, started, attempt, delivery)
                .await;
        }
        // A job on NATS may wait outside the worker for a far slot of a per-group limit, while
        // it has deferrals and attempts left.
        let deferral =
            (delivery.stream_seq != 0 && !delivery.last_attempt() && deferrals < DEFERRALS_MAX)
                .then(|| Deferral::new(DEFER_HOLD, held_slot));
        let ending = self
            .execute(&job, connector, started, attempt, deferral.as_ref())
            .await;
        renewal.abort();
        self.commit(&job, started, attempt, ending, delivery).await
    }

    /// Takes the job id for this delivery. While another delivery holds it, waits in place
    /// (up to `busy_wait`): the holder either ends (its result is then published again) or
    /// dies and its lease lapses (this delivery resumes the job).
    async fn begin(&self, new: &NewJob<'_>) -> Result<Begin, HandlerError> {
        let until = tokio::time::Instant::now() + self.busy_wait;
        let poll = (self.lease / 6).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut waiting = false;
        loop {
            let begun = self.store.begin_job(new, self.lease).await?;
            if begun != Begin::Busy || tokio::time::Instant::now() + poll > until {
                return Ok(begun);
            }
            if !waiting {
                tracing::info!(
                    "the job id is running in another delivery; this one waits for it to end or for its lease to lapse"
                );
                waiting = true;
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The same job id is still running in another delivery after `busy_wait`: come back
    /// later (its result is then published again). On this message's last delivery it is
    /// answered `failed` and dead-lettered under a message id of its own: the platform learns
    /// that this message was not executed, and the running delivery still publishes the job's
    /// result.
    async fn busy(
        &self,
        job: &Job,
        started: DateTime<Utc>,
        delivery: &Delivery,
    ) -> Result<Handled, HandlerError> {
        tracing::info!("the job id is still running in another delivery");
        let mut result = JobResult::for_job(job, started, delivery.attempt);
        if delivery.last_attempt() {
            result.status = JobStatus::Failed;
            result.finished_at = self.clock.now();
            result.error = Some(JobError::new(
                Code::Conflict,
                format!(
                    "job {:?} was running in another delivery when this message's deliveries ran out; that delivery publishes the job's result when it finishes",
                    job.job_id.as_str()
                ),
                false,
            ));
            return self.answer_unstored(result, delivery).await;
        }
        Ok(Handled {
            result: to_json(&result),
            status: JobStatus::Noop,
            kind: result.kind.clone(),
            connector: result.connector.clone(),
            job_id: job.job_id.to_string(),
            disposition: Disposition::Retry {
                delay: (self.lease / 2).max(Duration::from_secs(1)),
            },
            error: None,
            repeated: true,
        })
    }

    /// Runs the job's kind with a context of its own.
    async fn execute(
        &self,
        job: &Job,
        connector: Arc<Connector>,
        started: DateTime<Utc>,
        attempt: u32,
        deferral: Option<&Deferral>,
    ) -> Ending {
        let mut ctx = JobContext {
            store: &self.store,
            subjects: &self.subjects,
            spool_dir: &self.spool_dir,
            clock: &self.clock,
            connector,
            publish: self.publish,
            job: JobMeta {
                job_id: job.job_id.clone(),
                connector: job.connector.clone(),
                dry_run: job.dry_run,
                requested_by: job.requested_by.clone(),
                reason: job.reason.clone(),
                started_at: started,
                attempt,
            },
            report: Report::default(),
            snapshot: None,
            settlement: Default::default(),
        };
        let limit = self.timeouts.for_kind(job.kind().as_str());
        let run = async {
            match &job.params {
                JobParams::Sync(p) => sync::execute(&mut ctx, p, sync::Cause::Sync).await,
                JobParams::Reconcile(p) => sync::execute(&mut ctx, p, sync::Cause::Reconcile).await,
                JobParams::Grant(p) => grant::execute(&mut ctx, p).await,
                JobParams::Revoke(p) => revoke::execute(&mut ctx, p).await,
                JobParams::Invite(p) => invite::execute(&mut ctx, p).await,
                JobParams::Deprovision(p) => deprovision::execute(&mut ctx, p).await,
                JobParams::RotateToken(p) => rotate::execute(&mut ctx, p).await,
            }
        };
        // Stopped at its deadline: every write so far has its write-ahead record, so a
        // provisioning job is handed back and resumed; a sync would only run out again.
        let run = async {
            match deferral {
                Some(d) => d.scope(run).await,
                None => run.await,
            }
        };
        let outcome = match tokio::time::timeout(limit, run).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let message = format!(
                    "the job ran longer than its {} s limit (JOB_TIMEOUT_SECONDS_{}) and was stopped",
                    limit.as_secs(),
                    job.kind().as_str().to_uppercase()
                );
                tracing::warn!("{message}");
                Err(
                    if matches!(job.params, JobParams::Sync(_) | JobParams::Reconcile(_)) {
                        JobFailure::failed(Code::Timeout, message)
                    } else {
                        JobFailure::transient(Code::Timeout, message)
                    },
                )
            }
        };
        // A resumed job answers for what its earlier deliveries wrote too (a grant resumes
        // from its own record and reports it).
        let resumable = matches!(
            job.params,
            JobParams::Revoke(_) | JobParams::Invite(_) | JobParams::Deprovision(_)
        );
        let outcome = match outcome {
            Ok(done) if attempt > 1 && resumable && !job.dry_run => {
                match audit::adopt_earlier_writes(
                    &self.store,
                    job.job_id.as_str(),
                    &mut ctx.report.changes,
                )
                .await
                {
                    Ok(true) => Ok(Done::Succeeded),
                    Ok(false) => Ok(done),
                    Err(e) => Err(JobFailure::transient(
                        Code::Internal,
                        format!("cannot read the audit log of the earlier deliveries: {e}"),
                    )),
                }
            }
            other => other,
        };
        Ending {
            outcome,
            report: ctx.report,
            snapshot: ctx.snapshot,
            settlement: ctx
                .settlement
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            deferred: deferral.and_then(Deferral::deferred),
        }
    }

    fn result_of(
        &self,
        job: &Job,
        started: DateTime<Utc>,
        attempt: u32,
        outcome: &Result<Done, JobFailure>,
        report: Report,
    ) -> JobResult {
        let mut result = JobResult::for_job(job, started, attempt);
        result.changes = report.changes;
        result.warnings = report.warnings;
        result.snapshot = report.snapshot;
        result.grant = report.grant;
        result.residual_access = report.residual_access;
        match outcome {
            Ok(done) => result.status = done.status(),
            Err(f) => {
                result.status = f.status;
                result.error = Some(f.error());
            }
        }
        result.finished_at = self.clock.now().max(started);
        result
    }

    /// Finishes a job: a transient failure before the last attempt is handed back without a
    /// result; anything else is committed with its result message (a sync's snapshot in the
    /// same transaction).
    pub(super) async fn commit(
        &self,
        job: &Job,
        started: DateTime<Utc>,
        attempt: u32,
        ending: Ending,
        delivery: &Delivery,
    ) -> Result<Handled, HandlerError> {
        let Ending {
            mut outcome,
            report,
            snapshot,
            settlement,
            deferred,
        } = ending;
        let hand_back = |o: &Result<Done, JobFailure>| {
            matches!(o, Err(f) if f.hand_back) && !delivery.last_attempt()
        };
        if let Some(slot) = deferred.filter(|_| hand_back(&outcome)) {
            return self.defer(job, slot, &settlement).await;
        }
        let mut result = self.result_of(job, started, attempt, &outcome, report);
        // Published results are bounded; `run-job` prints the whole result.
        let object = if self.publish {
            bounded::bound(&mut result, &self.subjects)
        } else {
            None
        };
        if let Some(pending) = snapshot.filter(|_| !hand_back(&outcome)) {
            // A sync writes nothing in GitLab; should a job ever both write and store a
            // snapshot, its outcomes are committed first.
            self.store.settle(job.job_id.as_str(), &settlement).await?;
            match self
                .store_with_snapshot(job, &result, object.clone(), pending)
                .await
            {
                Ok(()) => return Ok(self.handled(job, &result)),
                Err(e) => {
                    let failure = JobFailure::transient(
                        Code::Internal,
                        format!("cannot store the snapshot: {e}"),
                    );
                    result.status = failure.status;
                    result.error = Some(failure.error());
                    outcome = Err(failure);
                }
            }
        }
        if hand_back(&outcome) {
            let delay = retry_delay(delivery.attempt);
            self.store.settle(job.job_id.as_str(), &settlement).await?;
            self.store.release_lease(job.job_id.as_str()).await?;
            tracing::warn!(
                delay_s = delay.as_secs(),
                error = ?result.error.as_ref().map(|e| &e.message),
                "transient failure; the job is handed back for another attempt"
            );
            return Ok(Handled {
                result: to_json(&result),
                status: result.status,
                kind: result.kind.clone(),
                connector: result.connector.clone(),
                job_id: job.job_id.to_string(),
                disposition: Disposition::Retry { delay },
                error: result.error.clone(),
                repeated: false,
            });
        }
        let json = to_json(&result);
        let outbox = if self.publish {
            object
                .into_iter()
                .chain([self.result_message(&result, &json)])
                .collect()
        } else {
            Vec::new()
        };
        self.store
            .finish_job(
                job.job_id.as_str(),
                result.status.as_str(),
                &json,
                outbox,
                &settlement,
            )
            .await?;
        Ok(self.handled(job, &result))
    }

    /// Stores a sync's snapshot and finishes its job in one transaction, with the snapshot's
    /// events and the result in the outbox.
    async fn store_with_snapshot(
        &self,
        job: &Job,
        result: &JobResult,
        object: Option<OutboxMessage>,
        pending: PendingSnapshot,
    ) -> Result<(), StoreError> {
        let json = to_json(result);
        let mut outbox = pending.events;
        if self.publish {
            outbox.extend(object);
            outbox.push(self.result_message(result, &json));
        }
        let stored = self
            .store
            .store_snapshot_with(
                pending.file.path(),
                Some(job.job_id.as_str()),
                Some(JobCompletion {
                    job_id: job.job_id.as_str(),
                    status: result.status.as_str(),
                    result: &json,
                    outbox,
                }),
            )
            .await?;
        tracing::info!(
            snapshot_id = %stored.info.snapshot_id,
            complete = stored.info.complete,
            rows_inserted = stored.rows_inserted,
            rows_closed = stored.rows_closed,
            rows_unchanged = stored.rows_unchanged,
            "snapshot stored"
        );
        Ok(())
    }

    fn result_message(&self, result: &JobResult, json: &str) -> OutboxMessage {
        OutboxMessage::Publish {
            msg_id: msg_id::result(&result.job_id),
            subject: self.subjects.result(&result.connector, &result.kind),
            payload: json.to_string(),
        }
    }

    pub(super) fn handled(&self, job: &Job, result: &JobResult) -> Handled {
        Handled {
            status: result.status,
            kind: result.kind.clone(),
            connector: result.connector.clone(),
            job_id: job.job_id.to_string(),
            disposition: Disposition::Done {
                dead_letter: result.status.is_dead_lettered(),
            },
            error: result.error.clone(),
            repeated: false,
            result: to_json(result),
        }
    }
}
