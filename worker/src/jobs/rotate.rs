//! Token rotation: the `rotate_token` job and the automatic check. The new token is written to
//! the token file atomically (temp file, fsync, rename, mode 0600) *before* it is used, the
//! rotate call is sent once, and a marker file makes a crash between rotation and write visible
//! on the next start: GitLab's reuse detection revokes the whole token family if the old,
//! rotated token is used again, so the worker must not carry on as if nothing happened.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{Duration as ChronoDuration, Utc};
use gitlab_connector::Secret;
use gitlab_connector::api::Capability;
use serde_json::json;

use super::codes::Code;
use super::context::JobContext;
use super::fields::{self, Fail, Fields};
use super::outcome::{Done, JobFailure};
use super::result::Change;
use crate::connector::Connector;
use crate::store::Store;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Rotate only when the token expires within this many days (always when `None`).
    pub min_days_left: Option<u32>,
}

impl Params {
    pub fn parse(p: &Fields) -> Result<Self, Fail> {
        fields::only_keys(p, &["min_days_left"], "`params` of a rotate_token job")?;
        let min_days_left =
            match p.get("min_days_left") {
                None => None,
                Some(v) => Some(v.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(
                    || {
                        format!(
                            "`min_days_left` must be a whole number of days, not {}",
                            fields::shown(v)
                        )
                    },
                )?),
            };
        Ok(Self { min_days_left })
    }
}

/// Lifetime of a rotated token.
pub const ROTATED_LIFETIME_DAYS: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    #[error(
        "connector {0:?} reads its token from an environment variable: rotation is refused because the new token could not be saved; use GITLAB_TOKEN_FILE (or token_file) to allow rotation"
    )]
    EnvToken(String),
    #[error("GitLab: {0}")]
    GitLab(#[from] gitlab_connector::Error),
    #[error(
        "GitLab rotated the token but the new one could not be written to {path}: {message}. The old token is revoked; do not use it again (GitLab would revoke the whole token family). Create a new token and write it to {path}"
    )]
    Write { path: String, message: String },
    #[error(
        "another worker is rotating connector {0:?}'s token now; the job is tried again once it is done"
    )]
    Busy(String),
    #[error(
        "the rotation's outcome is unknown ({0}): GitLab may have rotated the token. The marker file stays; the next start checks whether the token in the file still works"
    )]
    Unknown(String),
    #[error("the job store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// What a rotation check did.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub rotated: bool,
    /// Another worker had rotated the token: this one took the new token from the file.
    pub rotated_elsewhere: bool,
    pub days_left: Option<i64>,
    pub new_expires_at: Option<chrono::NaiveDate>,
    pub token_id: u64,
}

pub fn marker_path(token_file: &Path) -> PathBuf {
    let mut name = token_file.file_name().unwrap_or_default().to_os_string();
    name.push(".rotating");
    token_file.with_file_name(name)
}

/// Writes `content` to a new private file at `path` (a stale one from a crash is replaced,
/// a symlink there is never followed), and syncs it.
fn write_synced(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut f = crate::files::replace_private(path)?;
    f.write_all(content)?;
    f.sync_all()
}

fn sync_dir(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?
        .sync_all()?;
    }
    Ok(())
}

/// Writes `token` to `path` atomically: a temp file beside it, fsync, rename, fsync the folder.
pub fn write_token_file(path: &Path, token: &Secret) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".new");
    let tmp = path.with_file_name(tmp_name);
    write_synced(&tmp, format!("{}\n", token.expose()).as_bytes())?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// A token rotated less than this ago is not rotated again by another job.
pub const JUST_ROTATED: Duration = Duration::from_secs(60);

/// How long one worker holds a connector's rotation (a rotation is one request and a file write).
pub const ROTATION_LEASE: Duration = Duration::from_secs(120);

/// Takes the token in `path` when it is not the one the client sends: another worker (or a
/// person) put a new one there. Returns whether it changed.
pub fn reload_token_file(c: &Connector, path: &Path) -> Result<bool, std::io::Error> {
    let text = std::fs::read_to_string(path)?;
    let token = Secret::new(text.trim());
    if token.is_empty() || c.client.uses_token(&token) {
        return Ok(false);
    }
    c.client.set_token(&token).map_err(std::io::Error::other)?;
    c.mark_rotated();
    tracing::info!(connector = %c.settings.id, "the token file changed: the new token is used from now on");
    Ok(true)
}

