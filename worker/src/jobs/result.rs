//! The result envelope (docs/contract.md, "Results"; `schemas/gitlab-connector.result.v1.schema.json`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::codes::Code;

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
    /// Set when the change list was too large for one message: `changes` holds its first
    /// entries and the object (`{"bucket", "name", "sha256", "bytes", "changes"}`) all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes_object: Option<Value>,
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

/// A value for a result or an event (member states, path lists): plain data always serializes.
pub fn to_value<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("plain data serializes")
}
