//! The result envelope (docs/contract.md, "Results"; `schemas/gitlab-connector.result.v1.schema.json`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::codes::Code;
use super::envelope::{Job, Rejection};
use crate::subjects::{UNKNOWN_CONNECTOR, UNKNOWN_KIND};

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

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Noop => "noop",
            JobStatus::Failed => "failed",
            JobStatus::Rejected => "rejected",
        }
    }

    /// Failed and rejected jobs are copied to the DLQ.
    pub fn is_dead_lettered(self) -> bool {
        matches!(self, JobStatus::Failed | JobStatus::Rejected)
    }
}

impl JobError {
    pub fn new(code: Code, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.as_str().into(),
            message: message.into(),
            retryable,
        }
    }
}

impl JobResult {
    /// A result for a valid job, to be filled in by its handler.
    pub fn for_job(job: &Job, started_at: DateTime<Utc>, attempt: u32) -> Self {
        Self {
            schema: RESULT_SCHEMA.into(),
            job_id: job.job_id.to_string(),
            connector: job.connector.to_string(),
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
            job_id: r
                .job_id
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            connector: r
                .connector
                .as_ref()
                .map_or_else(|| UNKNOWN_CONNECTOR.into(), ToString::to_string),
            kind: r.kind.map_or(UNKNOWN_KIND, |k| k.as_str()).into(),
            status: JobStatus::Rejected,
            dry_run: false,
            started_at,
            finished_at: Utc::now(),
            attempt,
            changes: Vec::new(),
            error: Some(JobError::new(r.code, r.message.clone(), false)),
            snapshot: None,
            grant: None,
            residual_access: None,
            warnings: Vec::new(),
        }
    }
}

/// A value for a result or an event (member states, path lists): plain data always serializes.
pub fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("plain data serializes")
}
