//! Migration 9.

#![allow(elided_lifetimes_in_paths)] // async_trait signatures of sea-orm-migration

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Workers sharing a database each publish the outbox rows they committed (`owner`, a name
/// unique to the process), so three workers do not all publish every row; a row whose owner
/// has not published it for a while (a dead worker) is published by any (docs/scale-out.md).
pub(super) struct M0009OutboxOwner;

impl MigrationName for M0009OutboxOwner {
    fn name(&self) -> &str {
        "m0009_outbox_owner"
    }
}

#[derive(DeriveIden)]
enum OutboxOwner {
    #[sea_orm(iden = "outbox")]
    Table,
    Owner,
}

#[async_trait::async_trait]
impl MigrationTrait for M0009OutboxOwner {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(OutboxOwner::Table)
                .add_column(string_null(OutboxOwner::Owner))
                .to_owned(),
        )
        .await
    }
}
