//! The JIT expiry scheduler: undoes each grant at its precise expiry (checked every 500 ms, so
//! within a second of it), across restarts (the grants are in the database), once across
//! workers (a claim in the database), and announces what it did as an `access` event.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::connector::Connector;
use crate::jobs::Handler;
use crate::jobs::events::EVENT_SCHEMA;
use crate::jobs::undo::undo_grant;
use crate::store::{GrantRecord, GrantState, OutboxMessage};
use crate::subjects::msg_id;

pub const TICK: Duration = Duration::from_millis(500);

/// What one expiry did, for logs and the demo.
#[derive(Debug, Clone)]
pub struct Expired {
    pub grant_job_id: String,
    pub event: serde_json::Value,
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
        match h.store.claim_grant(&g.job_id).await {
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

/// Undoes one claimed grant; `None` when it must be retried at the next tick.
async fn expire(h: &Handler, c: &Connector, g: &GrantRecord) -> Option<Expired> {
    let undone = undo_grant(&h.store, c, g, "JIT grant expired").await;
    let (state, changes, conflict) = match undone {
        Ok(u) => (
            if u.conflict.is_some() {
                GrantState::Conflict
            } else {
                GrantState::Ended
            },
            u.changes,
            u.conflict,
        ),
        Err(e) => {
            // Back to active: retried at the next tick.
            tracing::warn!("undoing the grant failed: {e}; retrying");
            let _ = h
                .store
                .release_stale_claims(Utc::now() + chrono::Duration::seconds(1))
                .await;
            return None;
        }
    };
    if let Err(e) = h.store.end_grant(&g.job_id, state, conflict.clone()).await {
        tracing::warn!("scheduler: {e}");
    }
    let event = json!({
        "schema": EVENT_SCHEMA,
        "type": "access",
        "cause": "jit_expiry",
        "connector": g.connector,
        "grant_job_id": g.job_id,
        "user_id": g.user_id,
        "target": {"type": g.target_kind.as_str(), "id": g.target_id, "path": g.target_path},
        "expires_at": g.expires_at,
        "undone_at": Utc::now(),
        "changes": changes,
        "conflict": conflict,
    });
    match &conflict {
        Some(c) => tracing::warn!("JIT grant expired with a conflict: {c}"),
        None => tracing::info!(changes = changes.len(), "JIT grant expired and undone"),
    }
    if h.publish
        && let Err(e) = h
            .store
            .enqueue(vec![OutboxMessage::Publish {
                msg_id: msg_id::jit_expiry(&g.job_id),
                subject: h.subjects.event(&g.connector, "access"),
                payload: event.to_string(),
            }])
            .await
    {
        tracing::warn!("scheduler: the access event could not be queued: {e}");
    }
    Some(Expired {
        grant_job_id: g.job_id.clone(),
        event,
    })
}

/// Runs until `stop`; wakes the outbox publisher after each expiry.
pub async fn run(h: Arc<Handler>, wake: Option<Arc<Notify>>, stop: CancellationToken) {
    // Claims a dead worker left behind are released once they are clearly stale.
    let _ = h
        .store
        .release_stale_claims(Utc::now() - chrono::Duration::seconds(60))
        .await;
    loop {
        let done = run_due(&h).await;
        if !done.is_empty()
            && let Some(w) = &wake
        {
            w.notify_one();
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(TICK) => {}
        }
    }
}
