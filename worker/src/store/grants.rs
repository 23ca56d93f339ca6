//! JIT and permanent grants, and the claims the expiry scheduler takes on them.

use chrono::{DateTime, Utc};
use gitlab_connector::provision::{MemberState, TargetKind};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entity::grant;
use super::records::{GrantRecord, GrantState};
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
        connector: m.connector,
        job_id: m.job_id,
    })
}

fn records(models: Vec<grant::Model>) -> Result<Vec<GrantRecord>, StoreError> {
    models.into_iter().map(record).collect()
}

impl Store {
    /// Records a grant (idempotent: a redelivered job keeps the first record).
    pub async fn record_grant(&self, g: GrantRecord) -> Result<(), StoreError> {
        grant::Entity::insert(grant::ActiveModel {
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
        })
        .on_conflict(
            OnConflict::column(grant::Column::JobId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        Ok(())
    }

    pub async fn grant(&self, job_id: &str) -> Result<Option<GrantRecord>, StoreError> {
        grant::Entity::find_by_id(job_id.to_string())
            .one(&self.db)
            .await?
            .map(record)
            .transpose()
    }

    /// Active grants of a user on a target (a revoke ends them).
    pub async fn active_grants_on(
        &self,
        connector: &str,
        target_kind: TargetKind,
        target_id: u64,
        user_id: u64,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        records(
            grant::Entity::find()
                .filter(grant::Column::Connector.eq(connector))
                .filter(grant::Column::TargetType.eq(target_kind.as_str()))
                .filter(grant::Column::TargetId.eq(i64::try_from(target_id).unwrap_or(i64::MAX)))
                .filter(grant::Column::UserId.eq(i64::try_from(user_id).unwrap_or(i64::MAX)))
                .filter(grant::Column::State.eq(GrantState::Active))
                .all(&self.db)
                .await?,
        )
    }

    /// Active JIT grants whose expiry has passed, soonest first.
    pub async fn due_grants(&self, now: DateTime<Utc>) -> Result<Vec<GrantRecord>, StoreError> {
        records(
            grant::Entity::find()
                .filter(grant::Column::State.eq(GrantState::Active))
                .filter(grant::Column::ExpiresAt.lte(now))
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

    /// Claims a grant for ending: only one claimant (scheduler or revoke) wins.
    pub async fn claim_grant(&self, job_id: &str) -> Result<bool, StoreError> {
        let r = grant::Entity::update_many()
            .col_expr(grant::Column::State, Expr::value(GrantState::Ending))
            .col_expr(grant::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(grant::Column::JobId.eq(job_id))
            .filter(grant::Column::State.eq(GrantState::Active))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected == 1)
    }

    /// Claims left `ending` by a worker that died before finishing go back to `active`.
    pub async fn release_stale_claims(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        let r = grant::Entity::update_many()
            .col_expr(grant::Column::State, Expr::value(GrantState::Active))
            .filter(grant::Column::State.eq(GrantState::Ending))
            .filter(grant::Column::UpdatedAt.lt(older_than))
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
        let now = Utc::now();
        grant::Entity::update_many()
            .col_expr(grant::Column::State, Expr::value(state))
            .col_expr(grant::Column::EndedAt, Expr::value(now))
            .col_expr(grant::Column::Note, Expr::value(note))
            .col_expr(grant::Column::UpdatedAt, Expr::value(now))
            .filter(grant::Column::JobId.eq(job_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
