//! The event processor of one connector: pulls GitLab's deliveries from `<P>_HOOKS`, gathers
//! what arrives within a short window, reads again only what they touch, applies that to the
//! live state and stores the batch with its access events in one transaction, then acks.
//!
//! One worker at a time processes a connector's events (a database lease): batches are applied
//! in one order, on one in-memory state. A worker that dies leaves its unacked deliveries to
//! the next holder; reading them again finds nothing new, so nothing is announced twice.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use chrono::Utc;
use futures::StreamExt;
use gitlab_connector::live::{Touch, apply, reread, touches};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::state::LiveState;
use crate::connector::Connector;
use crate::jobs::events::live_access_events;
use crate::store::{Append, ChangeLine, NewBatch, Store};
use crate::subjects::Subjects;

/// Deliveries gathered into one batch at most.
const MAX_BATCH: usize = 256;
/// How long a batch gathers after its first delivery: a burst of GitLab events (a group
/// deleted, a bulk import) becomes one re-read per resource.
pub const WINDOW: Duration = Duration::from_millis(200);
/// How long an idle pull waits for a delivery.
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// The processing lease's length; renewed at every pull.
const LEASE: Duration = Duration::from_secs(30);
/// Deliveries are tried this often, then left to the reconcile.
const MAX_DELIVER: i64 = 20;

#[derive(Clone)]
pub struct Processor {
    pub store: Store,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    pub connector: Arc<Connector>,
    pub spool_dir: PathBuf,
    /// `AUDIT_POLL_SECONDS`: share changes from GitLab's audit events (`None`: off).
    pub audit_every: Option<Duration>,
}

/// One delivery as read from the stream.
struct Delivery {
    msg: jetstream::Message,
    id: String,
    touches: Vec<Touch>,
}

fn delivery(msg: jetstream::Message) -> Delivery {
    let id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    let touches = serde_json::from_slice::<serde_json::Value>(&msg.payload)
        .map(|v| touches(&v))
        .unwrap_or_default();
    Delivery { msg, id, touches }
}

impl Processor {
    fn name(&self) -> &str {
        self.connector.settings.id.as_str()
    }

    pub fn consumer_name(&self) -> String {
        format!("live-{}", self.name())
    }

    async fn consumer(&self) -> Result<consumer::PullConsumer, String> {
        let stream = self
            .js
            .get_stream(self.subjects.stream("HOOKS"))
            .await
            .map_err(|e| e.to_string())?;
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(self.consumer_name()),
                description: Some("gitlab-worker: live access from GitLab's events".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(120),
                max_deliver: MAX_DELIVER,
                max_ack_pending: 10_000,
                filter_subject: self.subjects.hooks(self.name()),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// Runs until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let scope = self.connector.settings.scope.clone().unwrap_or_default();
        let lease = format!("live/{}", self.name());
        let holder = self.connector.lease_holder().to_string();
        let mut state: Option<LiveState> = None;
        let mut admin: Option<bool> = None;
        let mut failures = 0u32;
        let pause = |n: u32| Duration::from_millis(500 * u64::from(n.clamp(1, 20)));
        let mut audit = super::audit::AuditPoll::new();
        let mut consumer: Option<consumer::PullConsumer> = None;
        let mut next_poll = tokio::time::Instant::now();
        loop {
            if stop.is_cancelled() {
                break;
            }
            let step = async {
                if !self
                    .store
                    .try_lease(&lease, &holder, LEASE)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    state = None; // another worker applies batches meanwhile
                    return Ok::<_, String>(false);
                }
                if admin.is_none() {
                    let me = self
                        .connector
                        .client
                        .current_user()
                        .await
                        .map_err(|e| e.to_string())?;
                    admin = Some(me.is_admin.unwrap_or(false));
                }
                if let Some(every) = self.audit_every
                    && !audit.unavailable
                    && tokio::time::Instant::now() >= next_poll
                {
                    next_poll = tokio::time::Instant::now() + every;
                    let top = self
                        .connector
                        .scope_path()
                        .await
                        .map_err(|e| e.to_string())?
                        .and_then(|p| p.split('/').next().map(str::to_string));
                    let n = super::audit::poll(
                        &self.connector.client,
                        &self.js,
                        &self.subjects,
                        self.name(),
                        top.as_deref(),
                        admin.unwrap_or(false),
                        &mut audit,
                    )
                    .await?;
                    if n > 0 {
                        tracing::info!(connector = %self.name(), changes = n, "share changes found in GitLab's audit events");
                    }
                }
                // Created (or updated) once, and again only after a failure.
                if consumer.is_none() {
                    consumer = Some(self.consumer().await?);
                }
                let consumer = consumer.as_ref().expect("set above");
                // Idle, the pull waits up to 5 s, or until the next audit poll is due.
                let wait = match self.audit_every {
                    Some(_) if !audit.unavailable => next_poll
                        .saturating_duration_since(tokio::time::Instant::now())
                        .clamp(Duration::from_millis(100), IDLE_WAIT),
                    _ => IDLE_WAIT,
                };
                let Some(batch) = self.gather(consumer, &stop, wait).await? else {
                    return Ok(true);
                };
                self.process(batch, &scope, &mut state, admin.unwrap_or(false))
                    .await;
                Ok(true)
            };
            match step.await {
                Ok(true) => failures = 0,
                Ok(false) => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                Err(e) => {
                    failures += 1;
                    consumer = None;
                    tracing::warn!(connector = %self.name(), "live access: {e}; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(pause(failures)) => {}
                    }
                }
            }
        }
        let _ = self.store.release_named_lease(&lease, &holder).await;
    }

