//! The audit-event poll (`AUDIT_POLL_SECONDS`): no webhook reports a group or project share, but
//! GitLab's audit events (Premium) record them. The share changes found since the last poll go
//! into `<P>_HOOKS` as deliveries of their own (message id `audit:<event id>`), so they are
//! re-read and applied like hooks. An administrator's token on self-managed GitLab reads the
//! instance's events; otherwise the top-level group's (its own events only: shares of
//! subgroups wait for the reconcile).

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use gitlab_connector::client::{IdOrPath, InstanceKind};
use gitlab_connector::live::share_delivery;
use gitlab_connector::{Client, Error};

use crate::subjects::{Subjects, msg_id};

/// Where the poll stands.
pub struct AuditPoll {
    /// Events created at or after this are read next (GitLab's `created_after` is inclusive:
    /// the last one is read again and dropped as a duplicate by its message id).
    pub after: DateTime<Utc>,
    /// Set when the token may not read audit events: not polled again by this process.
    pub unavailable: bool,
}

impl AuditPoll {
    /// Starts an hour back: the hooks stream's duplicate window, so a restarted worker finds
    /// what it may have missed without announcing anything twice.
    pub fn new() -> Self {
        Self {
            after: Utc::now() - chrono::Duration::hours(1),
            unavailable: false,
        }
    }
}

impl Default for AuditPoll {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads the audit events since the last poll and queues their share changes; how many.
pub async fn poll(
    client: &Client,
    js: &jetstream::Context,
    subjects: &Subjects,
    connector: &str,
    top_group: Option<&str>,
    admin: bool,
    state: &mut AuditPoll,
) -> Result<usize, String> {
    let group = if admin && client.instance() == InstanceKind::SelfManaged {
        None
    } else {
        match top_group {
            Some(g) => Some(IdOrPath::parse(g)),
            None => return Ok(0),
        }
    };
    let events: Vec<_> = match client
        .audit_events(group.as_ref(), state.after)
        .try_collect()
        .await
    {
        Ok(e) => e,
        Err(e @ (Error::Forbidden { .. } | Error::NotFoundOrHidden { .. })) => {
            tracing::info!(
                connector,
                "audit events are not readable ({e}); share changes wait for the reconcile"
            );
            state.unavailable = true;
            return Ok(0);
        }
        Err(e) if e.is_not_found() => {
            tracing::info!(
                connector,
                "audit events are not available ({e}); share changes wait for the reconcile"
            );
            state.unavailable = true;
            return Ok(0);
        }
        Err(e) => return Err(format!("reading audit events: {e}")),
    };
    let mut queued = 0;
    for ev in &events {
        let Some(body) = share_delivery(ev) else {
            continue;
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Gitlab-Event", "Audit Event");
        let id = msg_id::hook(connector, &format!("audit:{}", ev.id));
        let ack = js
            .send_publish(
                subjects.hooks(connector),
                jetstream::message::PublishMessage::build()
                    .payload(body.to_string().into())
                    .headers(headers)
                    .message_id(&id),
            )
            .await
            .map_err(|e| format!("queueing audit event {}: {e}", ev.id))?;
        ack.await
            .map_err(|e| format!("queueing audit event {}: {e}", ev.id))?;
        queued += 1;
    }
    // Advanced only once every share change is queued: a failure reads them again.
    if let Some(latest) = events.iter().filter_map(|e| e.created_at).max() {
        state.after = state.after.max(latest);
    }
    Ok(queued)
}
