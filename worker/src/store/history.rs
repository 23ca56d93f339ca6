//! Reads for point-in-time questions (docs/auditors.md): the stored versions of records by the
//! user or resource they are about, records by key or name as of one snapshot, and the change
//! batches that mention a record. What the versions mean is the `history` module's business.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, ExprTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::entity::{audit_log, change_batch, snapshot_record};
use super::{AuditRow, ChangeBatch, Store, StoreError};

/// Keys per `IN (…)` list: well under every backend's bind-parameter limit.
const KEYS_PER_QUERY: usize = 500;

/// One stored version of a record: its line, valid in the snapshots `valid_from..valid_to`
/// (by `seq`; `valid_to` exclusive, `None` while current).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordVersion {
    pub key: String,
    pub content: String,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
}

impl RecordVersion {
    pub fn valid_at(&self, seq: i64) -> bool {
        self.valid_from <= seq && self.valid_to.is_none_or(|to| to > seq)
    }
}

/// Which versions to read: every filter given must hold.
#[derive(Debug, Clone, Default)]
pub struct VersionFilter<'a> {
    /// Record kind, as the key's first part (`"9/"` access, `"1/"` user, …).
    pub key_prefix: &'a str,
    pub user_id: Option<i64>,
    pub resource: Option<gitlab_connector::model::ResourceRef>,
    /// Only versions that began or ended in snapshots `(after, up_to]`.
    pub changed_between: Option<(i64, i64)>,
}

type VersionTuple = (String, String, i64, Option<i64>);

fn version((key, content, valid_from, valid_to): VersionTuple) -> RecordVersion {
    RecordVersion {
        key,
        content,
        valid_from,
        valid_to,
    }
}

/// Valid in snapshot `seq`. `+ 0` keeps SQLite's planner off the `valid_from`/`valid_to`
/// indexes (a range over most of the table) when a key, name or user index narrows the rows
/// to a handful: without statistics it would otherwise scan a million rows per lookup.
fn valid_in(seq: i64) -> Condition {
    let plus0 = |c: snapshot_record::Column| Expr::col(c).add(0);
    Condition::all()
        .add(plus0(snapshot_record::Column::ValidFrom).lte(seq))
        .add(
            Condition::any()
                .add(snapshot_record::Column::ValidTo.is_null())
                .add(plus0(snapshot_record::Column::ValidTo).gt(seq)),
        )
}

fn versions_query(connector: &str, scope: &str) -> sea_orm::Select<snapshot_record::Entity> {
    snapshot_record::Entity::find()
        .select_only()
        .columns([
            snapshot_record::Column::RecordKey,
            snapshot_record::Column::Content,
            snapshot_record::Column::ValidFrom,
            snapshot_record::Column::ValidTo,
        ])
        .filter(snapshot_record::Column::Connector.eq(connector))
        .filter(snapshot_record::Column::Scope.eq(scope))
}

impl Store {
    /// Stored versions of a connector and scope's records, by key then age.
    pub async fn record_versions(
        &self,
        connector: &str,
        scope: &str,
        filter: &VersionFilter<'_>,
    ) -> Result<Vec<RecordVersion>, StoreError> {
        let mut q = versions_query(connector, scope);
        if !filter.key_prefix.is_empty() {
            q = q.filter(snapshot_record::Column::RecordKey.starts_with(filter.key_prefix));
        }
        if let Some(u) = filter.user_id {
            q = q.filter(snapshot_record::Column::UserId.eq(u));
        }
        if let Some(r) = &filter.resource {
            q = q.filter(snapshot_record::Column::Resource.eq(super::snapshots::resource_code(r)));
        }
        if let Some((after, up_to)) = filter.changed_between {
            q = q.filter(
                Condition::any()
                    .add(
                        snapshot_record::Column::ValidFrom
                            .gt(after)
                            .and(snapshot_record::Column::ValidFrom.lte(up_to)),
                    )
                    .add(
                        snapshot_record::Column::ValidTo
                            .gt(after)
                            .and(snapshot_record::Column::ValidTo.lte(up_to)),
                    ),
            );
        }
        let mut rows: Vec<RecordVersion> = q
            .into_tuple::<VersionTuple>()
            .all(&self.db)
            .await?
            .into_iter()
            .map(version)
            .collect();
        rows.sort_by(|a, b| (&a.key, a.valid_from).cmp(&(&b.key, b.valid_from)));
        Ok(rows)
    }

