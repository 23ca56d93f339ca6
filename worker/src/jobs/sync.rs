//! `sync`: crawl the scope into a snapshot in the spool folder, then hand it to the handler,
//! which stores it, finishes the job and queues the result and the snapshot's events in one
//! transaction.

use std::io::BufWriter;

use gitlab_connector::client::IdOrPath;
use gitlab_connector::model::Summary;
use gitlab_connector::snapshot::ReadError;
use gitlab_connector::sync::{self, Scope, SnapshotMeta, SyncError, SyncOptions};
use serde_json::json;

use super::codes::Code;
use super::context::{JobContext, PendingSnapshot, SpoolFile};
use super::events;
use super::fields::{self, Fail, Fields};
use super::guard;
use super::outcome::{Done, JobFailure};
use super::scope_lock;
use crate::store::OutboxMessage;
use crate::subjects::msg_id;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// A top-level group path or id, or `instance`; the connector's scope when `None`.
    pub scope: Option<String>,
}

impl Params {
    pub fn parse(p: &Fields) -> Result<Self, Fail> {
        fields::only_keys(p, &["scope"], "`params` of a sync job")?;
        Ok(Self {
            scope: p
                .get("scope")
                .map(|v| fields::text(v, "scope"))
                .transpose()?,
        })
    }
}

fn sync_failure(e: &SyncError) -> JobFailure {
    let transient = match e {
        SyncError::Auth(_) | SyncError::InstanceNeedsAdmin => false,
        SyncError::Scope { source, .. } => source.is_transient(),
        SyncError::Write(_) => true,
    };
    if transient {
        JobFailure::transient(Code::from(e), e.to_string())
    } else {
        JobFailure::failed(Code::from(e), e.to_string())
    }
}

/// A partial snapshot's failure: stored and announced like any snapshot, but the job failed
/// (something in the scope could not be read, and a platform must not take it for the whole).
fn partial(errors: &[gitlab_connector::model::ReadFailure]) -> JobFailure {
    let what: Vec<String> = errors
        .iter()
        .take(5)
        .map(|e| format!("{} ({})", e.what, e.code))
        .collect();
    JobFailure::failed(
        Code::PartialSnapshot,
        format!(
            "the snapshot is partial: {} item(s) could not be read: {}{}",
            errors.len(),
            what.join("; "),
            if errors.len() > 5 { "; ..." } else { "" }
        ),
    )
    .retryable_later()
}

/// Why a full sync runs: asked for (`sync`), or to find what the live state missed
/// (`reconcile`: its differences are drift).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Sync,
    Reconcile,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Sync => "sync",
            Cause::Reconcile => "reconcile",
        }
    }
}

