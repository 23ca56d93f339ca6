//! A batch of live changes applied on a base snapshot (docs/hooks.md, "Change history").
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "change_batches")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub connector: String,
    pub scope: String,
    /// The snapshot (`snapshots.seq`) the batch applies on.
    pub base_seq: i64,
    /// When its re-reads started: GitLab's state at least this recent.
    pub read_at: DateTimeUtc,
    pub applied_at: DateTimeUtc,
    pub cause: String,
    /// JSON array of the hook deliveries' ids.
    #[sea_orm(column_type = "Text")]
    pub source_events: String,
    /// JSON array of what the re-reads found.
    #[sea_orm(column_type = "Text")]
    pub facts: String,
    /// NDJSON `{"key": …, "record": … | null}`, by key.
    #[sea_orm(column_type = "Text")]
    pub changes: String,
    pub change_count: i64,
    pub access_changes: i64,
    pub sha256: String,
    pub prev_sha256: String,
}

impl ActiveModelBehavior for ActiveModel {}
