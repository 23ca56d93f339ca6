//! What a job's `execute` returns: [`Done`] (succeeded or noop) or a [`JobFailure`]. Errors
//! convert into failures with their result code, so a job body uses `?` instead of writing an
//! early return for each error.

use gitlab_connector::provision::ProvisionError;

use super::codes::Code;
use super::result::{JobError, JobStatus};
use crate::store::StoreError;

/// A job that ran to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Changes were made (or, in a dry run, all planned changes were listed).
    Succeeded,
    /// Nothing to change.
    Noop,
}

impl Done {
    pub fn status(self) -> JobStatus {
        match self {
            Done::Succeeded => JobStatus::Succeeded,
            Done::Noop => JobStatus::Noop,
        }
    }

    /// `Succeeded` when anything was changed (or planned), else `Noop`.
    pub fn by_changes(changed: bool) -> Self {
        if changed { Done::Succeeded } else { Done::Noop }
    }
}

/// A job that could not do what it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    /// `Failed` (attempted) or `Rejected` (bad input, never retried).
    pub status: JobStatus,
    pub code: Code,
    pub message: String,
    /// What the result tells the platform: publishing the job again may succeed.
    pub retryable: bool,
    /// Hand the delivery back to the queue for another attempt (a transient failure) instead of
    /// answering now; on the last delivery the failure is answered.
    pub hand_back: bool,
}

impl JobFailure {
    /// Failed for good.
    pub fn failed(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: JobStatus::Failed,
            code,
            message: message.into(),
            retryable: false,
            hand_back: false,
        }
    }

    /// Failed for now: another delivery tries again.
    pub fn transient(code: Code, message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            hand_back: true,
            ..Self::failed(code, message)
        }
    }

    /// Bad input: answered `rejected`, never retried.
    pub fn rejected(code: Code, message: impl Into<String>) -> Self {
        Self {
            status: JobStatus::Rejected,
            ..Self::failed(code, message)
        }
    }

    /// Marks the failure as worth publishing again, without handing the delivery back.
    pub fn retryable_later(mut self) -> Self {
        self.retryable = true;
        self.hand_back = false;
        self
    }

    pub fn error(&self) -> JobError {
        JobError::new(self.code, self.message.clone(), self.retryable)
    }
}

impl From<ProvisionError> for JobFailure {
    fn from(e: ProvisionError) -> Self {
        let code = Code::from(&e);
        if e.is_transient() {
            Self::transient(code, e.to_string())
        } else {
            Self::failed(code, e.to_string())
        }
    }
}

impl From<gitlab_connector::Error> for JobFailure {
    fn from(e: gitlab_connector::Error) -> Self {
        ProvisionError::GitLab(e).into()
    }
}

impl From<StoreError> for JobFailure {
    fn from(e: StoreError) -> Self {
        Self::transient(Code::Internal, format!("the job store: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_gitlab_errors_are_handed_back_and_others_are_final() {
        let server = gitlab_connector::Error::Server {
            route: gitlab_connector::error::Route::new("GET", "/x"),
            status: 502,
            message: "bad gateway".into(),
            retry_after: None,
        };
        let f = JobFailure::from(server);
        assert!(f.hand_back && f.retryable);
        assert_eq!(f.code, Code::GitlabError);
        let f = JobFailure::from(ProvisionError::UserNotFound("id 7".into()));
        assert!(!f.hand_back && !f.retryable);
        assert_eq!(f.code, Code::UserNotFound);
        assert_eq!(f.status, JobStatus::Failed);
    }
}
