//! Jobs NATS will not deliver again whose last delivery died: answered `failed` (result and a
//! DLQ copy) once their lease has run out, so no platform waits forever. What the job had
//! written is in the audit log under its id; a grant written ahead is completed or undone by
//! the JIT scheduler.

use std::time::Duration;

use super::codes::Code;
use super::handler::Handler;
use super::result::{JobError, JobResult, JobStatus, RESULT_SCHEMA};
use crate::store::{JobRecord, OutboxMessage, StoreError};
use crate::subjects::msg_id;

/// How long after its lease ran out a job on its last delivery counts as abandoned: a worker
/// that is only slow to renew gets this much more.
pub const ABANDON_GRACE: Duration = Duration::from_secs(5);

fn result_of(job: &JobRecord, now: chrono::DateTime<chrono::Utc>) -> JobResult {
    let dry_run = serde_json::from_str::<serde_json::Value>(&job.request)
        .ok()
        .and_then(|v| v["dry_run"].as_bool())
        .unwrap_or(false);
    JobResult {
        schema: RESULT_SCHEMA.into(),
        job_id: job.job_id.clone(),
        connector: job.connector.clone(),
        kind: job.kind.clone(),
        status: JobStatus::Failed,
        dry_run,
        started_at: now,
        finished_at: now,
        attempt: job.attempts,
        changes: Vec::new(),
        error: Some(JobError::new(
            Code::Internal,
            format!(
                "the worker running job {:?} stopped during its last delivery (NATS delivers it no more); what it changed in GitLab is in the audit log under this job id. Publish a new job (a new job id) to finish the work",
                job.job_id
            ),
            false,
        )),
        snapshot: None,
        grant: None,
        residual_access: None,
        warnings: Vec::new(),
        changes_object: None,
    }
}

impl Handler {
    /// Answers every abandoned job; returns how many.
    pub async fn answer_abandoned(&self) -> Result<usize, StoreError> {
        let mut answered = 0;
        for job in self.store.abandoned_jobs(ABANDON_GRACE).await? {
            let result = result_of(&job, self.clock.now());
            let json = serde_json::to_string(&result).unwrap_or_default();
            let outbox = if self.publish {
                vec![
                    OutboxMessage::Publish {
                        msg_id: msg_id::result(&job.job_id),
                        subject: self.subjects.result(&job.connector, &job.kind),
                        payload: json.clone(),
                    },
                    // The DLQ copy: the job as it was received (the error is in the result).
                    OutboxMessage::Publish {
                        msg_id: msg_id::abandoned(&job.job_id),
                        subject: self.subjects.dlq(&job.connector, &job.kind),
                        payload: job.request.clone(),
                    },
                ]
            } else {
                Vec::new()
            };
            if self
                .store
                .finish_abandoned_job(&job.job_id, JobStatus::Failed.as_str(), &json, outbox)
                .await?
            {
                tracing::warn!(job_id = %job.job_id, "the job's last delivery died: answered failed");
                metrics::counter!("gitlab_worker_jobs_abandoned_total").increment(1);
                answered += 1;
            }
        }
        Ok(answered)
    }
}
