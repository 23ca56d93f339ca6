//! JIT and permanent grants, and the claims the expiry scheduler takes on them.

use chrono::{DateTime, Utc};
use gitlab_connector::provision::{MemberState, TargetKind};
use sea_orm::sea_query::{Expr, OnConflict, Query};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter,
    QueryOrder, TransactionTrait, UpdateMany,
};

use super::entity::{grant, job};
use super::records::{GrantRecord, GrantState, JobState};
use super::{Store, StoreError};

fn state_json(s: &MemberState) -> String {
    serde_json::to_string(s).expect("a member state serializes")
}

fn damaged(job_id: &str, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged {
        id: job_id.to_string(),
        message: format!("the grant's {what} cannot be read: {e}"),
    }
}

fn record(m: grant::Model) -> Result<GrantRecord, StoreError> {
    let target_kind = TargetKind::parse(&m.target_type)
        .ok_or_else(|| damaged(&m.job_id, "target type", &m.target_type))?;
    let applied: MemberState =
        serde_json::from_str(&m.applied).map_err(|e| damaged(&m.job_id, "applied state", e))?;
    let prior: Option<MemberState> = m
        .prior
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| damaged(&m.job_id, "prior state", e))?;
    Ok(GrantRecord {
        target_kind,
        target_id: u64::try_from(m.target_id).unwrap_or(0),
        target_path: m.target_path,
        user_id: u64::try_from(m.user_id).unwrap_or(0),
        created: m.created,
        prior,
        applied,
        expires_at: m.expires_at,
        state: m.state,
        ended_at: m.ended_at,
        note: m.note,
        undo_attempts: u32::try_from(m.undo_attempts).unwrap_or(0),
        held_slot: m.held_slot,
        connector: m.connector,
        job_id: m.job_id,
    })
}

fn records(models: Vec<grant::Model>) -> Result<Vec<GrantRecord>, StoreError> {
    models.into_iter().map(record).collect()
}

impl Store {
    /// Records a grant (idempotent: a redelivered job keeps the first record); whether this
    /// call recorded it.
    pub async fn record_grant(&self, g: GrantRecord) -> Result<bool, StoreError> {
        let inserted = grant::Entity::insert(grant::ActiveModel {
            job_id: Set(g.job_id),
            connector: Set(g.connector),
            target_type: Set(g.target_kind.as_str().into()),
            target_id: Set(i64::try_from(g.target_id).unwrap_or(i64::MAX)),
            target_path: Set(g.target_path),
            user_id: Set(i64::try_from(g.user_id).unwrap_or(i64::MAX)),
            created: Set(g.created),
            prior: Set(g.prior.as_ref().map(state_json)),
            applied: Set(state_json(&g.applied)),
            expires_at: Set(g.expires_at),
            state: Set(g.state),
            ended_at: Set(g.ended_at),
            note: Set(g.note),
            updated_at: Set(Utc::now()),
            claimed_until: Set(None),
            undo_attempts: Set(0),
            next_attempt_at: Set(None),
            held_slot: Set(None),
        })
        .on_conflict(
            OnConflict::column(grant::Column::JobId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(inserted == 1)
    }

    pub async fn grant(&self, job_id: &str) -> Result<Option<GrantRecord>, StoreError> {
        grant::Entity::find_by_id(job_id.to_string())
            .one(&self.db)
            .await?
            .map(record)
            .transpose()
    }

    /// JIT grants whose expiry has passed and that no worker holds: active ones (not waiting
    /// for a retry), pending ones whose job no delivery runs (it died between the write-ahead
    /// record and the answer), and claimed ones whose claim has lapsed (the worker died).
    /// Soonest first.
    pub async fn due_grants(&self, now: DateTime<Utc>) -> Result<Vec<GrantRecord>, StoreError> {
        records(
            grant::Entity::find()
                .filter(grant::Column::ExpiresAt.lte(now))
                .filter(
                    Condition::any()
                        .add(
                            Condition::all()
                                .add(grant::Column::State.eq(GrantState::Active))
                                .add(
                                    Condition::any()
                                        .add(grant::Column::NextAttemptAt.is_null())
                                        .add(grant::Column::NextAttemptAt.lte(now)),
                                ),
                        )
                        .add(orphaned_pending(now))
                        .add(
                            Condition::all()
                                .add(grant::Column::State.eq(GrantState::Ending))
                                .add(grant::Column::ClaimedUntil.lt(now)),
                        ),
                )
                .order_by_asc(grant::Column::ExpiresAt)
                .all(&self.db)
                .await?,
        )
    }

    /// The next expiry of an active grant.
    pub async fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(grant::Entity::find()
            .filter(grant::Column::State.eq(GrantState::Active))
            .filter(grant::Column::ExpiresAt.is_not_null())
            .order_by_asc(grant::Column::ExpiresAt)
            .one(&self.db)
            .await?
            .and_then(|g| g.expires_at))
    }

    /// Claims a grant for ending until `now + lease`: only one claimant (a scheduler, a
    /// revoke, the grant's own redelivery) wins, and a lapsed claim (its worker died) may be
    /// taken over. A pending grant is claimed only by its own job (`own_job`) or once no
    /// delivery of its job runs.
    pub async fn claim_grant(
        &self,
        job_id: &str,
        now: DateTime<Utc>,
        lease: std::time::Duration,
        own_job: bool,
    ) -> Result<bool, StoreError> {
        let until =
            now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(15));
        let r = grant::Entity::update_many()
            .col_expr(grant::Column::State, Expr::value(GrantState::Ending))
            .col_expr(grant::Column::ClaimedUntil, Expr::value(until))
            .col_expr(grant::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(grant::Column::JobId.eq(job_id))
            .filter(
                Condition::any()
                    .add(grant::Column::State.eq(GrantState::Active))
                    .add(if own_job {
                        Condition::all().add(grant::Column::State.eq(GrantState::Pending))
                    } else {
                        orphaned_pending(now)
                    })
                    .add(
                        Condition::all()
                            .add(grant::Column::State.eq(GrantState::Ending))
                            .add(grant::Column::ClaimedUntil.lt(now)),
                    ),
            )
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected == 1)
    }

