//! Jobs (the idempotency key and the stored result) and the outbox.

use chrono::Utc;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, ExprTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait,
};

use super::entity::{job, outbox};
use super::records::{JobRecord, JobState};
use super::{OUTBOX_TAKEOVER, Store, StoreError};

/// What the store knows about a job id when a delivery arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Never seen: recorded as running, attempt 1.
    New,
    /// Seen and not finished (a crash or a retry): this is attempt `attempts`; `progress` holds
    /// the handler's checkpoints.
    Resume {
        attempts: u32,
        progress: Option<String>,
        /// Deliveries handed back to wait for a slot (not attempts), and the slot last reserved.
        deferrals: u32,
        held_slot: Option<String>,
    },
    /// Another delivery of the same job id is running it now (its lease is current).
    Busy,
    /// The job id was seen with another payload: this delivery is not that job.
    Conflict,
    /// Finished: the stored result envelope (JSON), to be published again, nothing executed.
    /// `stream_seq` is the delivery that ran it.
    Finished { result: String, stream_seq: u64 },
}

/// A delivery of a job, as the store records it.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub job_id: &'a str,
    pub connector: &'a str,
    pub kind: &'a str,
    /// The envelope as received.
    pub request: &'a str,
    /// sha256 of the canonical envelope: the job id binds it.
    pub payload_sha256: &'a str,
    /// The JetStream stream sequence of this delivery (0 without NATS).
    pub stream_seq: u64,
    /// This delivery's number (1 for the first).
    pub delivered: u32,
    /// The attempts a job gets (0: no limit). Deliveries that were deferrals are not attempts:
    /// the delivery is the job's last when `delivered - deferrals` reaches it.
    pub attempt_budget: u32,
}

impl NewJob<'_> {
    /// Whether this delivery is the job's last attempt, given its deferrals so far.
    pub fn last_attempt(&self, deferrals: u32) -> bool {
        attempts_left(self.delivered, deferrals, self.attempt_budget).is_none_or(|left| left == 0)
    }
}

/// Attempts a job has left after delivery `delivered`: `None` when earlier attempts spent its
/// budget, `u32::MAX` when it has none. Deliveries that were deferrals are not attempts.
pub fn attempts_left(delivered: u32, deferrals: u32, budget: u32) -> Option<u32> {
    if budget == 0 {
        return Some(u32::MAX);
    }
    budget.checked_sub(delivered.saturating_sub(deferrals))
}

/// A message committed with the state it describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxMessage {
    /// Publish `payload` on `subject` with `Nats-Msg-Id: msg_id`.
    Publish {
        msg_id: String,
        subject: String,
        payload: String,
    },
    /// Upload the stored snapshot `snapshot_id` to the object store as `object_name`.
    SnapshotObject {
        msg_id: String,
        object_name: String,
        snapshot_id: String,
    },
    /// Upload `payload` to the object store as `object_name` (a result's full change list).
    Object {
        msg_id: String,
        object_name: String,
        payload: String,
    },
    /// Publish a stored snapshot's access events on `subject`, built from the stored snapshots
    /// when they are sent (`spec` is `jobs::events::AccessEvents` as JSON).
    AccessEvents {
        msg_id: String,
        subject: String,
        spec: String,
    },
}

/// Which publisher sends a committed row. Results never wait behind announcements: a sync's
/// snapshot is exported, diffed and uploaded when its events are sent, which takes a while,
/// and the results of the jobs committed meanwhile go out on their own lane. Announcements
/// keep their commit order among themselves, and every row of a commit is in one lane, so
/// what a commit publishes keeps its order too (a sync's result after its events, a result
/// after its change-list object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboxLane {
    /// Commits that answer jobs and announce nothing.
    Results,
    /// Commits with an event, a snapshot's object or its access diff.
    Events,
}

impl OutboxLane {
    pub const ALL: [OutboxLane; 2] = [OutboxLane::Results, OutboxLane::Events];

