//! Migration 9.

#![allow(elided_lifetimes_in_paths)] // async_trait signatures of sea-orm-migration

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Several workers on one database, at hundreds of jobs a second:
/// - each publishes the outbox rows it committed (`owner`, a name unique to the process), so
///   three workers do not all publish every row; a row its owner has not published for a while
///   (a dead worker) is published by any (docs/scale-out.md);
/// - the rows still to publish are found through an index of only those rows, however many
///   sent rows retention keeps;
/// - a revoke finds the live grants on its membership through an index, not a scan.
pub(super) struct M0009OutboxOwner;

impl MigrationName for M0009OutboxOwner {
    fn name(&self) -> &str {
        "m0009_outbox_owner"
    }
}

#[derive(DeriveIden)]
enum Outbox {
    #[sea_orm(iden = "outbox")]
    Table,
    Id,
    Owner,
    SentAt,
    ParkedAt,
}

#[derive(DeriveIden)]
enum Grants {
    #[sea_orm(iden = "grants")]
    Table,
    UserId,
    TargetId,
}

#[async_trait::async_trait]
impl MigrationTrait for M0009OutboxOwner {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Outbox::Table)
                .add_column(string_null(Outbox::Owner))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("outbox_pending")
                .table(Outbox::Table)
                .col(Outbox::Id)
                .and_where(Expr::col(Outbox::SentAt).is_null())
                .and_where(Expr::col(Outbox::ParkedAt).is_null())
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("grants_membership")
                .table(Grants::Table)
                .col(Grants::UserId)
                .col(Grants::TargetId)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }
}
