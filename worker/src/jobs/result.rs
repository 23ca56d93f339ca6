//! The result envelope (interface.md section 4).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::envelope::{Job, Rejection};

pub const RESULT_SCHEMA: &str = "gitlab-connector.result.v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Changes were made (or, in a dry run, all planned changes were listed).
    Succeeded,
    /// Nothing to change.
    Noop,
    /// Attempted and failed permanently.
    Failed,
    /// Bad input; never retried.
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
}

/// One change made (or planned) in GitLab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub action: String,
    pub target: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub schema: String,
    pub job_id: String,
    pub connector: String,
    pub kind: String,
    pub status: JobStatus,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub attempt: u32,
    pub changes: Vec<Change>,
    pub error: Option<JobError>,
    /// Sync jobs: `{"snapshot_id", "sha256", "complete", "counts"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Value>,
    /// Grant jobs: `{"expires_at", "gitlab_expires_at"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<Value>,
    /// Revoke and deprovision jobs: access left through other paths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual_access: Option<Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The kind segment of result and DLQ subjects when the job's kind could not be read.
pub const UNKNOWN_KIND: &str = "invalid";
/// The connector segment when the job's connector could not be read.
pub const UNKNOWN_CONNECTOR: &str = "unknown";

impl JobResult {
    /// A result for a valid job, to be filled in by its handler.
    pub fn for_job(job: &Job, started_at: DateTime<Utc>, attempt: u32) -> Self {
        Self {
            schema: RESULT_SCHEMA.into(),
            job_id: job.job_id.clone(),
            connector: job.connector.clone(),
            kind: job.kind().as_str().into(),
            status: JobStatus::Noop,
            dry_run: job.dry_run,
            started_at,
            finished_at: started_at,
            attempt,
            changes: Vec::new(),
            error: None,
            snapshot: None,
            grant: None,
            residual_access: None,
            warnings: Vec::new(),
        }
    }

    /// The answer to a job that could not be accepted.
    pub fn rejected(r: &Rejection, started_at: DateTime<Utc>, attempt: u32) -> Self {
        Self {
            schema: RESULT_SCHEMA.into(),
            job_id: r.job_id.clone().unwrap_or_default(),
            connector: r
                .connector
                .clone()
                .unwrap_or_else(|| UNKNOWN_CONNECTOR.into()),
            kind: r.kind.map_or(UNKNOWN_KIND, |k| k.as_str()).into(),
            status: JobStatus::Rejected,
            dry_run: false,
            started_at,
            finished_at: Utc::now(),
            attempt,
            changes: Vec::new(),
            error: Some(JobError {
                code: "invalid_job".into(),
                message: r.message.clone(),
                retryable: false,
            }),
            snapshot: None,
            grant: None,
            residual_access: None,
            warnings: Vec::new(),
        }
    }
}