    pub fn as_str(self) -> &'static str {
        match self {
            OutboxLane::Results => "results",
            OutboxLane::Events => "events",
        }
    }

    /// The lane of a commit's messages.
    pub fn of(messages: &[OutboxMessage]) -> Self {
        if messages.iter().any(OutboxMessage::announces) {
            OutboxLane::Events
        } else {
            OutboxLane::Results
        }
    }
}

impl OutboxMessage {
    /// Whether the message announces something (an event, a snapshot's object or its access
    /// diff) rather than answering a job.
    fn announces(&self) -> bool {
        match self {
            OutboxMessage::Publish { subject, .. } => crate::subjects::is_event(subject),
            OutboxMessage::SnapshotObject { .. } | OutboxMessage::AccessEvents { .. } => true,
            OutboxMessage::Object { .. } => false,
        }
    }

    /// The message's `Nats-Msg-Id`.
    pub fn msg_id(&self) -> &str {
        match self {
            OutboxMessage::Publish { msg_id, .. }
            | OutboxMessage::SnapshotObject { msg_id, .. }
            | OutboxMessage::Object { msg_id, .. }
            | OutboxMessage::AccessEvents { msg_id, .. } => msg_id,
        }
    }

    pub(super) fn into_active(self, lane: OutboxLane) -> outbox::ActiveModel {
        let (msg_id, kind, subject, payload) = match self {
            OutboxMessage::Publish {
                msg_id,
                subject,
                payload,
            } => (msg_id, "message", subject, payload),
            OutboxMessage::SnapshotObject {
                msg_id,
                object_name,
                snapshot_id,
            } => (msg_id, "snapshot_object", object_name, snapshot_id),
            OutboxMessage::Object {
                msg_id,
                object_name,
                payload,
            } => (msg_id, "object", object_name, payload),
            OutboxMessage::AccessEvents {
                msg_id,
                subject,
                spec,
            } => (msg_id, "access_events", subject, spec),
        };
        outbox::ActiveModel {
            msg_id: Set(msg_id),
            lane: Set(lane.as_str().into()),
            kind: Set(kind.into()),
            subject: Set(subject),
            payload: Set(payload),
            created_at: Set(Utc::now()),
            sent_at: Set(None),
            ..Default::default()
        }
    }

    fn from_row(row: &outbox::Model) -> Self {
        if row.kind == "snapshot_object" {
            OutboxMessage::SnapshotObject {
                msg_id: row.msg_id.clone(),
                object_name: row.subject.clone(),
                snapshot_id: row.payload.clone(),
            }
        } else if row.kind == "access_events" {
            OutboxMessage::AccessEvents {
                msg_id: row.msg_id.clone(),
                subject: row.subject.clone(),
                spec: row.payload.clone(),
            }
        } else if row.kind == "object" {
            OutboxMessage::Object {
                msg_id: row.msg_id.clone(),
                object_name: row.subject.clone(),
                payload: row.payload.clone(),
            }
        } else {
            OutboxMessage::Publish {
                msg_id: row.msg_id.clone(),
                subject: row.subject.clone(),
                payload: row.payload.clone(),
            }
        }
    }
}

/// Queues `messages` (one commit's, so one lane); returns the lane, `None` when there were
/// none. The caller tells the lane's publisher once the transaction is committed.
pub(super) async fn insert_outbox<C: ConnectionTrait>(
    db: &C,
    owner: &str,
    messages: Vec<OutboxMessage>,
) -> Result<Option<OutboxLane>, StoreError> {
    let (lane, inserts) = super::finish::outbox_inserts(owner, messages);
    for insert in inserts {
        db.execute(&insert).await?;
    }
    Ok(lane)
}

