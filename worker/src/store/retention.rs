//! Retention (`RETENTION_DAYS`): finished jobs, sent outbox messages and snapshots older than
//! the cutoff are deleted. Kept whatever their age: a job whose grant is still live (the
//! scheduler needs it), every pinned snapshot, the latest complete snapshot of each connector
//! and scope (the base of the next diff), every snapshot's row with its hashes (the chain stays
//! verifiable; only its records go), the grants and the audit log. The live change batches on a
//! pruned snapshot go with its records.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder};
use serde::Serialize;

use super::entity::{grant, job, outbox, snapshot};
use super::records::{GrantState, JobState};
use super::{Store, StoreError};

/// What one retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    pub jobs: u64,
    pub outbox: u64,
    pub snapshots: u64,
    pub snapshot_records: u64,
    pub change_batches: u64,
}

/// Snapshot records no kept snapshot of the same connector and scope lies within.
const UNUSED_RECORDS: &str = "DELETE FROM snapshot_records WHERE valid_to IS NOT NULL AND NOT EXISTS (\
    SELECT 1 FROM snapshots s WHERE s.connector = snapshot_records.connector \
    AND s.scope = snapshot_records.scope AND s.pruned_at IS NULL \
    AND s.seq >= snapshot_records.valid_from AND s.seq < snapshot_records.valid_to)";

/// The live change batches of pruned snapshots.
const PRUNED_BATCHES: &str = "DELETE FROM change_batches WHERE base_seq IN (\
    SELECT seq FROM snapshots WHERE pruned_at IS NOT NULL)";

impl Store {
    /// Deletes what is older than `cutoff` (see the module documentation).
    pub async fn apply_retention(&self, cutoff: DateTime<Utc>) -> Result<Pruned, StoreError> {
        let live_grants = Query::select()
            .column(grant::Column::JobId)
            .from(grant::Entity)
            .cond_where(grant::Column::State.is_in([
                GrantState::Pending,
                GrantState::Active,
                GrantState::Ending,
            ]))
            .to_owned();
        let jobs = job::Entity::delete_many()
            .filter(job::Column::State.eq(JobState::Finished))
            .filter(job::Column::UpdatedAt.lt(cutoff))
            .filter(job::Column::JobId.not_in_subquery(live_grants))
            .exec(&self.db)
            .await?
            .rows_affected;
        let outbox = outbox::Entity::delete_many()
            .filter(outbox::Column::SentAt.is_not_null())
            .filter(outbox::Column::SentAt.lt(cutoff))
            .exec(&self.db)
            .await?
            .rows_affected;
        let mut snapshots = 0;
        for old in snapshot::Entity::find()
            .filter(snapshot::Column::FinishedAt.lt(cutoff))
            .filter(snapshot::Column::Pinned.eq(false))
            .filter(snapshot::Column::PrunedAt.is_null())
            .order_by_asc(snapshot::Column::Seq)
            .all(&self.db)
            .await?
        {
            let base = self
                .latest_snapshot(&old.connector, &old.scope, true)
                .await?;
            if base.is_some_and(|b| b.seq == old.seq) {
                continue;
            }
            snapshots += snapshot::Entity::update_many()
                .col_expr(snapshot::Column::PrunedAt, Expr::value(Utc::now()))
                .filter(
                    Condition::all()
                        .add(snapshot::Column::Seq.eq(old.seq))
                        .add(snapshot::Column::Pinned.eq(false)),
                )
                .exec(&self.db)
                .await?
                .rows_affected;
        }
        let (snapshot_records, change_batches) = if snapshots > 0 {
            let records = self
                .db
                .execute_unprepared(UNUSED_RECORDS)
                .await?
                .rows_affected();
            let batches = self
                .db
                .execute_unprepared(PRUNED_BATCHES)
                .await?
                .rows_affected();
            (records, batches)
        } else {
            (0, 0)
        };
        Ok(Pruned {
            jobs,
            outbox,
            snapshots,
            snapshot_records,
            change_batches,
        })
    }

    /// Pins (or unpins) a snapshot: retention keeps a pinned snapshot whatever its age.
    pub async fn pin_snapshot(&self, snapshot_id: &str, pinned: bool) -> Result<(), StoreError> {
        let info = self.find_snapshot(snapshot_id).await?;
        if let Some(at) = info.pruned_at {
            return Err(StoreError::Pruned {
                id: info.snapshot_id,
                at,
            });
        }
        snapshot::Entity::update_many()
            .col_expr(snapshot::Column::Pinned, Expr::value(pinned))
            .filter(snapshot::Column::Seq.eq(info.seq))
            .exec(&self.db)
            .await?;
        Ok(())
    }
}
