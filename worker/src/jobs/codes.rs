//! The result's error codes (docs/contract.md, "Results"), and the one mapping from every
//! error the jobs meet to them.

use gitlab_connector::Error as GitLabError;
use gitlab_connector::provision::ProvisionError;
use gitlab_connector::sync::SyncError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    InvalidJob,
    UnknownConnector,
    UserNotFound,
    TargetNotFound,
    GrantNotFound,
    Forbidden,
    TokenInvalid,
    RateLimited,
    Conflict,
    GitlabError,
    PartialSnapshot,
    ResidualAccess,
    PolicyDenied,
    SubjectMismatch,
    JobIdConflict,
    Timeout,
    Internal,
}

impl Code {
    pub const ALL: [Code; 17] = [
        Code::InvalidJob,
        Code::UnknownConnector,
        Code::UserNotFound,
        Code::TargetNotFound,
        Code::GrantNotFound,
        Code::Forbidden,
        Code::TokenInvalid,
        Code::RateLimited,
        Code::Conflict,
        Code::GitlabError,
        Code::PartialSnapshot,
        Code::ResidualAccess,
        Code::PolicyDenied,
        Code::SubjectMismatch,
        Code::JobIdConflict,
        Code::Timeout,
        Code::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidJob => "invalid_job",
            Code::UnknownConnector => "unknown_connector",
            Code::UserNotFound => "user_not_found",
            Code::TargetNotFound => "target_not_found",
            Code::GrantNotFound => "grant_not_found",
            Code::Forbidden => "forbidden",
            Code::TokenInvalid => "token_invalid",
            Code::RateLimited => "rate_limited",
            Code::Conflict => "conflict",
            Code::GitlabError => "gitlab_error",
            Code::PartialSnapshot => "partial_snapshot",
            Code::ResidualAccess => "residual_access",
            Code::PolicyDenied => "policy_denied",
            Code::SubjectMismatch => "subject_mismatch",
            Code::JobIdConflict => "job_id_conflict",
            Code::Timeout => "timeout",
            Code::Internal => "internal",
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&GitLabError> for Code {
    fn from(e: &GitLabError) -> Self {
        match e {
            GitLabError::TokenExpired { .. }
            | GitLabError::TokenRevoked { .. }
            | GitLabError::Unauthorized { .. } => Code::TokenInvalid,
            GitLabError::InsufficientScope { .. } | GitLabError::Forbidden { .. } => {
                Code::Forbidden
            }
            GitLabError::RateLimited { .. } | GitLabError::BudgetExhausted { .. } => {
                Code::RateLimited
            }
            GitLabError::Conflict { .. } | GitLabError::AlreadyMember { .. } => Code::Conflict,
            GitLabError::NotFoundOrHidden { .. } => Code::TargetNotFound,
            _ => Code::GitlabError,
        }
    }
}

impl From<&ProvisionError> for Code {
    fn from(e: &ProvisionError) -> Self {
        match e {
            ProvisionError::UserNotFound(_) => Code::UserNotFound,
            ProvisionError::TargetNotFound { .. } => Code::TargetNotFound,
            ProvisionError::GitLab(e) => e.into(),
        }
    }
}

impl From<&SyncError> for Code {
    fn from(e: &SyncError) -> Self {
        match e {
            SyncError::Auth(inner) => inner.into(),
            SyncError::Scope { source, .. } => source.into(),
            SyncError::InstanceNeedsAdmin => Code::Forbidden,
            SyncError::Write(_) => Code::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provisioning_errors_keep_their_own_codes() {
        assert_eq!(
            Code::from(&ProvisionError::UserNotFound("x".into())),
            Code::UserNotFound
        );
        assert_eq!(
            Code::from(&ProvisionError::GitLab(GitLabError::InvalidConfig(
                "x".into()
            ))),
            Code::GitlabError
        );
        assert_eq!(Code::InvalidJob.as_str(), "invalid_job");
    }
}