impl Store {
    /// Records a delivery of `job_id`: the idempotency check, in one statement that only one
    /// worker can win.
    pub async fn begin_job(
        &self,
        job: &NewJob<'_>,
        lease: std::time::Duration,
    ) -> Result<Begin, StoreError> {
        let NewJob {
            job_id,
            connector,
            kind,
            request,
            payload_sha256,
            stream_seq,
            ..
        } = *job;
        let now = Utc::now();
        let lease_until =
            now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
        let inserted = job::Entity::insert(job::ActiveModel {
            job_id: Set(job_id.into()),
            connector: Set(connector.into()),
            kind: Set(kind.into()),
            state: Set(JobState::Running),
            attempts: Set(1),
            request: Set(request.into()),
            result: Set(None),
            status: Set(None),
            progress: Set(None),
            stream_seq: Set(i64::try_from(stream_seq).unwrap_or(0)),
            lease_until: Set(lease_until),
            payload_sha256: Set(Some(payload_sha256.to_string())),
            final_delivery: Set(job.last_attempt(0)),
            deferrals: Set(0),
            held_slot: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        })
        .on_conflict(
            OnConflict::column(job::Column::JobId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        if inserted == 1 {
            return Ok(Begin::New);
        }
        let row = job::Entity::find_by_id(job_id.to_string())
            .one(&self.db)
            .await?
            .ok_or_else(|| {
                StoreError::Db(sea_orm::DbErr::RecordNotFound(format!("job {job_id}")))
            })?;
        if row
            .payload_sha256
            .as_deref()
            .is_some_and(|h| h != payload_sha256)
        {
            return Ok(Begin::Conflict);
        }
        if let (Some(result), JobState::Finished) = (&row.result, row.state) {
            return Ok(Begin::Finished {
                result: result.clone(),
                stream_seq: u64::try_from(row.stream_seq).unwrap_or(0),
            });
        }
        let deferrals = u32::try_from(row.deferrals).unwrap_or(0);
        // Take the job over only if no delivery holds a current lease: one statement, so two
        // deliveries cannot both win.
        let taken = job::Entity::update_many()
            .col_expr(
                job::Column::Attempts,
                Expr::col(job::Column::Attempts).add(1),
            )
            .col_expr(job::Column::LeaseUntil, Expr::value(lease_until))
            .col_expr(
                job::Column::FinalDelivery,
                Expr::value(job.last_attempt(deferrals)),
            )
            .col_expr(job::Column::UpdatedAt, Expr::value(now))
            .filter(job::Column::JobId.eq(job_id))
            .filter(job::Column::State.eq(JobState::Running))
            .filter(job::Column::LeaseUntil.lt(now))
            .exec(&self.db)
            .await?;
        if taken.rows_affected == 0 {
            return Ok(Begin::Busy);
        }
        Ok(Begin::Resume {
            attempts: u32::try_from(row.attempts).unwrap_or(0) + 1,
            progress: row.progress,
            deferrals,
            held_slot: row.held_slot,
        })
    }

    /// Extends a running job's lease.
    pub async fn renew_lease(
        &self,
        job_id: &str,
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        let until =
            Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30));
        job::Entity::update_many()
            .col_expr(job::Column::LeaseUntil, Expr::value(until))
            .filter(job::Column::JobId.eq(job_id))
            .filter(job::Column::State.eq(JobState::Running))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Gives a running job's lease up (the job is handed back for a later delivery).
    pub async fn release_lease(&self, job_id: &str) -> Result<(), StoreError> {
        job::Entity::update_many()
            .col_expr(
                job::Column::LeaseUntil,
                Expr::value(Utc::now() - chrono::Duration::seconds(1)),
            )
            .filter(job::Column::JobId.eq(job_id))
            .filter(job::Column::State.eq(JobState::Running))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Hands a running job back to wait for `held_slot` (a slot of a per-group limit it
    /// reserved): one more deferral, the slot kept for its next delivery, the lease given up.
    pub async fn defer_job(&self, job_id: &str, held_slot: &str) -> Result<(), StoreError> {
        job::Entity::update_many()
            .col_expr(
                job::Column::Deferrals,
                Expr::col(job::Column::Deferrals).add(1),
            )
            .col_expr(job::Column::HeldSlot, Expr::value(held_slot.to_string()))
            .col_expr(
                job::Column::LeaseUntil,
                Expr::value(Utc::now() - chrono::Duration::seconds(1)),
            )
            .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(job::Column::JobId.eq(job_id))
            .filter(job::Column::State.eq(JobState::Running))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Stores a handler checkpoint for a running job.
    pub async fn save_progress(&self, job_id: &str, progress: &str) -> Result<(), StoreError> {
        job::Entity::update_many()
            .col_expr(job::Column::Progress, Expr::value(progress.to_string()))
            .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(job::Column::JobId.eq(job_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Outbox messages for this process to send, oldest first, with the row id
    /// [`Store::mark_sent`] takes: its own, and any other process's that waited longer than
    /// [`OUTBOX_TAKEOVER`] (that process died or cannot reach NATS; a message sent twice is
    /// dropped by JetStream by its id).
    pub async fn unsent_outbox(
        &self,
        lane: OutboxLane,
        limit: u64,
    ) -> Result<Vec<(i64, OutboxMessage)>, StoreError> {
        let stale = Utc::now()
            - chrono::Duration::from_std(OUTBOX_TAKEOVER).unwrap_or(chrono::Duration::seconds(10));
        Ok(outbox::Entity::find()
            .filter(outbox::Column::Lane.eq(lane.as_str()))
            .filter(outbox::Column::SentAt.is_null())
            .filter(outbox::Column::ParkedAt.is_null())
            .filter(
                Condition::any()
                    .add(outbox::Column::Owner.eq(self.owner.as_ref()))
                    .add(outbox::Column::Owner.is_null())
                    .add(outbox::Column::CreatedAt.lt(stale)),
            )
            .order_by_asc(outbox::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .iter()
            .map(|row| (row.id, OutboxMessage::from_row(row)))
            .collect())
    }

    /// Marks rows sent, in one statement.
    pub async fn mark_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        outbox::Entity::update_many()
            .col_expr(outbox::Column::SentAt, Expr::value(Utc::now()))
            .filter(outbox::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Jobs whose last delivery died: running, on their final delivery, and their lease ran
    /// out at least `grace` ago. No delivery will come back for them.
    pub async fn abandoned_jobs(
        &self,
        grace: std::time::Duration,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let before = Utc::now() - chrono::Duration::from_std(grace).unwrap_or_default();
        Ok(job::Entity::find()
            .filter(job::Column::State.eq(JobState::Running))
            .filter(job::Column::FinalDelivery.eq(true))
            .filter(job::Column::LeaseUntil.lt(before))
            .limit(100)
            .all(&self.db)
            .await?
            .into_iter()
            .map(record)
            .collect())
    }

    /// Finishes a job only if it is still running with a lapsed lease (no delivery took it
    /// meanwhile); returns whether it did.
    pub async fn finish_abandoned_job(
        &self,
        job_id: &str,
        status: &str,
        result: &str,
        outbox: Vec<OutboxMessage>,
    ) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        let r = job::Entity::update_many()
            .col_expr(job::Column::State, Expr::value(JobState::Finished))
            .col_expr(job::Column::Status, Expr::value(status.to_string()))
            .col_expr(job::Column::Result, Expr::value(result.to_string()))
            .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(job::Column::JobId.eq(job_id))
            .filter(job::Column::State.eq(JobState::Running))
            .filter(job::Column::LeaseUntil.lt(Utc::now()))
            .exec(&txn)
            .await?;
        if r.rows_affected != 1 {
            return Ok(false);
        }
        let lane = insert_outbox(&txn, &self.owner, outbox).await?;
        txn.commit().await?;
        self.committed(lane);
        Ok(true)
    }

    /// Messages for the outbox alone (e.g. a result published again).
    pub async fn enqueue(&self, messages: Vec<OutboxMessage>) -> Result<(), StoreError> {
        let lane = insert_outbox(&self.db, &self.owner, messages).await?;
        self.committed(lane);
        Ok(())
    }

    pub async fn job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(job::Entity::find_by_id(job_id.to_string())
            .one(&self.db)
            .await?
            .map(record))
    }
}

fn record(m: job::Model) -> JobRecord {
    JobRecord {
        job_id: m.job_id,
        connector: m.connector,
        kind: m.kind,
        state: m.state,
        attempts: u32::try_from(m.attempts).unwrap_or(0),
        deferrals: u32::try_from(m.deferrals).unwrap_or(0),
        request: m.request,
        result: m.result,
        status: m.status,
        progress: m.progress,
        stream_seq: u64::try_from(m.stream_seq).unwrap_or(0),
    }
}