    /// Every stored version of the records with these keys, by key then age.
    pub async fn versions_of_keys(
        &self,
        connector: &str,
        scope: &str,
        keys: &[String],
    ) -> Result<Vec<RecordVersion>, StoreError> {
        let mut out = self.keyed(connector, scope, keys, None).await?;
        out.sort_by(|a, b| (&a.key, a.valid_from).cmp(&(&b.key, b.valid_from)));
        Ok(out)
    }

    /// The versions of records with these keys (only those valid in snapshot `at`, if given).
    async fn keyed(
        &self,
        connector: &str,
        scope: &str,
        keys: &[String],
        at: Option<i64>,
    ) -> Result<Vec<RecordVersion>, StoreError> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        let mut out = Vec::new();
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            let mut q = versions_query(connector, scope)
                .filter(snapshot_record::Column::RecordKey.is_in(chunk.iter().cloned()));
            if let Some(seq) = at {
                q = q.filter(valid_in(seq));
            }
            let rows = q.into_tuple::<VersionTuple>().all(&self.db).await?;
            out.extend(rows.into_iter().map(version));
        }
        Ok(out)
    }

    /// The records of one kind (`key_prefix`) valid in snapshot `seq` (in any, newest first,
    /// for `None`) whose name (username, full path, path with namespace) is `label`, or starts
    /// with it when `prefix`; at most `limit`, by name.
    #[allow(clippy::too_many_arguments)]
    pub async fn records_named(
        &self,
        connector: &str,
        scope: &str,
        seq: Option<i64>,
        key_prefix: &str,
        label: &str,
        prefix: bool,
        limit: u64,
    ) -> Result<Vec<RecordVersion>, StoreError> {
        let name = if prefix {
            snapshot_record::Column::Label.starts_with(label)
        } else {
            snapshot_record::Column::Label.eq(label)
        };
        let mut q = versions_query(connector, scope)
            .filter(snapshot_record::Column::RecordKey.starts_with(key_prefix))
            .filter(name);
        match seq {
            Some(seq) => q = q.filter(valid_in(seq)),
            None => q = q.order_by_desc(snapshot_record::Column::ValidFrom),
        }
        Ok(q.order_by_asc(snapshot_record::Column::Label)
            .limit(limit)
            .into_tuple::<VersionTuple>()
            .all(&self.db)
            .await?
            .into_iter()
            .map(version)
            .collect())
    }

    /// Batches applied up to `until` (all of them for `None`) whose changes mention any of
    /// `needles` (every batch when empty), oldest first. A needle is matched as text: callers
    /// check the parsed change lines.
    pub async fn batches_mentioning(
        &self,
        connector: &str,
        scope: &str,
        until: Option<DateTime<Utc>>,
        needles: &[String],
    ) -> Result<Vec<ChangeBatch>, StoreError> {
        let mut q = change_batch::Entity::find()
            .filter(change_batch::Column::Connector.eq(connector))
            .filter(change_batch::Column::Scope.eq(scope));
        if let Some(t) = until {
            q = q.filter(change_batch::Column::AppliedAt.lte(t));
        }
        if !needles.is_empty() {
            let mut any = Condition::any();
            for n in needles {
                any = any.add(change_batch::Column::Changes.contains(n));
            }
            q = q.filter(any);
        }
        Ok(q.order_by_asc(change_batch::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(ChangeBatch::from)
            .collect())
    }

    /// Audit entries of a connector's GitLab writes that succeeded in `[since, until]`,
    /// optionally about one user, oldest first.
    pub async fn audit_writes(
        &self,
        connector: &str,
        user_id: Option<i64>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<AuditRow>, StoreError> {
        let mut q = audit_log::Entity::find()
            .filter(audit_log::Column::Connector.eq(connector))
            .filter(audit_log::Column::Outcome.eq("ok"));
        if let Some(u) = user_id {
            q = q.filter(audit_log::Column::UserId.eq(u));
        }
        if let Some(t) = since {
            q = q.filter(audit_log::Column::At.gte(t));
        }
        if let Some(t) = until {
            q = q.filter(audit_log::Column::At.lte(t));
        }
        Ok(q.order_by_asc(audit_log::Column::Id)
            .all(&self.db)
            .await?
            .into_iter()
            .map(AuditRow::from)
            .collect())
    }
}

impl Store {
    /// The records with these keys as they were in snapshot `seq` (absent keys had none).
    pub async fn records_at(
        &self,
        connector: &str,
        scope: &str,
        seq: i64,
        keys: &[String],
    ) -> Result<Vec<RecordVersion>, StoreError> {
        self.keyed(connector, scope, keys, Some(seq)).await
    }
}
