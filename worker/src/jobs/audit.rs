//! Every write in GitLab goes into the audit log, whoever makes it (a job or the JIT
//! scheduler), and ahead of the write: the entry is stored `pending` before the request is
//! sent and completed with the outcome (`ok` or an error code) after. A write whose entry
//! cannot be stored is not made. An entry left `pending` says the worker stopped between the
//! two: the write may or may not have reached GitLab (the job's redelivery or the scheduler
//! reads the state and completes the work).

use std::future::Future;

use chrono::Utc;
use gitlab_connector::Client;
use gitlab_connector::Error as GitLabError;
use gitlab_connector::api::{RemoveMember, Source};

use super::codes::Code;
use super::outcome::JobFailure;
use super::result::Change;
use crate::store::{AuditEntry, Store, StoreError};

/// The outcome of an audited entry before its write is answered.
pub const PENDING: &str = "pending";

/// A write that was audited ahead, or not made.
#[derive(Debug, thiserror::Error)]
pub enum AuditedError {
    #[error(
        "the audit log cannot be written ({0}); nothing was written to GitLab. Check the database; the job is tried again"
    )]
    NotRecorded(StoreError),
    #[error(transparent)]
    GitLab(#[from] GitLabError),
}

impl AuditedError {
    /// A GitLab answer that means the thing to remove is already gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, AuditedError::GitLab(e) if e.is_not_found())
    }
}

impl From<AuditedError> for JobFailure {
    fn from(e: AuditedError) -> Self {
        match e {
            AuditedError::GitLab(g) => g.into(),
            not_recorded => JobFailure::transient(Code::Internal, not_recorded.to_string()),
        }
    }
}

pub struct Audit<'a> {
    store: &'a Store,
    connector: &'a str,
    job_id: Option<&'a str>,
}

impl<'a> Audit<'a> {
    pub fn new(store: &'a Store, connector: &'a str, job_id: Option<&'a str>) -> Self {
        Self {
            store,
            connector,
            job_id,
        }
    }

    fn entry(&self, change: &Change, outcome: &str) -> AuditEntry {
        AuditEntry {
            at: Utc::now(),
            connector: self.connector.to_string(),
            job_id: self.job_id.map(str::to_string),
            action: change.action.clone(),
            target: change.target.clone(),
            user_id: change.user_id,
            before: change.before.clone(),
            after: change.after.clone(),
            outcome: outcome.to_string(),
        }
    }

    /// Stores `change` as pending, then runs `write` (not started when the entry cannot be
    /// stored: an unsent request future sends nothing), then completes the entry with the
    /// outcome (`ok`, or GitLab's error code).
    pub async fn write<T, F>(&self, change: &Change, write: F) -> Result<T, AuditedError>
    where
        F: Future<Output = Result<T, GitLabError>>,
    {
        let id = self
            .store
            .audit_begin(self.entry(change, PENDING))
            .await
            .map_err(AuditedError::NotRecorded)?;
        let answer = write.await;
        let outcome = match &answer {
            Ok(_) => "ok",
            Err(e) => e.code(),
        };
        self.finish(id, outcome).await;
        answer.map_err(AuditedError::GitLab)
    }

    /// Completes an entry; a failure leaves it `pending` (outcome unknown), which is logged:
    /// the write already happened and its result is not thrown away for the log.
    async fn finish(&self, id: i64, outcome: &str) {
        if let Err(e) = self.store.audit_finish(id, outcome).await {
            tracing::error!(
                audit_id = id,
                "the audit entry could not be completed with {outcome:?}: {e}; it stays pending"
            );
        }
    }

    /// Records a write made under a write-ahead record of its own (a token rotation, whose
    /// marker file stays until the new token is safe): the entry is stored after the fact.
    pub async fn record_done(&self, change: &Change, outcome: &str) {
        if let Err(e) = self.store.audit_begin(self.entry(change, outcome)).await {
            tracing::error!("the audit log could not be written: {e}");
        }
    }

    /// Removes a user's direct membership on `source` only (`skip_subresources`). A membership
    /// already gone is not an error (its entry says `not_found`).
    pub async fn remove_direct(
        &self,
        client: &Client,
        source: &Source,
        user_id: u64,
        change: &Change,
    ) -> Result<(), AuditedError> {
        let options = RemoveMember {
            skip_subresources: true,
            unassign_issuables: false,
        };
        match self
            .write(change, client.remove_member(source, user_id, options))
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            answer => answer,
        }
    }
}