/// Rotates the connector's token when it expires within `min_days_left` days (always when
/// `None`). One rotation at a time per connector: in this process (a lock) and across workers
/// (a lease in the database); a token another worker just rotated is taken from the file
/// instead of being rotated again. Never retried: a rotate sent twice would present a revoked
/// token.
pub async fn rotate(
    store: &Store,
    c: &Connector,
    min_days_left: Option<u32>,
    dry_run: bool,
) -> Result<Rotation, RotationError> {
    let Some(path) = c.settings.token_file.clone() else {
        return Err(RotationError::EnvToken(c.settings.id.to_string()));
    };
    let _one_here = c.rotation_lock().await;
    let lease = format!("rotate_token {}", c.settings.id);
    if !dry_run
        && !store
            .try_lease(&lease, c.lease_holder(), ROTATION_LEASE)
            .await?
    {
        return Err(RotationError::Busy(c.settings.id.to_string()));
    }
    let result = rotate_held(c, &path, min_days_left, dry_run).await;
    if !dry_run && let Err(e) = store.release_named_lease(&lease, c.lease_holder()).await {
        tracing::warn!("the rotation lease could not be released ({e}); it ends by itself");
    }
    result
}

async fn rotate_held(
    c: &Connector,
    path: &Path,
    min_days_left: Option<u32>,
    dry_run: bool,
) -> Result<Rotation, RotationError> {
    // The file is the truth: another worker may have rotated while this one waited. A token
    // that changed a moment ago (here or elsewhere) is not rotated again by a second job.
    let reloaded = reload_token_file(c, path).map_err(|e| RotationError::Write {
        path: path.display().to_string(),
        message: format!("cannot read the token file ({e}); nothing was rotated"),
    })?;
    let elsewhere = !dry_run && (reloaded || c.rotated_within(JUST_ROTATED));
    let current = c.client.token_self().await?;
    let today = Utc::now().date_naive();
    let days_left = current.expires_at.map(|d| (d - today).num_days());
    let fresh_enough =
        matches!((min_days_left, days_left), (Some(min), Some(left)) if left > i64::from(min));
    if elsewhere || fresh_enough {
        return Ok(Rotation {
            rotated: false,
            rotated_elsewhere: elsewhere,
            days_left,
            new_expires_at: None,
            token_id: current.id,
        });
    }
    let expires_at = today + ChronoDuration::days(ROTATED_LIFETIME_DAYS);
    if dry_run {
        return Ok(Rotation {
            rotated: false,
            rotated_elsewhere: false,
            days_left,
            new_expires_at: Some(expires_at),
            token_id: current.id,
        });
    }
    let marker = marker_path(path);
    write_synced(
        &marker,
        json!({"started_at": Utc::now(), "token_id": current.id})
            .to_string()
            .as_bytes(),
    )
    .and_then(|()| sync_dir(&marker))
    .map_err(|e| RotationError::Write {
        path: marker.display().to_string(),
        message: format!("cannot write the rotation marker ({e}); nothing was rotated"),
    })?;
    let rotated = match c.client.rotate_token_self(expires_at).await {
        Ok(t) => t,
        // A timeout, a dropped connection or a 5xx: GitLab may have rotated. The marker stays,
        // so the next start finds out instead of presenting a token that may be revoked.
        Err(e) if outcome_unknown(&e) => {
            return Err(RotationError::Unknown(e.to_string()));
        }
        Err(e) => {
            // Refused (4xx): certainly not rotated, the old token still works.
            let _ = std::fs::remove_file(&marker);
            let _ = sync_dir(&marker);
            return Err(e.into());
        }
    };
    write_token_file(path, &rotated.token).map_err(|e| RotationError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let _ = std::fs::remove_file(&marker);
    let _ = sync_dir(&marker);
    c.client
        .set_token(&rotated.token)
        .map_err(RotationError::GitLab)?;
    c.mark_rotated();
    tracing::info!(connector = %c.settings.id, new_expires_at = %expires_at, "token rotated and saved to the token file");
    Ok(Rotation {
        rotated: true,
        rotated_elsewhere: false,
        days_left,
        new_expires_at: Some(expires_at),
        token_id: rotated.info.id,
    })
}

/// Whether a failed rotate may still have rotated: no answer, a server error, or an answer that
/// could not be read. A refusal (4xx) certainly did not.
fn outcome_unknown(e: &gitlab_connector::Error) -> bool {
    use gitlab_connector::Error as E;
    e.is_transient()
        || matches!(
            e,
            E::Transport { .. }
                | E::Decode { .. }
                | E::Server { .. }
                | E::BudgetExhausted { .. }
                | E::ResponseTooLarge { .. }
                | E::UnexpectedStatus { .. }
        )
}

/// On start: a marker left by an interrupted rotation. Returns a message when the token in
/// the file no longer works (the rotation happened, the write did not).
pub async fn check_interrupted(c: &Connector) -> Result<(), String> {
    let Some(path) = &c.settings.token_file else {
        return Ok(());
    };
    let marker = marker_path(path);
    let Ok(text) = std::fs::read_to_string(&marker) else {
        return Ok(());
    };
    match c.client.token_self().await {
        Ok(t) if t.active => {
            tracing::warn!(marker = %marker.display(), "a token rotation was interrupted before GitLab rotated the token; the token in the file still works");
            let _ = std::fs::remove_file(&marker);
            Ok(())
        }
        _ => Err(format!(
            "a token rotation was interrupted ({}; marker {}): GitLab rotated the token but the new token never reached {}, and the token there is revoked. Do not use it again: GitLab's reuse detection would revoke the whole token family. Create a new token for the service account, write it to {}, then delete {}",
            text.trim(),
            marker.display(),
            path.display(),
            path.display(),
            marker.display()
        )),
    }
}

pub async fn execute(ctx: &mut JobContext<'_>, params: &Params) -> Result<Done, JobFailure> {
    // Never handed back: a second rotate would present the revoked token.
    if ctx.connector.capability == Some(Capability::SyncOnly) {
        return Err(JobFailure::failed(
            Code::Forbidden,
            "a read_api token cannot rotate itself; it needs the `api` scope",
        ));
    }
    let rot = match rotate(
        ctx.store,
        &ctx.connector,
        params.min_days_left,
        ctx.job.dry_run,
    )
    .await
    {
        Ok(rot) => rot,
        Err(e @ RotationError::Busy(_)) => {
            return Err(JobFailure::transient(Code::Conflict, e.to_string()));
        }
        Err(e @ RotationError::Store(_)) => {
            return Err(JobFailure::transient(Code::Internal, e.to_string()));
        }
        Err(e @ RotationError::Unknown(_)) => {
            return Err(JobFailure::failed(Code::GitlabError, e.to_string()));
        }
        Err(e @ RotationError::EnvToken(_)) => {
            return Err(JobFailure::failed(Code::Forbidden, e.to_string()));
        }
        Err(e @ RotationError::Write { .. }) => {
            return Err(JobFailure::failed(Code::TokenInvalid, e.to_string()));
        }
        Err(RotationError::GitLab(e)) => {
            return Err(JobFailure::failed(Code::from(&e), e.to_string()));
        }
    };
    if rot.rotated_elsewhere {
        ctx.report.warnings.push(
            "another worker rotated the token a moment ago: its new token is used, not rotated again"
                .into(),
        );
        return Ok(Done::Noop);
    }
    if !(rot.rotated || (ctx.job.dry_run && rot.new_expires_at.is_some())) {
        ctx.report.warnings.push(format!(
            "the token has {} days left (more than {}): not rotated",
            rot.days_left.unwrap_or(-1),
            params.min_days_left.unwrap_or(0)
        ));
        return Ok(Done::Noop);
    }
    let change = Change {
        action: "rotate_token".into(),
        target: json!({"type": "token", "id": rot.token_id}),
        user_id: None,
        email: None,
        before: Some(json!({"days_left": rot.days_left})),
        after: Some(json!({"expires_at": rot.new_expires_at})),
        note: None,
    };
    if rot.rotated {
        ctx.audit().record_done(&change, "ok").await;
    }
    ctx.report.changes.push(change);
    Ok(Done::Succeeded)
}

/// Serve's background check: rotates each file-backed token when fewer than `days_left` days
/// remain, every `interval`.
pub async fn auto_rotate(
    store: Store,
    connectors: Vec<std::sync::Arc<Connector>>,
    days_left: u32,
    interval: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        for c in &connectors {
            if c.settings.token_file.is_none() || c.capability == Some(Capability::SyncOnly) {
                continue;
            }
            match rotate(&store, c, Some(days_left), false).await {
                Ok(r) if r.rotated => {
                    tracing::info!(connector = %c.settings.id, "automatic token rotation done")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(connector = %c.settings.id, "automatic token rotation: {e}")
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Serve's watch on the token files: a token another worker or a person wrote is used within
/// seconds, without a restart.
pub async fn watch_token_files(
    connectors: Vec<std::sync::Arc<Connector>>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        for c in &connectors {
            if let Some(path) = &c.settings.token_file
                && let Err(e) = reload_token_file(c, path)
            {
                tracing::warn!(connector = %c.settings.id, "cannot read the token file: {e}");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
}
