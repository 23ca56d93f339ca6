//! Migration 10.

#![allow(elided_lifetimes_in_paths)] // async_trait signatures of sea-orm-migration

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

/// A job handed back to wait outside the worker for a slot of GitLab's per-group limits
/// (`jobs::deferred`): how many times it was (those deliveries are not attempts), and the slot
/// it reserved, which its next delivery uses. A JIT expiry put off the same way keeps its slot
/// on the grant.
pub(super) struct M0010JobDeferrals;

impl MigrationName for M0010JobDeferrals {
    fn name(&self) -> &str {
        "m0010_job_deferrals"
    }
}

#[derive(DeriveIden)]
enum Jobs {
    #[sea_orm(iden = "jobs")]
    Table,
    Deferrals,
    HeldSlot,
}

#[derive(DeriveIden)]
enum Grants {
    #[sea_orm(iden = "grants")]
    Table,
    HeldSlot,
}

#[async_trait::async_trait]
impl MigrationTrait for M0010JobDeferrals {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        m.alter_table(
            Table::alter()
                .table(Jobs::Table)
                .add_column(integer(Jobs::Deferrals).default(0))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Jobs::Table)
                .add_column(text_null(Jobs::HeldSlot))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Grants::Table)
                .add_column(text_null(Grants::HeldSlot))
                .to_owned(),
        )
        .await
    }
}
