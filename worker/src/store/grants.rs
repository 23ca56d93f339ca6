//! JIT and permanent grants, and the claims the expiry scheduler takes on them.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entity::grant;
use super::{Store, StoreError};

impl Store {
    /// Records a grant (idempotent: a redelivered job keeps the first record).
    pub async fn record_grant(&self, g: grant::Model) -> Result<(), StoreError> {
        grant::Entity::insert(grant::ActiveModel {
            job_id: Set(g.job_id),
            connector: Set(g.connector),
            target_type: Set(g.target_type),
            target_id: Set(g.target_id),
            target_path: Set(g.target_path),
            user_id: Set(g.user_id),
            created: Set(g.created),
            prior: Set(g.prior),
            applied: Set(g.applied),
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

    pub async fn grant(&self, job_id: &str) -> Result<Option<grant::Model>, StoreError> {
        Ok(grant::Entity::find_by_id(job_id.to_string())
            .one(&self.db)
            .await?)
    }

    /// Active grants of a user on a target (a revoke ends them).
    pub async fn active_grants_on(
        &self,
        connector: &str,
        target_type: &str,
        target_id: i64,
        user_id: i64,
    ) -> Result<Vec<grant::Model>, StoreError> {
        Ok(grant::Entity::find()
            .filter(grant::Column::Connector.eq(connector))
            .filter(grant::Column::TargetType.eq(target_type))
            .filter(grant::Column::TargetId.eq(target_id))
            .filter(grant::Column::UserId.eq(user_id))
            .filter(grant::Column::State.eq("active"))
            .all(&self.db)
            .await?)
    }

    /// Active JIT grants whose expiry has passed, soonest first.
    pub async fn due_grants(&self, now: DateTime<Utc>) -> Result<Vec<grant::Model>, StoreError> {
        Ok(grant::Entity::find()
            .filter(grant::Column::State.eq("active"))
            .filter(grant::Column::ExpiresAt.lte(now))
            .order_by_asc(grant::Column::ExpiresAt)
            .all(&self.db)
            .await?)
    }

    /// The next expiry of an active grant.
    pub async fn next_expiry(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(grant::Entity::find()
            .filter(grant::Column::State.eq("active"))
            .filter(grant::Column::ExpiresAt.is_not_null())
            .order_by_asc(grant::Column::ExpiresAt)
            .one(&self.db)
            .await?
            .and_then(|g| g.expires_at))
    }

    /// Claims a grant for ending: only one claimant (scheduler or revoke) wins.
    pub async fn claim_grant(&self, job_id: &str) -> Result<bool, StoreError> {
        let r = grant::Entity::update_many()
            .col_expr(grant::Column::State, Expr::value("ending"))
            .col_expr(grant::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(grant::Column::JobId.eq(job_id))
            .filter(grant::Column::State.eq("active"))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected == 1)
    }

    /// Claims left `ending` by a worker that died before finishing go back to `active`.
    pub async fn release_stale_claims(&self, older_than: DateTime<Utc>) -> Result<u64, StoreError> {
        let r = grant::Entity::update_many()
            .col_expr(grant::Column::State, Expr::value("active"))
            .filter(grant::Column::State.eq("ending"))
            .filter(grant::Column::UpdatedAt.lt(older_than))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected)
    }

    pub async fn end_grant(
        &self,
        job_id: &str,
        state: &str,
        note: Option<String>,
    ) -> Result<(), StoreError> {
        let now = Utc::now();
        grant::Entity::update_many()
            .col_expr(grant::Column::State, Expr::value(state.to_string()))
            .col_expr(grant::Column::EndedAt, Expr::value(now))
            .col_expr(grant::Column::Note, Expr::value(note))
            .col_expr(grant::Column::UpdatedAt, Expr::value(now))
            .filter(grant::Column::JobId.eq(job_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
