//! Snapshot body records, stored temporally: a row is valid from the snapshot that first
//! contained it (`valid_from`) until the first one that did not (`valid_to`, exclusive).
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "snapshot_records")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub connector: String,
    pub scope: String,
    /// `Record::order_key`: identity and sort order.
    pub record_key: String,
    /// The NDJSON line, without its newline.
    #[sea_orm(column_type = "Text")]
    pub content: String,
    /// sha256 of `content` (hex, first 32 characters): comparing a re-sync needs only this.
    pub digest: String,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
    /// The user the record is about (user, membership and access records).
    pub user_id: Option<i64>,
    /// The resource it is about, `g<id>` or `p<id>` (group, project, membership, share,
    /// invitation and access records).
    pub resource: Option<String>,
    /// A user's username, a group's full path or a project's path with namespace.
    #[sea_orm(column_type = "Text", nullable)]
    pub label: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
