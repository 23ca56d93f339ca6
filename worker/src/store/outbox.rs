//! Outbox messages that cannot be published: parked with their reason (the publisher moves
//! on), listed for operators, and dismissed once dealt with.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, TransactionTrait,
};

use super::entity::outbox;
use super::jobs::{OutboxMessage, insert_outbox};
use super::{Store, StoreError};

/// A parked outbox message, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    pub id: i64,
    pub msg_id: String,
    pub subject: String,
    pub bytes: usize,
    pub parked_at: DateTime<Utc>,
    pub reason: String,
}

impl Store {
    /// Records how far an unsent row that is published in parts has got (its new payload).
    pub async fn outbox_progress(&self, id: i64, payload: &str) -> Result<(), StoreError> {
        outbox::Entity::update_many()
            .col_expr(outbox::Column::Payload, Expr::value(payload.to_string()))
            .filter(outbox::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Parks row `id` with `reason` and queues `notice` (its DLQ notice), in one transaction.
    pub async fn park_outbox(
        &self,
        id: i64,
        reason: &str,
        notice: OutboxMessage,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        outbox::Entity::update_many()
            .col_expr(outbox::Column::ParkedAt, Expr::value(Utc::now()))
            .col_expr(
                outbox::Column::ParkedReason,
                Expr::value(reason.to_string()),
            )
            .filter(outbox::Column::Id.eq(id))
            .exec(&txn)
            .await?;
        let lane = insert_outbox(&txn, &self.owner, vec![notice]).await?;
        txn.commit().await?;
        self.committed(lane);
        Ok(())
    }

    /// Parked messages not yet dismissed, oldest first.
    pub async fn parked_outbox(&self) -> Result<Vec<ParkedMessage>, StoreError> {
        Ok(outbox::Entity::find()
            .filter(outbox::Column::ParkedAt.is_not_null())
            .filter(outbox::Column::SentAt.is_null())
            .order_by_asc(outbox::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| ParkedMessage {
                id: m.id,
                msg_id: m.msg_id,
                subject: m.subject,
                bytes: m.payload.len(),
                parked_at: m.parked_at.unwrap_or_default(),
                reason: m.parked_reason.unwrap_or_default(),
            })
            .collect())
    }

    pub async fn parked_count(&self) -> Result<u64, StoreError> {
        Ok(outbox::Entity::find()
            .filter(outbox::Column::ParkedAt.is_not_null())
            .filter(outbox::Column::SentAt.is_null())
            .count(&self.db)
            .await?)
    }

    /// Dismisses parked messages (all with `None`): they count as dealt with (`sent_at` is
    /// set, the reason stays) and the worker is ready again. Returns how many.
    pub async fn dismiss_parked(&self, id: Option<i64>) -> Result<u64, StoreError> {
        let mut q = outbox::Entity::update_many()
            .col_expr(outbox::Column::SentAt, Expr::value(Utc::now()))
            .filter(outbox::Column::ParkedAt.is_not_null())
            .filter(outbox::Column::SentAt.is_null());
        if let Some(id) = id {
            q = q.filter(outbox::Column::Id.eq(id));
        }
        Ok(q.exec(&self.db).await?.rows_affected)
    }
}
