//! Named leases across workers: the one who holds `name` until its end may act; anyone may take
//! it over once it has ended (its holder died).

use chrono::Utc;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter};

use super::entity::lease;
use super::{Store, StoreError};

impl Store {
    /// Takes `name` for `holder` for `ttl`, if nobody else holds it; true when taken.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<bool, StoreError> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(60));
        let inserted = lease::Entity::insert(lease::ActiveModel {
            name: Set(name.to_string()),
            holder: Set(holder.to_string()),
            until: Set(until),
        })
        .on_conflict(
            OnConflict::column(lease::Column::Name)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(&self.db)
        .await?;
        if inserted == 1 {
            return Ok(true);
        }
        let taken = lease::Entity::update_many()
            .col_expr(lease::Column::Holder, Expr::value(holder.to_string()))
            .col_expr(lease::Column::Until, Expr::value(until))
            .filter(lease::Column::Name.eq(name))
            .filter(
                Condition::any()
                    .add(lease::Column::Until.lt(now))
                    .add(lease::Column::Holder.eq(holder)),
            )
            .exec(&self.db)
            .await?;
        Ok(taken.rows_affected == 1)
    }

    /// Gives `name` up, if `holder` holds it.
    pub async fn release_named_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        lease::Entity::delete_many()
            .filter(lease::Column::Name.eq(name))
            .filter(lease::Column::Holder.eq(holder))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
