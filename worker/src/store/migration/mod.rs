//! Schema migrations, written once with sea-query builders for SQLite and PostgreSQL.

#![allow(elided_lifetimes_in_paths)] // async_trait signatures of sea-orm-migration

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

mod job_deferrals;
mod outbox_lanes;
mod outbox_owner;
mod record_lookup;

use job_deferrals::M0010JobDeferrals;
use outbox_lanes::M0011OutboxLanes;
use outbox_owner::M0009OutboxOwner;
use record_lookup::M0008RecordLookup;
pub use record_lookup::record_lookup_backfill;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(M0001Initial),
            Box::new(M0002Grants),
            Box::new(M0003JobPayload),
            Box::new(M0004GrantClaims),
            Box::new(M0005Leases),
            Box::new(M0006Retention),
            Box::new(M0007ChangeBatches),
            Box::new(M0008RecordLookup),
            Box::new(M0009OutboxOwner),
            Box::new(M0010JobDeferrals),
            Box::new(M0011OutboxLanes),
        ]
    }
}

/// Names are explicit: `DeriveMigrationName` takes the module's name, the same for every
/// migration in this file.
struct M0001Initial;

impl MigrationName for M0001Initial {
    fn name(&self) -> &str {
        "m0001_initial"
    }
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    JobId,
    Connector,
    Kind,
    State,
    Attempts,
    Request,
    Result,
    Status,
    Progress,
    StreamSeq,
    LeaseUntil,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    MsgId,
    Kind,
    Subject,
    Payload,
    CreatedAt,
    SentAt,
}

#[derive(DeriveIden)]
enum Snapshots {
    Table,
    Seq,
    SnapshotId,
    Connector,
    Scope,
    StartedAt,
    FinishedAt,
    Complete,
    Sha256,
    PrevSha256,
    RecordCount,
    JobId,
    Header,
    Summary,
    StoredAt,
}

#[derive(DeriveIden)]
enum SnapshotRecords {
    Table,
    Id,
    Connector,
    Scope,
    RecordKey,
    Content,
    Digest,
    ValidFrom,
    ValidTo,
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Id,
    At,
    Connector,
    JobId,
    Action,
    Target,
    UserId,
    Before,
    After,
    Outcome,
}

#[async_trait::async_trait]
impl MigrationTrait for M0001Initial {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        jobs_and_outbox(m).await?;
        snapshots(m).await?;
        audit_log(m).await
    }
}

async fn jobs_and_outbox(m: &SchemaManager<'_>) -> Result<(), DbErr> {
    m.create_table(
        Table::create()
            .table(Jobs::Table)
            .if_not_exists()
            .col(string(Jobs::JobId).primary_key())
            .col(string(Jobs::Connector))
            .col(string(Jobs::Kind))
            .col(string(Jobs::State))
            .col(integer(Jobs::Attempts))
            .col(text(Jobs::Request))
            .col(text_null(Jobs::Result))
            .col(string_null(Jobs::Status))
            .col(text_null(Jobs::Progress))
            .col(big_integer(Jobs::StreamSeq))
            .col(timestamp_with_time_zone(Jobs::LeaseUntil))
            .col(timestamp_with_time_zone(Jobs::CreatedAt))
            .col(timestamp_with_time_zone(Jobs::UpdatedAt))
            .to_owned(),
    )
    .await?;
    m.create_table(
        Table::create()
            .table(Outbox::Table)
            .if_not_exists()
            .col(big_pk_auto(Outbox::Id))
            .col(string_uniq(Outbox::MsgId))
            .col(string(Outbox::Kind))
            .col(string(Outbox::Subject))
            .col(text(Outbox::Payload))
            .col(timestamp_with_time_zone(Outbox::CreatedAt))
            .col(timestamp_with_time_zone_null(Outbox::SentAt))
            .to_owned(),
    )
    .await?;
    m.create_index(
        Index::create()
            .name("outbox_unsent")
            .table(Outbox::Table)
            .col(Outbox::SentAt)
            .col(Outbox::Id)
            .if_not_exists()
            .to_owned(),
    )
    .await?;
    Ok(())
}

