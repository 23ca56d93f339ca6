//! Every write the worker made (or attempted) in GitLab.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_log")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub at: DateTimeUtc,
    pub connector: String,
    pub job_id: Option<String>,
    pub action: String,
    #[sea_orm(column_type = "Text")]
    pub target: String,
    pub user_id: Option<i64>,
    #[sea_orm(column_type = "Text", nullable)]
    pub before: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub after: Option<String>,
    /// `ok`, or the error code GitLab's answer mapped to.
    pub outcome: String,
}

impl ActiveModelBehavior for ActiveModel {}