    /// Extends a claim while its undo runs.
    pub async fn renew_grant_claim(
        &self,
        job_id: &str,
        lease: std::time::Duration,
    ) -> Result<(), StoreError> {
        let until =
            Utc::now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(15));
        grant::Entity::update_many()
            .col_expr(grant::Column::ClaimedUntil, Expr::value(until))
            .filter(grant::Column::JobId.eq(job_id))
            .filter(grant::Column::State.eq(GrantState::Ending))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Gives one grant's claim back after a failed undo, to be tried again from `next_attempt`.
    pub async fn retry_grant_later(
        &self,
        job_id: &str,
        attempts: u32,
        next_attempt: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        handing_back(job_id, next_attempt)
            .col_expr(
                grant::Column::UndoAttempts,
                Expr::value(i32::try_from(attempts).unwrap_or(i32::MAX)),
            )
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Puts an expiry off until `next_attempt` without counting a failure: its undo reserved
    /// `held_slot` of a per-group limit, which the next attempt uses.
    pub async fn defer_grant(
        &self,
        job_id: &str,
        next_attempt: DateTime<Utc>,
        held_slot: &str,
    ) -> Result<(), StoreError> {
        handing_back(job_id, next_attempt)
            .col_expr(grant::Column::HeldSlot, Expr::value(held_slot.to_string()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Ends a grant and queues the messages announcing it, in one transaction: the grant is
    /// never recorded ended without its event, nor the event sent for a grant still live.
    pub async fn end_grant_with(
        &self,
        job_id: &str,
        state: GrantState,
        note: Option<String>,
        outbox: Vec<super::OutboxMessage>,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        end_in(&txn, job_id, state, note).await?;
        let lane = super::jobs::insert_outbox(&txn, &self.owner, outbox).await?;
        txn.commit().await?;
        self.committed(lane);
        Ok(())
    }

    /// Ends every live grant (pending or active) of a user on a target, in one statement (a
    /// revoke removed the membership: the scheduler must not restore it); how many it ended.
    pub async fn end_live_grants_on(
        &self,
        connector: &str,
        target_kind: TargetKind,
        target_id: u64,
        user_id: u64,
        note: String,
    ) -> Result<u64, StoreError> {
        let r = ending(GrantState::Ended, Some(note))
            .filter(grant::Column::Connector.eq(connector))
            .filter(grant::Column::TargetType.eq(target_kind.as_str()))
            .filter(grant::Column::TargetId.eq(i64::try_from(target_id).unwrap_or(i64::MAX)))
            .filter(grant::Column::UserId.eq(i64::try_from(user_id).unwrap_or(i64::MAX)))
            .filter(grant::Column::State.is_in([GrantState::Pending, GrantState::Active]))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected)
    }

    /// Ends a grant: `state` is [`GrantState::Ended`] or [`GrantState::Conflict`].
    pub async fn end_grant(
        &self,
        job_id: &str,
        state: GrantState,
        note: Option<String>,
    ) -> Result<(), StoreError> {
        end_in(&self.db, job_id, state, note).await
    }
}

/// Pending grants whose job no delivery runs: its lease ran out, or it finished.
fn orphaned_pending(now: DateTime<Utc>) -> Condition {
    Condition::all()
        .add(grant::Column::State.eq(GrantState::Pending))
        .add(
            grant::Column::JobId.in_subquery(
                Query::select()
                    .column(job::Column::JobId)
                    .from(job::Entity)
                    .cond_where(
                        Condition::any()
                            .add(job::Column::LeaseUntil.lt(now))
                            .add(job::Column::State.eq(JobState::Finished)),
                    )
                    .to_owned(),
            ),
        )
}

/// The update that ends grants (`state`: ended or conflict) with a note; the caller says which.
fn ending(state: GrantState, note: Option<String>) -> UpdateMany<grant::Entity> {
    let now = Utc::now();
    grant::Entity::update_many()
        .col_expr(grant::Column::State, Expr::value(state))
        .col_expr(grant::Column::EndedAt, Expr::value(now))
        .col_expr(grant::Column::Note, Expr::value(note))
        .col_expr(grant::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            grant::Column::ClaimedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
}

async fn end_in<C: ConnectionTrait>(
    db: &C,
    job_id: &str,
    state: GrantState,
    note: Option<String>,
) -> Result<(), StoreError> {
    ending(state, note)
        .filter(grant::Column::JobId.eq(job_id))
        .exec(db)
        .await?;
    Ok(())
}

/// Gives an ending grant's claim back, to be tried again from `next_attempt`.
fn handing_back(job_id: &str, next_attempt: DateTime<Utc>) -> sea_orm::UpdateMany<grant::Entity> {
    grant::Entity::update_many()
        .col_expr(grant::Column::State, Expr::value(GrantState::Active))
        .col_expr(
            grant::Column::ClaimedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(grant::Column::NextAttemptAt, Expr::value(next_attempt))
        .col_expr(grant::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(grant::Column::JobId.eq(job_id.to_string()))
        .filter(grant::Column::State.eq(GrantState::Ending))
}