    /// The next batch: waits up to `wait` for a first delivery, then gathers for [`WINDOW`].
    async fn gather(
        &self,
        consumer: &consumer::PullConsumer,
        stop: &CancellationToken,
        wait: Duration,
    ) -> Result<Option<Vec<Delivery>>, String> {
        let mut first = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            b = consumer.batch().max_messages(1).expires(wait).messages() => b.map_err(|e| e.to_string())?,
        };
        let Some(msg) = first.next().await.transpose().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let mut out = vec![delivery(msg)];
        let mut more = consumer
            .batch()
            .max_messages(MAX_BATCH - 1)
            .expires(WINDOW)
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        while let Some(m) = more.next().await {
            match m {
                Ok(m) => out.push(delivery(m)),
                Err(e) => {
                    tracing::debug!("live access pull: {e}");
                    break;
                }
            }
        }
        Ok(Some(out))
    }

    async fn process(
        &self,
        batch: Vec<Delivery>,
        scope: &str,
        state: &mut Option<LiveState>,
        admin: bool,
    ) {
        let span =
            tracing::info_span!("live_batch", connector = %self.name(), deliveries = batch.len());
        let outcome = self
            .apply_batch(&batch, scope, state, admin)
            .instrument(span.clone())
            .await;
        let _e = span.enter();
        let (ack, label) = match outcome {
            Ok(label) => (AckKind::Ack, label),
            Err(e) => {
                // The in-memory state may hold facts that were not stored: read it again.
                *state = None;
                tracing::warn!("live access batch failed, its deliveries come back: {e}");
                (AckKind::Nak(Some(Duration::from_secs(5))), "retried")
            }
        };
        for d in batch {
            if let Err(e) = d.msg.ack_with(ack).await {
                tracing::debug!("ack of a hook delivery: {e}");
            }
        }
        metrics::counter!("gitlab_worker_live_batches_total", "connector" => self.name().to_string(), "outcome" => label).increment(1);
    }

    /// Applies one batch; the label says what came of it.
    async fn apply_batch(
        &self,
        batch: &[Delivery],
        scope: &str,
        state: &mut Option<LiveState>,
        admin: bool,
    ) -> Result<&'static str, String> {
        let wanted: BTreeSet<Touch> = batch
            .iter()
            .flat_map(|d| d.touches.iter().copied())
            .collect();
        if wanted.is_empty() {
            return Ok("nothing_to_read");
        }
        self.refresh(scope, state).await?;
        let Some(live) = state.as_mut() else {
            tracing::info!("no complete snapshot yet: events wait for the first full sync");
            return Ok("no_snapshot");
        };
        let new_resources: BTreeSet<_> = wanted
            .iter()
            .filter_map(|t| match t {
                Touch::Group { group_id } => {
                    Some(gitlab_connector::model::ResourceRef::Group(*group_id))
                }
                Touch::Project { project_id } => {
                    Some(gitlab_connector::model::ResourceRef::Project(*project_id))
                }
                _ => None,
            })
            .collect();
        // Memberships of resources outside the scope (a system hook reports the whole
        // instance) are not read.
        let touches: BTreeSet<Touch> = wanted
            .into_iter()
            .filter(|t| match t {
                Touch::Member { resource, .. } | Touch::Invitations { resource } => {
                    live.knows(*resource) || new_resources.contains(resource)
                }
                Touch::User { user_id } => {
                    live.scope.root.is_none() || live.inv.users.contains_key(user_id)
                }
                Touch::Group { .. } | Touch::Project { .. } => true,
            })
            .collect();
        let read_at = Utc::now();
        let facts = reread(&self.connector.client, &live.inv, &touches, admin)
            .await
            .map_err(|e| format!("re-reading what the events touched: {e}"))?;
        let applied = apply(&mut live.inv, live.scope, &facts, read_at.date_naive());
        if applied.is_empty() {
            return Ok("unchanged");
        }
        let mut sources: Vec<String> = batch
            .iter()
            .map(|d| d.id.clone())
            .filter(|i| !i.is_empty())
            .collect();
        sources.sort();
        sources.dedup();
        let changes = change_lines(&applied.changes)?;
        let facts_json = serde_json::to_string(&facts).map_err(|e| e.to_string())?;
        let base_id = live.base.snapshot_id.clone();
        let appended = self
            .store
            .append_batch(
                NewBatch {
                    base: &live.base,
                    read_at,
                    cause: "gitlab_event",
                    source_events: &sources,
                    facts: facts_json,
                    changes,
                    change_count: applied.changes.len() as i64,
                    access_changes: applied.access.len() as i64,
                },
                live.last_batch,
                |b| live_access_events(&self.subjects, b, &base_id, &applied.access),
            )
            .await
            .map_err(|e| e.to_string())?;
        match appended {
            Append::Stored(b) => {
                live.last_batch = Some(b.id);
                tracing::info!(
                    batch = b.id,
                    access_changes = applied.access.len(),
                    "live changes stored"
                );
                Ok("stored")
            }
            Append::Stale => Err(
                "the live state changed meanwhile (a new snapshot or another worker's batch)"
                    .into(),
            ),
        }
    }

    /// Brings the live state up to the newest complete snapshot and its batches.
    async fn refresh(&self, scope: &str, state: &mut Option<LiveState>) -> Result<(), String> {
        let newest = self
            .store
            .latest_snapshot(self.name(), scope, true)
            .await
            .map_err(|e| e.to_string())?;
        let current = state.as_ref().map(|s| s.base.seq);
        if newest.as_ref().map(|s| s.seq) != current {
            *state = LiveState::load(&self.store, &self.spool_dir, self.name(), scope)
                .await
                .map_err(|e| format!("loading the live state: {e}"))?;
            if let Some(live) = state.as_mut() {
                live.replay_recent(&self.store, &self.subjects)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        if let Some(live) = state.as_mut() {
            let newer = self
                .store
                .batches_on(self.name(), scope, live.base.seq, live.last_batch)
                .await
                .map_err(|e| e.to_string())?;
            live.catch_up(&newer).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A batch's changes as stored: one `{"key", "record"}` line per record, by key.
pub(crate) fn change_lines(
    changes: &std::collections::BTreeMap<String, Option<gitlab_connector::model::Record>>,
) -> Result<String, String> {
    let mut out = String::new();
    for (key, record) in changes {
        let raw = match record {
            Some(r) => Some(serde_json::value::to_raw_value(r).map_err(|e| e.to_string())?),
            None => None,
        };
        let line = serde_json::to_string(&ChangeLine {
            key: key.clone(),
            record: raw,
        })
        .map_err(|e| e.to_string())?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}
