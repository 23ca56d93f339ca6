//! Migration 8.

#![allow(elided_lifetimes_in_paths)] // async_trait signatures of sea-orm-migration

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Point-in-time questions (docs/auditors.md): each body record row names the user and the
/// resource it is about and its human name, so "who on this resource", "what does this user
/// reach" and "which group is this path" are index lookups rather than scans of every row.
pub(super) struct M0008RecordLookup;

impl MigrationName for M0008RecordLookup {
    fn name(&self) -> &str {
        "m0008_record_lookup"
    }
}

#[derive(DeriveIden)]
enum RecordLookup {
    #[sea_orm(iden = "snapshot_records")]
    Table,
    Connector,
    Scope,
    RecordKey,
    UserId,
    Resource,
    Label,
}

/// For rows stored before migration 8: the same values the writer derives, from the record
/// key (fixed-width ids, `Record::order_key`) and the record's JSON.
pub fn record_lookup_backfill(backend: sea_orm::DbBackend) -> Vec<String> {
    let (json, int) = match backend {
        sea_orm::DbBackend::Postgres => ("(content::jsonb)->>'{f}'", "BIGINT"),
        _ => ("json_extract(content, '$.{f}')", "INTEGER"),
    };
    let text = |f: &str| json.replace("{f}", f);
    vec![
        format!(
            "UPDATE snapshot_records SET user_id = CAST(substr(record_key, 3) AS {int}) WHERE record_key LIKE '1/%'"
        ),
        format!(
            "UPDATE snapshot_records SET user_id = CAST(substr(record_key, 25) AS {int}) WHERE record_key LIKE '4/%' OR record_key LIKE '9/%'"
        ),
        "UPDATE snapshot_records SET resource = 'g' || ltrim(substr(record_key, 3), '0') WHERE record_key LIKE '2/%'".into(),
        "UPDATE snapshot_records SET resource = 'p' || ltrim(substr(record_key, 3), '0') WHERE record_key LIKE '3/%'".into(),
        "UPDATE snapshot_records SET resource = substr(record_key, 3, 1) || ltrim(substr(record_key, 4, 20), '0') WHERE record_key LIKE '4/%' OR record_key LIKE '5/%' OR record_key LIKE '6/%' OR record_key LIKE '9/%'".into(),
        format!(
            "UPDATE snapshot_records SET label = {} WHERE record_key LIKE '1/%'",
            text("username")
        ),
        format!(
            "UPDATE snapshot_records SET label = {} WHERE record_key LIKE '2/%'",
            text("full_path")
        ),
        format!(
            "UPDATE snapshot_records SET label = {} WHERE record_key LIKE '3/%'",
            text("path_with_namespace")
        ),
    ]
}

#[async_trait::async_trait]
impl MigrationTrait for M0008RecordLookup {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for col in [
            big_integer_null(RecordLookup::UserId),
            string_null(RecordLookup::Resource),
            text_null(RecordLookup::Label),
        ] {
            m.alter_table(
                Table::alter()
                    .table(RecordLookup::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        let db = m.get_connection();
        for sql in record_lookup_backfill(m.get_database_backend()) {
            db.execute_unprepared(&sql).await?;
        }
        for (name, col) in [
            ("snapshot_records_by_key", RecordLookup::RecordKey),
            ("snapshot_records_by_user", RecordLookup::UserId),
            ("snapshot_records_by_resource", RecordLookup::Resource),
            ("snapshot_records_by_label", RecordLookup::Label),
        ] {
            m.create_index(
                Index::create()
                    .name(name)
                    .table(RecordLookup::Table)
                    .col(RecordLookup::Connector)
                    .col(RecordLookup::Scope)
                    .col(col)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}
