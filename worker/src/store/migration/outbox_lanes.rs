//! Migration 11.

#![allow(elided_lifetimes_in_paths)] // async_trait signatures of sea-orm-migration

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// Two publishing lanes (`store::OutboxLane`): a commit that announces something (events, a
/// snapshot's object, its access diff) goes to `events`, published in commit order as before;
/// a commit of results alone goes to `results`, so a job's result never waits while a sync's
/// snapshot is exported, diffed and uploaded. Rows committed before this migration may belong
/// to either, so they go to `events`, the lane that publishes every kind in order.
pub(super) struct M0011OutboxLanes;

impl MigrationName for M0011OutboxLanes {
    fn name(&self) -> &str {
        "m0011_outbox_lanes"
    }
}

#[derive(DeriveIden)]
enum Outbox {
    #[sea_orm(iden = "outbox")]
    Table,
    Id,
    Lane,
    SentAt,
    ParkedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for M0011OutboxLanes {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Outbox::Table)
                .add_column(string(Outbox::Lane).default("events"))
                .to_owned(),
        )
        .await?;
        // Each lane reads its own unsent rows in order; the index of migration 9 (unsent rows
        // by id) is replaced by one that starts with the lane.
        m.drop_index(
            Index::drop()
                .name("outbox_pending")
                .table(Outbox::Table)
                .if_exists()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("outbox_pending_lane")
                .table(Outbox::Table)
                .col(Outbox::Lane)
                .col(Outbox::Id)
                .and_where(Expr::col(Outbox::SentAt).is_null())
                .and_where(Expr::col(Outbox::ParkedAt).is_null())
                .if_not_exists()
                .to_owned(),
        )
        .await
    }
}
