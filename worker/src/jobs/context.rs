//! What a job receives (svix's `WorkerContext`): the store, subjects, spool, clock and its
//! connector, the facts of the job itself, and the result body it fills in. Jobs never see the
//! handler that dispatches them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::audit::Audit;
use super::result::Change;
use crate::connector::Connector;
use crate::ids::{ConnectorId, JobId};
use crate::store::{OutboxMessage, Settlement, Store, StoreError};
use crate::subjects::Subjects;

/// Where "now" comes from: the system clock, or a fixed instant in tests.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Self(Arc::new(Utc::now))
    }

    pub fn fixed(at: DateTime<Utc>) -> Self {
        Self(Arc::new(move || at))
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// The facts of the job being executed (the envelope without its parameters).
#[derive(Debug, Clone)]
pub struct JobMeta {
    pub job_id: JobId,
    pub connector: ConnectorId,
    pub dry_run: bool,
    pub requested_by: Option<String>,
    pub reason: Option<String>,
    pub started_at: DateTime<Utc>,
    pub attempt: u32,
}

/// The body of the result a job fills in as it goes; what it holds when the job fails is
/// reported too (the changes made before the failure).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
    pub snapshot: Option<Value>,
    pub grant: Option<Value>,
    pub residual_access: Option<Value>,
}

/// A file in the spool folder, removed however the job ends.
#[derive(Debug)]
pub struct SpoolFile(PathBuf);

impl SpoolFile {
    pub fn new(path: PathBuf) -> Self {
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A sync's snapshot, to be stored in the transaction that finishes its job, with the events
/// that announce it.
#[derive(Debug)]
pub struct PendingSnapshot {
    pub file: SpoolFile,
    pub events: Vec<OutboxMessage>,
    /// The scope stays this job's until its snapshot is stored.
    pub scope: super::scope_lock::ScopeLock,
}

pub struct JobContext<'a> {
    pub store: &'a Store,
    pub subjects: &'a Subjects,
    pub spool_dir: &'a Path,
    pub clock: &'a Clock,
    pub connector: Arc<Connector>,
    /// Results and events go to the outbox (false for `run-job`, which only prints).
    pub publish: bool,
    pub job: JobMeta,
    pub report: Report,
    /// Set by a sync whose snapshot must be stored with the job's result.
    pub snapshot: Option<PendingSnapshot>,
    /// Store writes committed with the job's result (see [`Settlement`]). A lock only so that
    /// an [`Audit`] borrowed from the context can add to it; never held across an await.
    pub settlement: Mutex<Settlement>,
}

impl JobContext<'_> {
    pub fn audit(&self) -> Audit<'_> {
        Audit::new(
            self.store,
            self.job.connector.as_str(),
            Some(self.job.job_id.as_str()),
        )
        .settled_with(&self.settlement)
    }

    /// What the job leaves to be committed with its result.
    pub fn settlement(&mut self) -> &mut Settlement {
        self.settlement
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The checkpoint an earlier attempt of this job stored, if any.
    pub async fn checkpoint(&self) -> Result<Option<Value>, StoreError> {
        Ok(self
            .store
            .job(self.job.job_id.as_str())
            .await?
            .and_then(|j| j.progress)
            .and_then(|p| serde_json::from_str(&p).ok()))
    }

    pub async fn save_checkpoint(&self, checkpoint: &Value) -> Result<(), StoreError> {
        self.store
            .save_progress(self.job.job_id.as_str(), &checkpoint.to_string())
            .await
    }
}
