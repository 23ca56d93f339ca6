//! Snapshot metadata; the header and summary lines are kept verbatim for byte-identical export.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "snapshots")]
pub struct Model {
    /// Store order; record rows refer to it for their validity interval.
    #[sea_orm(primary_key)]
    pub seq: i64,
    #[sea_orm(unique)]
    pub snapshot_id: String,
    pub connector: String,
    pub scope: String,
    pub started_at: DateTimeUtc,
    pub finished_at: DateTimeUtc,
    pub complete: bool,
    pub sha256: String,
    pub prev_sha256: Option<String>,
    pub record_count: i64,
    pub job_id: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub header: String,
    #[sea_orm(column_type = "Text")]
    pub summary: String,
    pub stored_at: DateTimeUtc,
    /// Kept by retention whatever its age (an auditor pinned it).
    pub pinned: bool,
    /// Retention deleted its records; the row and its hashes stay for the chain.
    pub pruned_at: Option<DateTimeUtc>,
}

impl ActiveModelBehavior for ActiveModel {}
