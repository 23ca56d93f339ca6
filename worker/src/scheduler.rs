//! The JIT expiry scheduler: undoes each grant at its precise expiry (checked every 500 ms, so
//! within a second of it), across restarts (the grants are in the database), once across
//! workers, and announces what it did as an `access` event.
//!
//! A claim is a lease ([`CLAIM_LEASE`], renewed while the undo runs): when a worker dies while
//! undoing, its claim lapses in seconds and another worker takes the undo over. A grant's new
//! state and its event are committed together. A failing undo is retried for that grant alone,
//! with a backoff that doubles up to [`MAX_RETRY_DELAY`]; after [`FAILURES_BEFORE_ALERT`]
//! failures an `access` event with `cause: "jit_expiry_failed"` tells a person.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use gitlab_connector::client::{Deferral, Slot};

use crate::connector::Connector;
use crate::jobs::Handler;
use crate::jobs::delivery::{DEFER_HOLD, come_back_in};
use crate::jobs::events::EVENT_SCHEMA;
use crate::jobs::undo::{ExpireError, expire_grant};
use crate::store::{GrantRecord, OutboxMessage};
use crate::subjects::msg_id;

pub const TICK: Duration = Duration::from_millis(500);

pub use crate::jobs::undo::{CLAIM_LEASE, Expired};
/// The longest wait between two attempts to undo a grant.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
/// Failed undos of one grant before a person is told.
pub const FAILURES_BEFORE_ALERT: u32 = 5;

/// The wait after the `attempts`-th failed undo: 1 s, 2 s, 4 s, … at most [`MAX_RETRY_DELAY`].
pub fn retry_delay(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.saturating_sub(1).min(16)).min(MAX_RETRY_DELAY)
}

/// Undoes every grant due now; returns what was done.
pub async fn run_due(h: &Handler) -> Vec<Expired> {
    let mut out = Vec::new();
    let due = match h.store.due_grants(h.clock.now()).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("scheduler: {e}");
            return out;
        }
    };
    for g in due {
        let Some(c) = h.connectors.get(g.connector.as_str()) else {
            continue;
        };
        match h
            .store
            .claim_grant(&g.job_id, h.clock.now(), CLAIM_LEASE, false)
            .await
        {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!("scheduler: {e}");
                continue;
            }
        }
        // Attached with `instrument`: an entered guard must not be held across an await.
        let span =
            tracing::info_span!("jit_expiry", grant_job_id = %g.job_id, connector = %g.connector);
        if let Some(done) = expire(h, c, &g).instrument(span).await {
            out.push(done);
        }
    }
    out
}

/// Undoes one claimed grant; `None` when it failed and is retried later.
async fn expire(h: &Handler, c: &Connector, g: &GrantRecord) -> Option<Expired> {
    // Like a job, an expiry whose deletion slot of the group's limit is far off is put off
    // until it (keeping the slot) instead of waiting in this worker, where its death would
    // throw the slot away and send the expiry to the end of the group's queue again.
    let deferral = Deferral::new(DEFER_HOLD, g.held_slot.as_deref().and_then(Slot::decode));
    let expired = deferral
        .scope(expire_grant(
            &h.store,
            &h.subjects,
            h.publish,
            c,
            g,
            "JIT grant expired",
        ))
        .await;
    if let (Err(ExpireError::Undo(_)), Some(slot)) = (&expired, deferral.deferred()) {
        let next =
            h.clock.now() + chrono::Duration::from_std(come_back_in(&slot)).unwrap_or_default();
        tracing::info!(
            wait_ms = slot.wait().as_millis() as u64,
            "the grant's deletion slot of GitLab's per-group limit is ahead: the expiry is put off until then"
        );
        if let Err(e) = h.store.defer_grant(&g.job_id, next, &slot.encode()).await {
            tracing::warn!("scheduler: {e}; the claim lapses and the grant is retried then");
        }
        return None;
    }
    match expired {
        Ok(done) => {
            match &done.conflict {
                Some(c) => tracing::warn!("JIT grant expired with a conflict: {c}"),
                None => {
                    tracing::info!(changes = done.changes.len(), "JIT grant expired and undone")
                }
            }
            Some(done)
        }
        Err(ExpireError::Undo(e)) => {
            failed(h, g, &e.to_string()).await;
            None
        }
        Err(e @ ExpireError::Record(_)) => {
            // The undo is in GitLab but not recorded: the claim lapses and the next attempt
            // finds the membership already restored, records it and sends the event then.
            tracing::warn!("scheduler: {e}");
            None
        }
    }
}

/// A failed undo: this grant alone is tried again after a backoff; after
/// [`FAILURES_BEFORE_ALERT`] failures a `jit_expiry_failed` event tells a person (once).
async fn failed(h: &Handler, g: &GrantRecord, error: &str) {
    let attempts = g.undo_attempts.saturating_add(1);
    let delay = retry_delay(attempts);
    metrics::counter!("gitlab_worker_jit_expiry_failures_total", "connector" => g.connector.clone())
        .increment(1);
    tracing::warn!(
        attempts,
        retry_in_s = delay.as_secs(),
        "undoing the grant failed: {error}"
    );
    let next = h.clock.now() + chrono::Duration::from_std(delay).unwrap_or_default();
    if let Err(e) = h.store.retry_grant_later(&g.job_id, attempts, next).await {
        tracing::warn!("scheduler: {e}; the claim lapses and the grant is retried then");
    }
    if attempts == FAILURES_BEFORE_ALERT && h.publish {
        let event = json!({
            "schema": EVENT_SCHEMA,
            "type": "access",
            "cause": "jit_expiry_failed",
            "connector": g.connector,
            "grant_job_id": g.job_id,
            "user_id": g.user_id,
            "target": {"type": g.target_kind.as_str(), "id": g.target_id, "path": g.target_path},
            "expires_at": g.expires_at,
            "attempts": attempts,
            "error": error,
            "changes": [],
        });
        let queued = h
            .store
            .enqueue(vec![OutboxMessage::Publish {
                msg_id: msg_id::jit_expiry_failed(&g.job_id),
                subject: h.subjects.event(&g.connector, "access"),
                payload: event.to_string(),
            }])
            .await;
        if let Err(e) = queued {
            tracing::warn!("scheduler: the failure event could not be queued: {e}");
        }
    }
}

/// Ticks between two sweeps for jobs whose last delivery died.
const ABANDONED_SWEEP_TICKS: u32 = 10;

/// Runs until `stop` (what it commits to the outbox wakes the publishers through the store).
pub async fn run(h: Arc<Handler>, stop: CancellationToken) {
    let mut ticks = 0u32;
    loop {
        run_due(&h).await;
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(ABANDONED_SWEEP_TICKS)
            && let Err(e) = h.answer_abandoned().await
        {
            tracing::warn!("scheduler: jobs whose last delivery died: {e}");
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
