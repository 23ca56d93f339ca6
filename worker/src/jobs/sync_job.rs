//! `sync` jobs: crawl, write the snapshot to the spool, then store it, finish the job and queue
//! the result and events in one transaction.

use std::io::BufWriter;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use gitlab_connector::snapshot::ReadError;
use gitlab_connector::sync::{self, Scope, SnapshotMeta, SyncError, SyncOptions};
use serde_json::json;

use super::envelope::{Job, JobParams};
use super::events;
use super::handler::{Connector, Handler, Outcome, error_code, status_name};
use super::result::{JobError, JobResult, JobStatus};
use crate::store::{JobCompletion, OutboxMessage};

fn failure(mut r: JobResult, code: &str, message: String, retryable: bool) -> Outcome {
    r.status = JobStatus::Failed;
    r.finished_at = Utc::now();
    r.error = Some(JobError {
        code: code.into(),
        message,
        retryable,
    });
    Outcome {
        result: r,
        retry: retryable,
    }
}

/// Removes the spool file however the job ends.
struct Spool(PathBuf);

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) async fn run(
    h: &Handler,
    connector: &Connector,
    job: &Job,
    started: DateTime<Utc>,
    attempt: u32,
) -> Outcome {
    let result = JobResult::for_job(job, started, attempt);
    let JobParams::Sync { scope } = &job.params else {
        unreachable!("routed by kind");
    };
    let Some(scope_text) = scope.clone().or_else(|| connector.settings.scope.clone()) else {
        let mut r = result;
        r.status = JobStatus::Rejected;
        r.finished_at = Utc::now();
        r.error = Some(JobError {
            code: "invalid_job".into(),
            message: format!(
                "params.scope is missing and connector {:?} has no default scope (GITLAB_SCOPE); name a top-level group path or id, or \"instance\"",
                job.connector
            ),
            retryable: false,
        });
        return Outcome {
            result: r,
            retry: false,
        };
    };
    let scope = match Scope::parse(&scope_text) {
        Ok(s) => s,
        Err(e) => {
            let mut r = result;
            r.status = JobStatus::Rejected;
            r.finished_at = Utc::now();
            r.error = Some(JobError {
                code: "invalid_job".into(),
                message: format!("params.scope: {e}"),
                retryable: false,
            });
            return Outcome {
                result: r,
                retry: false,
            };
        }
    };
    if job.dry_run {
        // A sync writes nothing in GitLab; a dry run reads and reports without storing.
        tracing::info!("dry-run sync: the snapshot is read but not stored");
    }
    let prev = match h
        .store
        .latest_snapshot(&job.connector, &scope_text, false)
        .await
    {
        Ok(p) => p,
        Err(e) => return failure(result, "internal", format!("the job store: {e}"), true),
    };
    let meta = SnapshotMeta::new(&job.connector, &scope_text);
    let snapshot_id = meta.snapshot_id.clone();
    if let Err(e) = std::fs::create_dir_all(&h.spool_dir) {
        return failure(
            result,
            "internal",
            format!(
                "cannot create the spool folder {}: {e}",
                h.spool_dir.display()
            ),
            true,
        );
    }
    let spool = Spool(h.spool_dir.join(format!("{snapshot_id}.ndjson")));
    let file = match std::fs::File::create(&spool.0) {
        Ok(f) => BufWriter::new(f),
        Err(e) => {
            return failure(
                result,
                "internal",
                format!("cannot write {}: {e}", spool.0.display()),
                true,
            );
        }
    };
    let opts = SyncOptions::new(scope);
    let outcome = sync::run(
        &connector.client,
        &opts,
        meta,
        prev.as_ref().map(|p| p.sha256.clone()),
        file,
    )
    .await;
    let summary = match outcome {
        Ok((summary, _)) => summary,
        Err(e) => {
            let (code, retryable) = match &e {
                SyncError::Auth(inner) => (error_code(inner), false),
                SyncError::Scope { source, .. } => (error_code(source), source.is_transient()),
                SyncError::InstanceNeedsAdmin => ("forbidden", false),
                SyncError::Write(_) => ("internal", true),
            };
            return failure(result, code, e.to_string(), retryable);
        }
    };
    let mut r = result;
    r.finished_at = Utc::now();
    r.snapshot = Some(json!({
        "snapshot_id": summary.snapshot_id,
        "sha256": summary.sha256,
        "complete": summary.complete,
        "counts": summary.counts,
        "api_requests": summary.api_requests,
        "prev_sha256": summary.prev_sha256,
    }));
    r.warnings = summary.warnings.clone();
    if summary.complete {
        r.status = JobStatus::Succeeded;
    } else {
        // Stored and announced like any snapshot, but the job failed: something in the scope
        // could not be read, and a governance platform must not take the snapshot as the whole.
        r.status = JobStatus::Failed;
        let what: Vec<String> = summary
            .errors
            .iter()
            .take(5)
            .map(|e| format!("{} ({})", e.what, e.code))
            .collect();
        r.error = Some(JobError {
            code: "partial_snapshot".into(),
            message: format!(
                "the snapshot is partial: {} item(s) could not be read: {}{}",
                summary.errors.len(),
                what.join("; "),
                if summary.errors.len() > 5 {
                    "; ..."
                } else {
                    ""
                }
            ),
            retryable: true,
        });
    }
    if job.dry_run {
        return Outcome {
            result: r,
            retry: false,
        };
    }

    let json = serde_json::to_string(&r).expect("results serialize");
    let mut outbox = Vec::new();
    if h.publish {
        match announce(h, job, &spool.0, &summary.snapshot_id, &scope_text).await {
            Ok(mut msgs) => outbox.append(&mut msgs),
            Err(e) => {
                return failure(
                    r,
                    "internal",
                    format!("cannot prepare the snapshot's events: {e}"),
                    true,
                );
            }
        }
        outbox.push(h.result_message(&r, &json));
    }
    let stored = h
        .store
        .store_snapshot_with(
            &spool.0,
            Some(&job.job_id),
            Some(JobCompletion {
                job_id: &job.job_id,
                status: status_name(r.status),
                result: &json,
                outbox,
            }),
        )
        .await;
    match stored {
        Ok(s) => {
            tracing::info!(
                snapshot_id = %s.info.snapshot_id,
                complete = s.info.complete,
                rows_inserted = s.rows_inserted,
                rows_closed = s.rows_closed,
                rows_unchanged = s.rows_unchanged,
                "snapshot stored"
            );
            Outcome {
                result: r,
                retry: false,
            }
        }
        Err(e) => failure(
            r,
            "internal",
            format!("cannot store the snapshot: {e}"),
            true,
        ),
    }
}