async fn snapshots(m: &SchemaManager<'_>) -> Result<(), DbErr> {
    m.create_table(
        Table::create()
            .table(Snapshots::Table)
            .if_not_exists()
            .col(big_pk_auto(Snapshots::Seq))
            .col(string_uniq(Snapshots::SnapshotId))
            .col(string(Snapshots::Connector))
            .col(string(Snapshots::Scope))
            .col(timestamp_with_time_zone(Snapshots::StartedAt))
            .col(timestamp_with_time_zone(Snapshots::FinishedAt))
            .col(boolean(Snapshots::Complete))
            .col(string(Snapshots::Sha256))
            .col(string_null(Snapshots::PrevSha256))
            .col(big_integer(Snapshots::RecordCount))
            .col(string_null(Snapshots::JobId))
            .col(text(Snapshots::Header))
            .col(text(Snapshots::Summary))
            .col(timestamp_with_time_zone(Snapshots::StoredAt))
            .to_owned(),
    )
    .await?;
    m.create_index(
        Index::create()
            .name("snapshots_by_scope")
            .table(Snapshots::Table)
            .col(Snapshots::Connector)
            .col(Snapshots::Scope)
            .col(Snapshots::Seq)
            .if_not_exists()
            .to_owned(),
    )
    .await?;
    m.create_table(
        Table::create()
            .table(SnapshotRecords::Table)
            .if_not_exists()
            .col(big_pk_auto(SnapshotRecords::Id))
            .col(string(SnapshotRecords::Connector))
            .col(string(SnapshotRecords::Scope))
            .col(string(SnapshotRecords::RecordKey))
            .col(text(SnapshotRecords::Content))
            .col(string(SnapshotRecords::Digest))
            .col(big_integer(SnapshotRecords::ValidFrom))
            .col(big_integer_null(SnapshotRecords::ValidTo))
            .to_owned(),
    )
    .await?;
    m.create_index(
        Index::create()
            .name("snapshot_records_open")
            .table(SnapshotRecords::Table)
            .col(SnapshotRecords::Connector)
            .col(SnapshotRecords::Scope)
            .col(SnapshotRecords::ValidTo)
            .if_not_exists()
            .to_owned(),
    )
    .await?;
    m.create_index(
        Index::create()
            .name("snapshot_records_from")
            .table(SnapshotRecords::Table)
            .col(SnapshotRecords::Connector)
            .col(SnapshotRecords::Scope)
            .col(SnapshotRecords::ValidFrom)
            .if_not_exists()
            .to_owned(),
    )
    .await?;
    Ok(())
}

async fn audit_log(m: &SchemaManager<'_>) -> Result<(), DbErr> {
    m.create_table(
        Table::create()
            .table(AuditLog::Table)
            .if_not_exists()
            .col(big_pk_auto(AuditLog::Id))
            .col(timestamp_with_time_zone(AuditLog::At))
            .col(string(AuditLog::Connector))
            .col(string_null(AuditLog::JobId))
            .col(string(AuditLog::Action))
            .col(text(AuditLog::Target))
            .col(big_integer_null(AuditLog::UserId))
            .col(text_null(AuditLog::Before))
            .col(text_null(AuditLog::After))
            .col(string(AuditLog::Outcome))
            .to_owned(),
    )
    .await?;
    Ok(())
}

struct M0002Grants;

impl MigrationName for M0002Grants {
    fn name(&self) -> &str {
        "m0002_grants"
    }
}

#[derive(DeriveIden)]
enum Grants {
    Table,
    JobId,
    Connector,
    TargetType,
    TargetId,
    TargetPath,
    UserId,
    Created,
    Prior,
    Applied,
    ExpiresAt,
    State,
    EndedAt,
    Note,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for M0002Grants {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Grants::Table)
                .if_not_exists()
                .col(string(Grants::JobId).primary_key())
                .col(string(Grants::Connector))
                .col(string(Grants::TargetType))
                .col(big_integer(Grants::TargetId))
                .col(string(Grants::TargetPath))
                .col(big_integer(Grants::UserId))
                .col(boolean(Grants::Created))
                .col(text_null(Grants::Prior))
                .col(text(Grants::Applied))
                .col(timestamp_with_time_zone_null(Grants::ExpiresAt))
                .col(string(Grants::State))
                .col(timestamp_with_time_zone_null(Grants::EndedAt))
                .col(text_null(Grants::Note))
                .col(timestamp_with_time_zone(Grants::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("grants_due")
                .table(Grants::Table)
                .col(Grants::State)
                .col(Grants::ExpiresAt)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        Ok(())
    }
}

/// A job id binds its payload: the sha256 of the canonical envelope is kept with the job, so
/// the same id with another payload is refused instead of answered with the first one's result.
struct M0003JobPayload;

impl MigrationName for M0003JobPayload {
    fn name(&self) -> &str {
        "m0003_job_payload"
    }
}

#[derive(DeriveIden)]
enum JobPayload {
    #[sea_orm(iden = "jobs")]
    Table,
    PayloadSha256,
}

#[async_trait::async_trait]
impl MigrationTrait for M0003JobPayload {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(JobPayload::Table)
                .add_column(string_null(JobPayload::PayloadSha256))
                .to_owned(),
        )
        .await
    }
}

/// A scheduler's claim on a grant is a lease (`claimed_until`): a dead worker's claim lapses in
/// seconds and another takes the undo over. A failing undo is retried per grant with a backoff
/// (`undo_attempts`, `next_attempt_at`).
struct M0004GrantClaims;

impl MigrationName for M0004GrantClaims {
    fn name(&self) -> &str {
        "m0004_grant_claims"
    }
}

