//! Live changes between full snapshots (docs/hooks.md, "Change history"). Each applied batch
//! is one row on its base snapshot: what was read (facts), every record it changed, and a
//! sha256 chained to the batch before it on the same base (the first to the base snapshot's
//! own hash), so the sequence base → batch → batch is tamper-evident like the snapshots.
//! The live state at any batch is the base's records with the batches' changes laid over them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::entity::change_batch;
use super::jobs::{OutboxMessage, insert_outbox};
use super::{SnapshotInfo, Store, StoreError};

/// A stored batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeBatch {
    pub id: i64,
    pub connector: String,
    pub scope: String,
    pub base_seq: i64,
    pub read_at: DateTime<Utc>,
    pub applied_at: DateTime<Utc>,
    pub cause: String,
    pub source_events: Vec<String>,
    #[serde(skip)]
    pub facts: String,
    #[serde(skip)]
    pub changes: String,
    pub change_count: i64,
    pub access_changes: i64,
    pub sha256: String,
    pub prev_sha256: String,
}

impl From<change_batch::Model> for ChangeBatch {
    fn from(m: change_batch::Model) -> Self {
        Self {
            id: m.id,
            connector: m.connector,
            scope: m.scope,
            base_seq: m.base_seq,
            read_at: m.read_at,
            applied_at: m.applied_at,
            cause: m.cause,
            source_events: serde_json::from_str(&m.source_events).unwrap_or_default(),
            facts: m.facts,
            changes: m.changes,
            change_count: m.change_count,
            access_changes: m.access_changes,
            sha256: m.sha256,
            prev_sha256: m.prev_sha256,
        }
    }
}

/// One line of a batch's `changes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeLine {
    pub key: String,
    /// The record's line as a snapshot writes it, or `null` when it is gone.
    pub record: Option<Box<serde_json::value::RawValue>>,
}

/// A batch to append.
pub struct NewBatch<'a> {
    pub base: &'a SnapshotInfo,
    pub read_at: DateTime<Utc>,
    pub cause: &'a str,
    pub source_events: &'a [String],
    pub facts: String,
    pub changes: String,
    pub change_count: i64,
    pub access_changes: i64,
}

/// Why a batch was not appended: the caller's view is behind (another batch or a newer base
/// snapshot was stored meanwhile).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Append {
    Stored(Box<ChangeBatch>),
    Stale,
}