pub async fn execute(
    ctx: &mut JobContext<'_>,
    params: &Params,
    cause: Cause,
) -> Result<Done, JobFailure> {
    let connector = ctx.connector.clone();
    let Some(scope_text) = params
        .scope
        .clone()
        .or_else(|| connector.settings.scope.clone())
    else {
        return Err(JobFailure::rejected(
            Code::InvalidJob,
            format!(
                "`params.scope` is missing and connector {:?} has no default scope (GITLAB_SCOPE); name a top-level group path or id, or \"instance\"",
                ctx.job.connector.as_str()
            ),
        ));
    };
    let scope = Scope::parse(&scope_text)
        .map_err(|e| JobFailure::rejected(Code::InvalidJob, format!("`params.scope`: {e}")))?;
    if params.scope.is_some() {
        let wanted = match &scope {
            Scope::Instance => None,
            Scope::Group(IdOrPath::Path(p)) => Some(p.clone()),
            Scope::Group(id) => Some(connector.client.group(id).await?.full_path),
        };
        guard::sync_scope_allowed(&connector, wanted.as_deref()).await?;
    }
    if ctx.job.dry_run {
        // A sync writes nothing in GitLab; a dry run reads and reports without storing.
        tracing::info!("dry-run sync: the snapshot is read but not stored");
    }
    let connector_id = ctx.job.connector.as_str();
    // Taken before the previous snapshot is read: the chain is extended by one sync at a time.
    let lock = scope_lock::acquire(
        ctx.store,
        scope_lock::lease_name(connector_id, &scope_text),
        // The job, not the worker, holds it: a redelivery after a crash takes it over at once
        // (the job's own lease already keeps two attempts of one job apart).
        format!("job/{}", ctx.job.job_id.as_str()),
    )
    .await?;
    let prev = ctx
        .store
        .latest_snapshot(connector_id, &scope_text, false)
        .await?;
    let meta = SnapshotMeta::new(connector_id, &scope_text);
    let snapshot_id = meta.snapshot_id.clone();
    crate::files::private_dir(ctx.spool_dir).map_err(|e| {
        JobFailure::transient(
            Code::Internal,
            format!(
                "cannot create the spool folder {}: {e}",
                ctx.spool_dir.display()
            ),
        )
    })?;
    let spool = SpoolFile::new(ctx.spool_dir.join(format!("{snapshot_id}.ndjson")));
    let file = crate::files::create_private(spool.path()).map_err(|e| {
        JobFailure::transient(
            Code::Internal,
            format!("cannot write {}: {e}", spool.path().display()),
        )
    })?;
    let (summary, _) = sync::run(
        &connector.client,
        &SyncOptions::new(scope),
        meta.clone(),
        prev.map(|p| p.sha256),
        BufWriter::new(file),
    )
    .await
    .map_err(|e| sync_failure(&e))?;
    tracing::debug!(
        snapshot_id = %summary.snapshot_id,
        api_requests = summary.api_requests,
        "scope read and snapshot written"
    );
    ctx.report.snapshot = Some(json!({
        "snapshot_id": summary.snapshot_id,
        "sha256": summary.sha256,
        "complete": summary.complete,
        "counts": summary.counts,
        "api_requests": summary.api_requests,
        "prev_sha256": summary.prev_sha256,
    }));
    ctx.report.warnings = summary.warnings.clone();
    let outcome = if summary.complete {
        Ok(Done::Succeeded)
    } else {
        Err(partial(&summary.errors))
    };
    if ctx.job.dry_run {
        return outcome;
    }
    let events = if ctx.publish {
        announce(ctx, &meta, &summary, cause).await.map_err(|e| {
            JobFailure::transient(
                Code::Internal,
                format!("cannot prepare the snapshot's events: {e}"),
            )
        })?
    } else {
        Vec::new()
    };
    ctx.snapshot = Some(PendingSnapshot {
        file: spool,
        events,
        scope: lock,
    });
    outcome
}

fn io(e: impl std::fmt::Display) -> ReadError {
    ReadError::Io(std::io::Error::other(e.to_string()))
}

/// The snapshot's object upload, its summary event and its access-diff events (described
/// here, built when they are published: see `events::AccessEvents`).
async fn announce(
    ctx: &JobContext<'_>,
    meta: &SnapshotMeta,
    summary: &Summary,
    cause: Cause,
) -> Result<Vec<OutboxMessage>, ReadError> {
    let (connector, scope, snapshot_id) = (
        meta.connector.as_str(),
        meta.scope.as_str(),
        meta.snapshot_id.as_str(),
    );
    let base = ctx
        .store
        .latest_snapshot(connector, scope, true)
        .await
        .map_err(io)?;
    // Diffed against the live state: the base with the change batches stored on it so far,
    // so what hooks already announced is not announced again.
    let base_batch_id = match &base {
        Some(b) => ctx
            .store
            .last_batch_on(connector, scope, b.seq)
            .await
            .map_err(io)?,
        None => None,
    };
    let object_name = format!("{connector}/{snapshot_id}.ndjson");
    let access = events::AccessEvents {
        job_id: ctx.job.job_id.to_string(),
        connector: connector.to_string(),
        scope: scope.to_string(),
        snapshot_id: snapshot_id.to_string(),
        base_snapshot_id: base.map(|b| b.snapshot_id),
        base_batch_id,
        cause: cause.as_str().to_string(),
        object: serde_json::json!({"bucket": ctx.subjects.snapshot_bucket(), "name": object_name}),
        sent: 0,
    };
    let summary_event = events::snapshot_event(
        ctx.subjects,
        ctx.job.job_id.as_str(),
        meta,
        summary,
        &object_name,
    );
    Ok(vec![
        OutboxMessage::SnapshotObject {
            msg_id: msg_id::snapshot_object(snapshot_id),
            object_name: object_name.clone(),
            snapshot_id: snapshot_id.to_string(),
        },
        summary_event,
        access.message(ctx.subjects),
    ])
}