#[derive(DeriveIden)]
enum GrantClaims {
    #[sea_orm(iden = "grants")]
    Table,
    ClaimedUntil,
    UndoAttempts,
    NextAttemptAt,
}

#[async_trait::async_trait]
impl MigrationTrait for M0004GrantClaims {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        for col in [
            timestamp_with_time_zone_null(GrantClaims::ClaimedUntil),
            integer(GrantClaims::UndoAttempts).default(0).to_owned(),
            timestamp_with_time_zone_null(GrantClaims::NextAttemptAt),
        ] {
            m.alter_table(
                Table::alter()
                    .table(GrantClaims::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

/// Named leases: one holder at a time across workers (a token rotation per connector).
struct M0005Leases;

impl MigrationName for M0005Leases {
    fn name(&self) -> &str {
        "m0005_leases"
    }
}

#[derive(DeriveIden)]
enum Leases {
    Table,
    Name,
    Holder,
    Until,
}

#[async_trait::async_trait]
impl MigrationTrait for M0005Leases {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Leases::Table)
                .if_not_exists()
                .col(string(Leases::Name).primary_key())
                .col(string(Leases::Holder))
                .col(timestamp_with_time_zone(Leases::Until))
                .to_owned(),
        )
        .await
    }
}

/// Bounded and kept within limits: outbox messages that cannot be published are parked with
/// their reason; a job remembers that its last delivery is running (so a death there is still
/// answered); snapshots can be pinned (kept by retention) and pruned (records deleted, the
/// row and its hashes kept for the chain).
struct M0006Retention;

impl MigrationName for M0006Retention {
    fn name(&self) -> &str {
        "m0006_retention"
    }
}

#[derive(DeriveIden)]
enum OutboxParking {
    #[sea_orm(iden = "outbox")]
    Table,
    ParkedAt,
    ParkedReason,
}

#[derive(DeriveIden)]
enum JobFinalDelivery {
    #[sea_orm(iden = "jobs")]
    Table,
    FinalDelivery,
}

#[derive(DeriveIden)]
enum SnapshotRetention {
    #[sea_orm(iden = "snapshots")]
    Table,
    Pinned,
    PrunedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for M0006Retention {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        for col in [
            timestamp_with_time_zone_null(OutboxParking::ParkedAt),
            text_null(OutboxParking::ParkedReason),
        ] {
            m.alter_table(
                Table::alter()
                    .table(OutboxParking::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        m.alter_table(
            Table::alter()
                .table(JobFinalDelivery::Table)
                .add_column(
                    boolean(JobFinalDelivery::FinalDelivery)
                        .default(false)
                        .to_owned(),
                )
                .to_owned(),
        )
        .await?;
        for col in [
            boolean(SnapshotRetention::Pinned).default(false).to_owned(),
            timestamp_with_time_zone_null(SnapshotRetention::PrunedAt),
        ] {
            m.alter_table(
                Table::alter()
                    .table(SnapshotRetention::Table)
                    .add_column(col)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

/// Live access: the batches of changes applied between full snapshots, each chained by hash to
/// the one before it (the first to its base snapshot).
struct M0007ChangeBatches;

impl MigrationName for M0007ChangeBatches {
    fn name(&self) -> &str {
        "m0007_change_batches"
    }
}

#[derive(DeriveIden)]
enum ChangeBatches {
    Table,
    Id,
    Connector,
    Scope,
    BaseSeq,
    ReadAt,
    AppliedAt,
    Cause,
    SourceEvents,
    Facts,
    Changes,
    ChangeCount,
    AccessChanges,
    Sha256,
    PrevSha256,
}

#[async_trait::async_trait]
impl MigrationTrait for M0007ChangeBatches {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(ChangeBatches::Table)
                .if_not_exists()
                .col(big_pk_auto(ChangeBatches::Id))
                .col(string(ChangeBatches::Connector))
                .col(string(ChangeBatches::Scope))
                .col(big_integer(ChangeBatches::BaseSeq))
                .col(timestamp_with_time_zone(ChangeBatches::ReadAt))
                .col(timestamp_with_time_zone(ChangeBatches::AppliedAt))
                .col(string(ChangeBatches::Cause))
                .col(text(ChangeBatches::SourceEvents))
                .col(text(ChangeBatches::Facts))
                .col(text(ChangeBatches::Changes))
                .col(big_integer(ChangeBatches::ChangeCount))
                .col(big_integer(ChangeBatches::AccessChanges))
                .col(string(ChangeBatches::Sha256))
                .col(string(ChangeBatches::PrevSha256))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("change_batches_by_base")
                .table(ChangeBatches::Table)
                .col(ChangeBatches::Connector)
                .col(ChangeBatches::Scope)
                .col(ChangeBatches::BaseSeq)
                .col(ChangeBatches::Id)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }
}
