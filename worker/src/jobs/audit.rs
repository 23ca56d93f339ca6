//! Every write in GitLab goes into the audit log, whoever makes it (a job or the JIT
//! scheduler), and ahead of the write: the entry is stored `pending` before the request is
//! sent and completed with the outcome (`ok` or an error code) after — for a job, in the
//! commit of its result (one statement with it on PostgreSQL). A write whose entry
//! cannot be stored is not made. An entry left `pending` says the worker stopped between the
//! two: the write may or may not have reached GitLab (the job's redelivery or the scheduler
//! reads the state and completes the work).

use std::future::Future;
use std::sync::{Mutex, PoisonError};

use chrono::Utc;
use gitlab_connector::Client;
use gitlab_connector::Error as GitLabError;
use gitlab_connector::api::{RemoveMember, Source};
use serde_json::Value;

use super::codes::Code;
use super::outcome::JobFailure;
use super::result::Change;
use crate::store::{AuditEntry, Settlement, Store, StoreError};

/// The outcome of an audited entry before its write is answered.
pub const PENDING: &str = "pending";

/// The outcome of a `pending` entry whose job's next delivery found the intended state: the
/// write was sent and the worker stopped before GitLab answered.
pub const CONFIRMED: &str = "confirmed";

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
    /// A job's: the outcomes are committed with its result. `None` (the scheduler): each
    /// outcome is stored as soon as the write is answered.
    settlement: Option<&'a Mutex<Settlement>>,
}

impl<'a> Audit<'a> {
    pub fn new(store: &'a Store, connector: &'a str, job_id: Option<&'a str>) -> Self {
        Self {
            store,
            connector,
            job_id,
            settlement: None,
        }
    }

    /// A job's audit: the outcomes of its writes go into `settlement`, committed with the
    /// job's result (or on their own when the job is handed back).
    pub fn settled_with(mut self, settlement: &'a Mutex<Settlement>) -> Self {
        self.settlement = Some(settlement);
        self
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

    /// Completes an entry, or leaves that to the job's commit. A failure leaves it `pending`
    /// (outcome unknown), which is logged: the write already happened and its result is not
    /// thrown away for the log.
    async fn finish(&self, id: i64, outcome: &str) {
        if let Some(settlement) = self.settlement {
            settlement
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .audit_outcomes
                .push((id, outcome.to_string()));
            return;
        }
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
    /// already gone is not an error (its entry says `not_found`). In a job that may be
    /// deferred, the deletion's slot of GitLab's per-group limit is reserved first: a slot too
    /// far away stops the job (`SlotLater`) before anything is audited or sent.
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
        client.reserve_member_delete(source).await?;
        match self
            .write(change, client.remove_member(source, user_id, options))
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            answer => answer,
        }
    }
}

/// Puts the writes an earlier delivery of `job_id` made (or sent before it stopped) in front of
/// `changes`, so that a job resumed after a crash reports everything it did, not only what was
/// left for the last delivery. Called when the delivery ended well, having re-read the state:
/// a `pending` entry's write is then known to have taken effect and its entry becomes
/// `confirmed`. Returns whether there were any.
pub async fn adopt_earlier_writes(
    store: &Store,
    job_id: &str,
    changes: &mut Vec<Change>,
) -> Result<bool, StoreError> {
    let mut earlier = Vec::new();
    for row in store.audit_entries(Some(job_id)).await? {
        let pending = row.outcome == PENDING;
        if !(pending || row.outcome == "ok") {
            continue;
        }
        let json = |t: &str| serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.into()));
        let change = Change {
            action: row.action,
            target: json(&row.target),
            user_id: row.user_id.and_then(|u| u64::try_from(u).ok()),
            email: None,
            before: row.before.as_deref().map(json),
            after: row.after.as_deref().map(json),
            note: Some(if pending {
                "sent by an earlier delivery of this job that stopped before GitLab answered; this delivery found it done".into()
            } else {
                "made by an earlier delivery of this job".into()
            }),
        };
        // This delivery's own writes are already in the list.
        let same = |c: &Change| {
            c.action == change.action && c.target == change.target && c.user_id == change.user_id
        };
        if changes.iter().chain(&earlier).any(same) {
            continue;
        }
        if pending {
            store.audit_finish(row.id, CONFIRMED).await?;
        }
        earlier.push(change);
    }
    let adopted = !earlier.is_empty();
    earlier.append(changes);
    *changes = earlier;
    Ok(adopted)
}
