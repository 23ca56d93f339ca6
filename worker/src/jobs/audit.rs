//! Every write in GitLab goes into the audit log with its outcome, whoever makes it (a job or
//! the JIT scheduler).

use chrono::Utc;
use gitlab_connector::Client;
use gitlab_connector::Error as GitLabError;
use gitlab_connector::api::{RemoveMember, Source};

use super::result::Change;
use crate::store::{AuditEntry, Store};

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

    /// Records `change` with `outcome` (`ok` or an error code). A failure to write the log is
    /// logged, not raised: the write in GitLab already happened.
    pub async fn record(&self, change: &Change, outcome: &str) {
        let entry = AuditEntry {
            at: Utc::now(),
            connector: self.connector.to_string(),
            job_id: self.job_id.map(str::to_string),
            action: change.action.clone(),
            target: change.target.clone(),
            user_id: change.user_id,
            before: change.before.clone(),
            after: change.after.clone(),
            outcome: outcome.to_string(),
        };
        if let Err(e) = self.store.audit(entry).await {
            tracing::error!("the audit log could not be written: {e}");
        }
    }

    /// Records the outcome of a write GitLab answered, and passes the answer on.
    pub async fn write<T>(
        &self,
        change: &Change,
        answer: Result<T, GitLabError>,
    ) -> Result<T, GitLabError> {
        match &answer {
            Ok(_) => self.record(change, "ok").await,
            Err(e) => self.record(change, e.code()).await,
        }
        answer
    }

    /// Removes a user's direct membership on `source` only (`skip_subresources`). A membership
    /// already gone is not an error and leaves no entry.
    pub async fn remove_direct(
        &self,
        client: &Client,
        source: &Source,
        user_id: u64,
        change: &Change,
    ) -> Result<(), GitLabError> {
        let options = RemoveMember {
            skip_subresources: true,
            unassign_issuables: false,
        };
        match client.remove_member(source, user_id, options).await {
            Err(e) if e.is_not_found() => Ok(()),
            answer => self.write(change, answer).await,
        }
    }
}
