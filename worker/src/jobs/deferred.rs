//! Deliveries that are not attempts, and attempts past the budget.
//!
//! A job whose next GitLab write must wait minutes for a slot of a per-group limit (member
//! deletion: 60/min per group) is handed back to NATS until just before its slot, with the
//! slot kept in its job record, instead of being held by a worker the whole time (where a
//! worker's death would cost it a delivery, again and again, while it queues). Such a deferral
//! is a delivery but not an attempt; the consumer delivers `DEFERRALS_MAX` more times than
//! `NATS_MAX_DELIVER` to make room for them.

use chrono::{DateTime, Utc};
use gitlab_connector::client::Slot;

use super::codes::Code;
use super::context::Report;
use super::delivery::{Delivery, Disposition, Handled, HandlerError, come_back_in};
use super::envelope::Job;
use super::handler::{Ending, Handler};
use super::outcome::JobFailure;
use super::result::JobStatus;
use crate::store::Settlement;

impl Handler {
    /// Hands the job back until just before `slot`: its writes so far are settled, the slot is
    /// kept for its next delivery, and its lease is given up.
    pub(super) async fn defer(
        &self,
        job: &Job,
        slot: Slot,
        settlement: &Settlement,
    ) -> Result<Handled, HandlerError> {
        let job_id = job.job_id.as_str();
        self.store.settle(job_id, settlement).await?;
        self.store.defer_job(job_id, &slot.encode()).await?;
        tracing::info!(
            wait_ms = slot.wait().as_millis() as u64,
            lane = %slot.lane,
            "the job's slot of GitLab's per-group limit is ahead: it waits in the queue until then"
        );
        metrics::counter!("gitlab_worker_jobs_deferred_total").increment(1);
        Ok(Handled {
            result: String::new(),
            status: JobStatus::Noop,
            kind: job.kind().as_str().to_string(),
            connector: job.connector.to_string(),
            job_id: job_id.to_string(),
            disposition: Disposition::Retry {
                delay: come_back_in(&slot),
            },
            error: None,
            repeated: true,
        })
    }

    /// The job's last attempt was an earlier delivery that stopped (its worker died), and NATS
    /// delivered the message again only because deferrals left it deliveries: the job is
    /// answered `failed`, as the abandoned-job sweep would answer it.
    pub(super) async fn answer_beyond_budget(
        &self,
        job: &Job,
        started: DateTime<Utc>,
        attempt: u32,
        delivery: &Delivery,
    ) -> Result<Handled, HandlerError> {
        tracing::warn!("the job's last attempt stopped before it ended: answered failed");
        let failure = JobFailure::failed(
            Code::Internal,
            format!(
                "the worker running job {:?} stopped during its last attempt ({} of {}); what it changed in GitLab is in the audit log under this job id. Publish a new job (a new job id) to finish the work",
                job.job_id.as_str(),
                delivery.attempt_budget,
                delivery.attempt_budget
            ),
        );
        let ending = Ending {
            outcome: Err(failure),
            report: Report::default(),
            snapshot: None,
            settlement: Settlement::default(),
            deferred: None,
        };
        self.commit(job, started, attempt, ending, delivery).await
    }
}
