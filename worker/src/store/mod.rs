//! Persistence (sea-orm 2): jobs and their results, the outbox, snapshots stored temporally, and
//! the audit log. SQLite is the embedded default (WAL, busy timeout, one writer); PostgreSQL
//! serves several workers. One set of migrations ([`migration`]) creates both.

mod entity;
pub mod migration;

mod audit;
mod changes;
mod finish;
mod grants;
mod history;
mod jobs;
mod leases;
mod outbox;
mod records;
mod retention;
mod snapshots;

use std::time::Duration;

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

pub use audit::{AuditEntry, AuditRow};
pub use changes::{Append, ChangeBatch, ChangeLine, NewBatch};
pub use finish::Settlement;
pub use history::{RecordVersion, VersionFilter};
pub use jobs::{Begin, NewJob, OutboxLane, OutboxMessage, attempts_left};
pub use outbox::ParkedMessage;
pub use records::{GrantRecord, GrantState, JobRecord, JobState};
pub use retention::Pruned;
pub use snapshots::{JobCompletion, SnapshotInfo, StoredSnapshot};

use crate::redact::redact_url;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the database {url}: {source}; check DATABASE_URL (sqlite://FILE?mode=rwc or postgres://USER@HOST/DB) and that the database is reachable"
    )]
    Connect {
        /// The URL with any password removed.
        url: String,
        #[source]
        source: DbErr,
    },
    #[error("DATABASE_URL {0:?} is neither sqlite:// nor postgres://")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Db(#[from] DbErr),
    #[error("the stored snapshot {id} is damaged: {message}")]
    Damaged { id: String, message: String },
    #[error(
        "no stored snapshot matches {0:?}; `gitlab-worker snapshots list` shows the stored ones"
    )]
    SnapshotNotFound(String),
    #[error(
        "the snapshot {id}'s records were deleted by retention on {at} (RETENTION_DAYS); its hashes stay in the chain. Pin snapshots that must be kept: `gitlab-worker snapshots pin ID`"
    )]
    Pruned {
        id: String,
        at: chrono::DateTime<chrono::Utc>,
    },
    #[error("{0:?} matches several stored snapshots; give more of the id")]
    Ambiguous(String),
    #[error("cannot read the snapshot file: {0}")]
    Snapshot(#[from] gitlab_connector::snapshot::ReadError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Held (PostgreSQL, per transaction) while migrations are read or applied.
const MIGRATION_LOCK: &str = "SELECT pg_advisory_xact_lock(7207310001)";

#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    /// This process's name as the owner of the outbox rows it commits.
    owner: std::sync::Arc<str>,
    /// Wakes this process's outbox publishers when rows were committed for them.
    commits: std::sync::Arc<OutboxCommits>,
}

/// One wake-up per outbox lane: told after each commit that queued rows in it, so a lane's
/// publisher wakes for its own rows only. A wake-up given while the publisher is busy is kept
/// (one), so nothing committed is left waiting for the periodic sweep.
#[derive(Debug, Default)]
pub struct OutboxCommits {
    results: tokio::sync::Notify,
    events: tokio::sync::Notify,
}

impl OutboxCommits {
    fn of(&self, lane: OutboxLane) -> &tokio::sync::Notify {
        match lane {
            OutboxLane::Results => &self.results,
            OutboxLane::Events => &self.events,
        }
    }

    pub fn notify(&self, lane: OutboxLane) {
        self.of(lane).notify_one();
    }

    /// Resolves at the next commit into `lane` (or at once, for one given meanwhile).
    pub async fn committed(&self, lane: OutboxLane) {
        self.of(lane).notified().await;
    }
}

/// How long an outbox row waits for the process that committed it before any process
/// publishes it.
pub const OUTBOX_TAKEOVER: Duration = Duration::from_secs(10);

/// A pooled PostgreSQL connection idle this long is checked (pinged) before it is used again.
pub const POOL_PING_AFTER_IDLE: Duration = Duration::from_secs(1);

impl Store {
    /// Opens the database. SQLite gets WAL, `synchronous = NORMAL`, a 10 s busy timeout and a
    /// single connection (one writer; `sqlite::memory:` is per connection anyway).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_pooled(url, 8).await
    }

    /// Opens and migrates with a single connection, for a command that asks one question at a
    /// time: each PostgreSQL connection costs a TLS handshake (about 0.1 s on loopback), and a
    /// wider pool opens several while migrations are checked.
    pub async fn open_single(url: &str) -> Result<Self, StoreError> {
        let s = Self::connect_pooled(url, 1).await?;
        s.migrate().await?;
        Ok(s)
    }

    async fn connect_pooled(url: &str, pool: u32) -> Result<Self, StoreError> {
        let mut opts = ConnectOptions::new(url.to_string());
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10));
        if url.starts_with("sqlite:") {
            opts.max_connections(1).map_sqlx_sqlite_opts(|o| {
                use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
                o.journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true)
            });
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            // sqlx pings a pooled connection on every checkout by default: one more round
            // trip for each statement, half of PostgreSQL's work at hundreds of jobs a second.
            // Only a connection idle for a while may have been dropped (a restart, a proxy):
            // that one is still checked; a busy pool is not.
            opts.max_connections(pool)
                .min_connections(1)
                .test_before_acquire_if_idle_for(POOL_PING_AFTER_IDLE);
        } else {
            return Err(StoreError::UnsupportedUrl(redact_url(url)));
        }
        let db = Database::connect(opts)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact_url(url),
                source,
            })?;
        Ok(Self {
            db,
            owner: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7()).into(),
            commits: Default::default(),
        })
    }

    /// The wake-ups of this process's outbox publishers.
    pub fn outbox_commits(&self) -> &OutboxCommits {
        &self.commits
    }

    /// Tells the publisher of `lane` that rows were committed for it (after the commit).
    fn committed(&self, lane: Option<OutboxLane>) {
        if let Some(lane) = lane {
            self.commits.notify(lane);
        }
    }

    /// Opens and migrates.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let s = Self::connect(url).await?;
        s.migrate().await?;
        Ok(s)
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.db.get_database_backend() == DbBackend::Postgres {
            // Workers starting together on a new database would race to create the same
            // tables: one migrates at a time, the others then find nothing pending.
            let txn = self.db.begin().await?;
            txn.execute_unprepared(MIGRATION_LOCK).await?;
            migration::Migrator::up(&txn, None).await?;
            txn.commit().await?;
            return Ok(());
        }
        migration::Migrator::up(&self.db, None).await?;
        Ok(())
    }

    /// Migrations not yet applied.
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        if self.db.get_database_backend() == DbBackend::Postgres {
            // Reading them creates the migrations table: under the same lock as `migrate`.
            let txn = self.db.begin().await?;
            txn.execute_unprepared(MIGRATION_LOCK).await?;
            let n = migration::Migrator::get_pending_migrations(&txn)
                .await?
                .len();
            txn.commit().await?;
            return Ok(n);
        }
        Ok(migration::Migrator::get_pending_migrations(&self.db)
            .await?
            .len())
    }

    /// For `/readyz`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await?;
        Ok(())
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    pub async fn close(self) -> Result<(), StoreError> {
        self.db.close().await?;
        Ok(())
    }
}