/// The hash of a batch: its predecessor's hash, then its identifying fields, facts and changes.
#[allow(clippy::too_many_arguments)]
fn batch_hash(
    prev: &str,
    connector: &str,
    scope: &str,
    applied_at: DateTime<Utc>,
    cause: &str,
    source_events: &str,
    facts: &str,
    changes: &str,
) -> String {
    let mut h = Sha256::new();
    let head = serde_json::json!({
        "prev_sha256": prev,
        "connector": connector,
        "scope": scope,
        "applied_at": applied_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "cause": cause,
    });
    for part in [&head.to_string(), source_events, facts, changes] {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    gitlab_connector::snapshot::hex(&h.finalize())
}

impl Store {
    /// A connector and scope's batches that meet `condition`, oldest first.
    async fn batches_where(
        &self,
        connector: &str,
        scope: &str,
        condition: Condition,
    ) -> Result<Vec<ChangeBatch>, StoreError> {
        Ok(change_batch::Entity::find()
            .filter(change_batch::Column::Connector.eq(connector))
            .filter(change_batch::Column::Scope.eq(scope))
            .filter(condition)
            .order_by_asc(change_batch::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(ChangeBatch::from)
            .collect())
    }

    /// Batches on a base snapshot after batch `after` (all of them for `None`), oldest first.
    pub async fn batches_on(
        &self,
        connector: &str,
        scope: &str,
        base_seq: i64,
        after: Option<i64>,
    ) -> Result<Vec<ChangeBatch>, StoreError> {
        self.batches_where(
            connector,
            scope,
            Condition::all()
                .add(change_batch::Column::BaseSeq.eq(base_seq))
                .add(change_batch::Column::Id.gt(after.unwrap_or(0))),
        )
        .await
    }

    /// The newest batch on a base snapshot.
    pub async fn last_batch_on(
        &self,
        connector: &str,
        scope: &str,
        base_seq: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(change_batch::Entity::find()
            .select_only()
            .column(change_batch::Column::Id)
            .filter(change_batch::Column::Connector.eq(connector))
            .filter(change_batch::Column::Scope.eq(scope))
            .filter(change_batch::Column::BaseSeq.eq(base_seq))
            .order_by_desc(change_batch::Column::Id)
            .into_tuple::<i64>()
            .one(&self.db)
            .await?)
    }

    /// Batches on bases before `base_seq` whose re-reads began at or after `since`: GitLab's
    /// state they saw may be newer than what a full sync that started at `since` read.
    pub async fn batches_read_since(
        &self,
        connector: &str,
        scope: &str,
        base_seq: i64,
        since: DateTime<Utc>,
    ) -> Result<Vec<ChangeBatch>, StoreError> {
        self.batches_where(
            connector,
            scope,
            Condition::all()
                .add(change_batch::Column::BaseSeq.lt(base_seq))
                .add(change_batch::Column::ReadAt.gte(since)),
        )
        .await
    }

    /// Appends a batch after `last` (the newest batch the caller applied, `None` for none) on
    /// `new.base`, with its outbox messages, in one transaction; [`Append::Stale`] when either
    /// is no longer the newest.
    pub async fn append_batch(
        &self,
        new: NewBatch<'_>,
        last: Option<i64>,
        outbox: impl FnOnce(&ChangeBatch) -> Vec<OutboxMessage>,
    ) -> Result<Append, StoreError> {
        let base = new.base;
        let txn = self.db.begin().await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                [format!("snapshots/{}/{}", base.connector, base.scope).into()],
            ))
            .await?;
        }
        let newest_base = super::entity::snapshot::Entity::find()
            .filter(super::entity::snapshot::Column::Connector.eq(&base.connector))
            .filter(super::entity::snapshot::Column::Scope.eq(&base.scope))
            .filter(super::entity::snapshot::Column::Complete.eq(true))
            .order_by_desc(super::entity::snapshot::Column::Seq)
            .one(&txn)
            .await?
            .map(|s| s.seq);
        let prev = change_batch::Entity::find()
            .filter(change_batch::Column::Connector.eq(&base.connector))
            .filter(change_batch::Column::Scope.eq(&base.scope))
            .filter(change_batch::Column::BaseSeq.eq(base.seq))
            .order_by_desc(change_batch::Column::Id)
            .one(&txn)
            .await?;
        if newest_base != Some(base.seq) || prev.as_ref().map(|p| p.id) != last {
            return Ok(Append::Stale);
        }
        let prev_sha = prev.map_or_else(|| base.sha256.clone(), |p| p.sha256);
        // Microseconds: what every backend keeps, so the hash is the same when read back.
        let applied_at =
            DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap_or_else(Utc::now);
        let source_events = serde_json::to_string(new.source_events).unwrap_or_default();
        let sha = batch_hash(
            &prev_sha,
            &base.connector,
            &base.scope,
            applied_at,
            new.cause,
            &source_events,
            &new.facts,
            &new.changes,
        );
        let inserted = change_batch::Entity::insert(change_batch::ActiveModel {
            connector: Set(base.connector.clone()),
            scope: Set(base.scope.clone()),
            base_seq: Set(base.seq),
            read_at: Set(new.read_at),
            applied_at: Set(applied_at),
            cause: Set(new.cause.to_string()),
            source_events: Set(source_events),
            facts: Set(new.facts),
            changes: Set(new.changes),
            change_count: Set(new.change_count),
            access_changes: Set(new.access_changes),
            sha256: Set(sha),
            prev_sha256: Set(prev_sha),
            ..Default::default()
        })
        .exec(&txn)
        .await?;
        let row = change_batch::Entity::find_by_id(inserted.last_insert_id)
            .one(&txn)
            .await?
            .map(ChangeBatch::from)
            .ok_or_else(|| StoreError::Damaged {
                id: format!("change batch {}", inserted.last_insert_id),
                message: "not found right after it was written".into(),
            })?;
        let lane = insert_outbox(&txn, &self.owner, outbox(&row)).await?;
        txn.commit().await?;
        self.committed(lane);
        Ok(Append::Stored(Box::new(row)))
    }

    /// Checks the hash chain of every batch on `base`; the number of batches checked.
    pub async fn verify_batches(&self, base: &SnapshotInfo) -> Result<usize, StoreError> {
        let batches = self
            .batches_on(&base.connector, &base.scope, base.seq, None)
            .await?;
        let mut prev = base.sha256.clone();
        for b in &batches {
            let source_events = serde_json::to_string(&b.source_events).unwrap_or_default();
            let sha = batch_hash(
                &prev,
                &b.connector,
                &b.scope,
                b.applied_at,
                &b.cause,
                &source_events,
                &b.facts,
                &b.changes,
            );
            if b.prev_sha256 != prev || b.sha256 != sha {
                return Err(StoreError::Damaged {
                    id: format!("change batch {} on snapshot {}", b.id, base.snapshot_id),
                    message: format!(
                        "its hash chain does not hold (stored {}, computed {sha}); the database was changed outside the worker",
                        b.sha256
                    ),
                });
            }
            prev = sha;
        }
        Ok(batches.len())
    }

    /// The records the batches change, by key, the later batch winning: what is laid over the
    /// base snapshot's records to give the live state after the last of them.
    pub fn overrides(
        batches: &[ChangeBatch],
    ) -> Result<BTreeMap<String, Option<String>>, StoreError> {
        let mut out = BTreeMap::new();
        for b in batches {
            for line in b.changes.lines().filter(|l| !l.is_empty()) {
                let c: ChangeLine =
                    serde_json::from_str(line).map_err(|e| StoreError::Damaged {
                        id: format!("change batch {}", b.id),
                        message: format!("a change line is not valid: {e}"),
                    })?;
                out.insert(c.key, c.record.map(|r| r.get().to_string()));
            }
        }
        Ok(out)
    }
}