/// The snapshot's object upload, its summary event and its access-diff events.
async fn announce(
    h: &Handler,
    job: &Job,
    path: &Path,
    snapshot_id: &str,
    scope: &str,
) -> Result<Vec<OutboxMessage>, ReadError> {
    let base = h
        .store
        .latest_snapshot(&job.connector, scope, true)
        .await
        .map_err(|e| ReadError::Io(std::io::Error::other(e.to_string())))?;
    // The previous complete snapshot is exported from the store to diff against.
    let base_file = match &base {
        None => None,
        Some(info) => {
            let model = h
                .store
                .find_snapshot(&info.snapshot_id)
                .await
                .map_err(|e| ReadError::Io(std::io::Error::other(e.to_string())))?;
            let p = h.spool_dir.join(format!("{}.base.ndjson", snapshot_id));
            let mut f = BufWriter::new(std::fs::File::create(&p)?);
            h.store
                .export_snapshot(&model, &mut f)
                .await
                .map_err(|e| ReadError::Io(std::io::Error::other(e.to_string())))?;
            Some(Spool(p))
        }
    };
    let object_name = format!("{}/{}.ndjson", job.connector, snapshot_id);
    let mut msgs = vec![OutboxMessage::SnapshotObject {
        msg_id: format!("{snapshot_id}:object"),
        object_name: object_name.clone(),
        snapshot_id: snapshot_id.to_string(),
    }];
    let ev = events::build(
        &h.subjects,
        &job.job_id,
        path,
        base_file.as_ref().map(|s| s.0.as_path()),
        &object_name,
    )?;
    msgs.extend(ev);
    Ok(msgs)
}
