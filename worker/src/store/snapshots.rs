//! Snapshots stored temporally. A body record's row is written when the record first appears in
//! a snapshot of its connector and scope and closed (`valid_to`) by the first snapshot that no
//! longer has it in the same form, so a re-sync with little change writes little. Any stored
//! snapshot is rebuilt from the rows valid at its `seq`, ordered by `record_key`, between its
//! verbatim header and summary lines: byte-identical, and checked against its sha256.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use chrono::{DateTime, Utc};
use gitlab_connector::client::precedence;
use gitlab_connector::model::{Record, ResourceRef};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait,
    ExprTrait, Order, QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::entity::{snapshot, snapshot_record};
use super::finish::finish_in;
use super::jobs::{OutboxMessage, insert_outbox};
use super::{Store, StoreError};

/// Rows per INSERT: 8 columns each keeps every backend well under its bind-parameter limit.
const INSERT_BATCH: usize = 500;
/// Rows per INSERT while the sync yields to provisioning jobs.
const YIELDING_INSERT_BATCH: usize = 100;
const CLOSE_BATCH: usize = 1000;
/// Rows a snapshot must insert or close for PostgreSQL's statistics to be refreshed after it
/// (an `ANALYZE` samples a fixed number of rows: well under a second at a million records).
const ANALYZE_AFTER_ROWS: u64 = 1_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub seq: i64,
    pub snapshot_id: String,
    pub connector: String,
    pub scope: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub complete: bool,
    pub sha256: String,
    pub prev_sha256: Option<String>,
    pub record_count: i64,
    pub job_id: Option<String>,
    /// Kept by retention whatever its age.
    pub pinned: bool,
    /// When retention deleted its records (its row and hashes stay for the chain).
    pub pruned_at: Option<DateTime<Utc>>,
    /// The header and summary lines exactly as written (what an export puts around the rows).
    #[serde(skip)]
    pub header: String,
    #[serde(skip)]
    pub summary: String,
}

impl From<&snapshot::Model> for SnapshotInfo {
    fn from(m: &snapshot::Model) -> Self {
        Self {
            seq: m.seq,
            snapshot_id: m.snapshot_id.clone(),
            connector: m.connector.clone(),
            scope: m.scope.clone(),
            started_at: m.started_at,
            finished_at: m.finished_at,
            complete: m.complete,
            sha256: m.sha256.clone(),
            prev_sha256: m.prev_sha256.clone(),
            record_count: m.record_count,
            job_id: m.job_id.clone(),
            pinned: m.pinned,
            pruned_at: m.pruned_at,
            header: m.header.clone(),
            summary: m.summary.clone(),
        }
    }
}

/// What storing one snapshot wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredSnapshot {
    pub info: SnapshotInfo,
    /// Record rows inserted (new or changed records).
    pub rows_inserted: u64,
    /// Record rows closed (records gone or changed).
    pub rows_closed: u64,
    /// Records carried over unchanged, with no write.
    pub rows_unchanged: u64,
}

/// The job a snapshot belongs to, finished in the same transaction as the snapshot is stored.
pub struct JobCompletion<'a> {
    pub job_id: &'a str,
    pub status: &'a str,
    pub result: &'a str,
    pub outbox: Vec<OutboxMessage>,
}

fn digest(line: &str) -> String {
    let h = Sha256::digest(line.as_bytes());
    gitlab_connector::snapshot::hex(&h[..16])
}

fn open(path: &Path) -> Result<BufReader<std::fs::File>, StoreError> {
    Ok(BufReader::new(std::fs::File::open(path)?))
}

impl Store {
    /// Stores a snapshot file (verified against its own hash first).
    pub async fn store_snapshot(
        &self,
        path: &Path,
        job_id: Option<&str>,
    ) -> Result<StoredSnapshot, StoreError> {
        self.store_snapshot_with(path, job_id, None).await
    }

    /// Stores a snapshot and, in the same transaction, finishes its job with `completion`.
    pub async fn store_snapshot_with(
        &self,
        path: &Path,
        job_id: Option<&str>,
        completion: Option<JobCompletion<'_>>,
    ) -> Result<StoredSnapshot, StoreError> {
        // Reading the whole file is CPU work: it runs off the runtime's threads, where the
        // jobs running meanwhile would wait for it.
        let file = path.to_path_buf();
        let (summary, header_line, header, summary_line) =
            tokio::task::spawn_blocking(move || examine(&file))
                .await
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        let mut lines = open(path)?.lines();
        lines.next().transpose()?;

        let txn = self.db.begin().await?;
        if txn.get_database_backend() == DbBackend::Postgres {
            // Two workers storing snapshots of one scope would race on its open rows.
            txn.execute_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                [format!("snapshots/{}/{}", header.connector, header.scope).into()],
            ))
            .await?;
        }
        let record_count: u64 = summary.counts.values().sum();
        let inserted = snapshot::Entity::insert(snapshot::ActiveModel {
            snapshot_id: Set(header.snapshot_id.clone()),
            connector: Set(header.connector.clone()),
            scope: Set(header.scope.clone()),
            started_at: Set(header.started_at),
            finished_at: Set(summary.finished_at),
            complete: Set(summary.complete),
            sha256: Set(summary.sha256.clone()),
            prev_sha256: Set(summary.prev_sha256.clone()),
            record_count: Set(i64::try_from(record_count).unwrap_or(i64::MAX)),
            job_id: Set(job_id.map(str::to_string)),
            header: Set(header_line),
            summary: Set(summary_line.clone()),
            stored_at: Set(Utc::now()),
            ..Default::default()
        })
        .exec(&txn)
        .await?;
        let seq = inserted.last_insert_id;

        let open_rows = open_rows(&txn, &header.connector, &header.scope).await?;
        // On PostgreSQL a sync's rows yield to provisioning jobs like its GitLab requests do.
        // SQLite has one connection, which this transaction holds: a job waits for all of it,
        // so the rows are written as fast as they can be.
        let yields = txn.get_database_backend() == DbBackend::Postgres;
        let written = write_records(&txn, lines, &header, seq, open_rows, yields).await?;
        let rows_closed = written.to_close.len() as u64;
        for chunk in written.to_close.chunks(CLOSE_BATCH) {
            let _turn = row_turn(yields).await;
            snapshot_record::Entity::update_many()
                .col_expr(snapshot_record::Column::ValidTo, Expr::value(seq))
                .filter(snapshot_record::Column::Id.is_in(chunk.iter().copied()))
                .exec(&txn)
                .await?;
        }
        let mut lane = None;
        if let Some(c) = completion {
            finish_in(&txn, c.job_id, c.status, c.result).await?;
            lane = insert_outbox(&txn, &self.owner, c.outbox).await?;
        }
        let row = snapshot::Entity::find_by_id(seq)
            .one(&txn)
            .await?
            .ok_or_else(|| StoreError::SnapshotNotFound(header.snapshot_id.clone()))?;
        txn.commit().await?;
        self.committed(lane);
        self.refresh_statistics(written.inserted + rows_closed)
            .await;
        Ok(StoredSnapshot {
            info: SnapshotInfo::from(&row),
            rows_inserted: written.inserted,
            rows_closed,
            rows_unchanged: written.unchanged,
        })
    }

    /// After a snapshot that wrote many rows, PostgreSQL's planner statistics are refreshed:
    /// without them (autovacuum off or not yet run) it takes the record table for a few pages
    /// and answers a key lookup by reading every row of the scope. Best effort: a failure only
    /// costs speed.
    async fn refresh_statistics(&self, rows_written: u64) {
        if rows_written < ANALYZE_AFTER_ROWS
            || self.db.get_database_backend() != DbBackend::Postgres
        {
            return;
        }
        if let Err(e) = self.db.execute_unprepared("ANALYZE snapshot_records").await {
            tracing::warn!("refreshing the snapshot table's statistics failed: {e}");
        }
    }

    /// Stored snapshots, oldest first, optionally of one connector.
    pub async fn list_snapshots(
        &self,
        connector: Option<&str>,
    ) -> Result<Vec<SnapshotInfo>, StoreError> {
        let mut q = snapshot::Entity::find().order_by_asc(snapshot::Column::Seq);
        if let Some(c) = connector {
            q = q.filter(snapshot::Column::Connector.eq(c));
        }
        Ok(q.all(&self.db)
            .await?
            .iter()
            .map(SnapshotInfo::from)
            .collect())
    }

    /// A snapshot by its id or an unambiguous prefix of it.
    pub async fn find_snapshot(&self, id: &str) -> Result<SnapshotInfo, StoreError> {
        if let Some(m) = snapshot::Entity::find()
            .filter(snapshot::Column::SnapshotId.eq(id))
            .one(&self.db)
            .await?
        {
            return Ok(SnapshotInfo::from(&m));
        }
        let id_chars_ok = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !id_chars_ok {
            return Err(StoreError::SnapshotNotFound(id.into()));
        }
        let mut found = snapshot::Entity::find()
            .filter(snapshot::Column::SnapshotId.starts_with(id))
            .limit(2)
            .all(&self.db)
            .await?;
        match found.len() {
            0 => Err(StoreError::SnapshotNotFound(id.into())),
            1 => Ok(SnapshotInfo::from(&found.remove(0))),
            _ => Err(StoreError::Ambiguous(id.into())),
        }
    }

    /// The latest stored snapshot of a connector and scope (optionally only complete ones).
    pub async fn latest_snapshot(
        &self,
        connector: &str,
        scope: &str,
        complete_only: bool,
    ) -> Result<Option<SnapshotInfo>, StoreError> {
        let mut q = snapshot::Entity::find()
            .filter(snapshot::Column::Connector.eq(connector))
            .filter(snapshot::Column::Scope.eq(scope));
        if complete_only {
            q = q.filter(snapshot::Column::Complete.eq(true));
        }
        Ok(q.order_by_desc(snapshot::Column::Seq)
            .one(&self.db)
            .await?
            .as_ref()
            .map(SnapshotInfo::from))
    }

    /// Writes a stored snapshot as it was written the first time, checking its sha256.
    pub async fn export_snapshot(
        &self,
        snap: &SnapshotInfo,
        out: &mut impl Write,
    ) -> Result<(), StoreError> {
        self.export_with(snap, &std::collections::BTreeMap::new(), out)
            .await
    }

    /// Writes a stored snapshot with `overrides` (record key → line, or `None` for gone) laid
    /// over its records, in key order: the live state after change batches. The snapshot's own
    /// records are still checked against its sha256; the header and summary are its own.
    pub async fn export_with(
        &self,
        snap: &SnapshotInfo,
        overrides: &std::collections::BTreeMap<String, Option<String>>,
        out: &mut impl Write,
    ) -> Result<(), StoreError> {
        if let Some(at) = snap.pruned_at {
            return Err(StoreError::Pruned {
                id: snap.snapshot_id.clone(),
                at,
            });
        }
        // Byte order, as the writer's, not the database's collation; streamed, so a snapshot
        // of a million records is never held in memory (PostgreSQL sorts with its own memory).
        let by_key = match self.db.get_database_backend() {
            DbBackend::Postgres => Expr::cust("record_key COLLATE \"C\""),
            _ => Expr::col(snapshot_record::Column::RecordKey),
        };
        let mut rows = snapshot_record::Entity::find()
            .select_only()
            .columns([
                snapshot_record::Column::RecordKey,
                snapshot_record::Column::Content,
            ])
            .filter(snapshot_record::Column::Connector.eq(&snap.connector))
            .filter(snapshot_record::Column::Scope.eq(&snap.scope))
            .filter(snapshot_record::Column::ValidFrom.lte(snap.seq))
            .filter(
                snapshot_record::Column::ValidTo
                    .is_null()
                    .or(snapshot_record::Column::ValidTo.gt(snap.seq)),
            )
            .order_by(by_key, Order::Asc)
            .into_tuple::<(String, String)>()
            .stream(&self.db)
            .await?;
        let mut hasher = Sha256::new();
        let write = |line: &str, out: &mut dyn Write| -> std::io::Result<()> {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")
        };
        hasher.update(snap.header.as_bytes());
        hasher.update(b"\n");
        write(&snap.header, out)?;
        let mut pending = overrides.iter().peekable();
        while let Some((key, line)) = futures::TryStreamExt::try_next(&mut rows).await? {
            hasher.update(line.as_bytes());
            hasher.update(b"\n");
            while let Some((k, v)) = pending.next_if(|(k, _)| k.as_str() < key.as_str()) {
                if let Some(v) = v {
                    write(v, out)?;
                }
                let _ = k;
            }
            match pending.next_if(|(k, _)| k.as_str() == key.as_str()) {
                Some((_, Some(v))) => write(v, out)?,
                Some((_, None)) => {}
                None => write(&line, out)?,
            }
        }
        for (_, v) in pending {
            if let Some(v) = v {
                write(v, out)?;
            }
        }
        drop(rows);
        let sha = gitlab_connector::snapshot::hex(&hasher.finalize());
        if sha != snap.sha256 {
            return Err(StoreError::Damaged {
                id: snap.snapshot_id.clone(),
                message: format!(
                    "its records hash to {sha}, not the stored {}; the database was changed outside the worker",
                    snap.sha256
                ),
            });
        }
        out.write_all(snap.summary.as_bytes())?;
        out.write_all(b"\n")?;
        out.flush()?;
        Ok(())
    }
}

/// A snapshot file verified against its own hash: its summary, its header (verbatim and read)
/// and its summary line (verbatim).
fn examine(
    path: &Path,
) -> Result<
    (
        gitlab_connector::model::Summary,
        String,
        gitlab_connector::model::SnapshotHeader,
        String,
    ),
    StoreError,
> {
    let summary = gitlab_connector::snapshot::verify(open(path)?)?;
    let header_line = open(path)?.lines().next().transpose()?.unwrap_or_default();
    let header = match serde_json::from_str::<Record>(&header_line) {
        Ok(Record::Snapshot(h)) => h,
        _ => {
            return Err(StoreError::Damaged {
                id: path.display().to_string(),
                message: "the first line is not a snapshot header".into(),
            });
        }
    };
    let summary_line = last_line(path)?;
    Ok((summary, header_line, header, summary_line))
}

/// The last non-empty line of a file (a snapshot's summary, kept verbatim).
fn last_line(path: &Path) -> Result<String, StoreError> {
    let mut last = String::new();
    for line in open(path)?.lines() {
        let line = line?;
        if !line.is_empty() {
            last = line;
        }
    }
    Ok(last)
}

/// The rows of a connector and scope still valid (`valid_to` null): key → (row id, digest).
async fn open_rows(
    txn: &DatabaseTransaction,
    connector: &str,
    scope: &str,
) -> Result<HashMap<String, (i64, String)>, StoreError> {
    Ok(snapshot_record::Entity::find()
        .select_only()
        .columns([
            snapshot_record::Column::RecordKey,
            snapshot_record::Column::Id,
            snapshot_record::Column::Digest,
        ])
        .filter(snapshot_record::Column::Connector.eq(connector))
        .filter(snapshot_record::Column::Scope.eq(scope))
        .filter(snapshot_record::Column::ValidTo.is_null())
        .into_tuple::<(String, i64, String)>()
        .all(txn)
        .await?
        .into_iter()
        .map(|(k, id, d)| (k, (id, d)))
        .collect())
}

/// What a record row is about, for the point-in-time queries' indexes (migration m0008).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Lookup {
    pub user_id: Option<i64>,
    pub resource: Option<String>,
    pub label: Option<String>,
}

impl Lookup {
    pub(crate) fn of(record: &Record) -> Self {
        let user = |id: u64| i64::try_from(id).ok();
        match record {
            Record::User(u) => Self {
                user_id: user(u.id),
                resource: None,
                label: Some(u.username.clone()),
            },
            Record::Group(g) => Self {
                user_id: None,
                resource: Some(resource_code(&ResourceRef::Group(g.id))),
                label: Some(g.full_path.clone()),
            },
            Record::Project(p) => Self {
                user_id: None,
                resource: Some(resource_code(&ResourceRef::Project(p.id))),
                label: Some(p.path_with_namespace.clone()),
            },
            Record::Membership(m) => Self {
                user_id: user(m.user_id),
                resource: Some(resource_code(&m.resource)),
                label: None,
            },
            Record::Access(a) => Self {
                user_id: user(a.user_id),
                resource: Some(resource_code(&a.resource)),
                label: None,
            },
            Record::Share(s) => Self {
                resource: Some(resource_code(&s.resource)),
                ..Self::default()
            },
            Record::Invitation(i) => Self {
                resource: Some(resource_code(&i.resource)),
                ..Self::default()
            },
            _ => Self::default(),
        }
    }
}

/// How a row names its resource: `g42`, `p7`.
pub(crate) fn resource_code(r: &ResourceRef) -> String {
    match r {
        ResourceRef::Group(id) => format!("g{id}"),
        ResourceRef::Project(id) => format!("p{id}"),
    }
}

/// What writing a snapshot's body did.
struct Written {
    inserted: u64,
    unchanged: u64,
    /// Open rows the snapshot no longer has in the same form.
    to_close: Vec<i64>,
}

/// Inserts the body records that are new or changed since the open rows; an unchanged record
/// writes nothing. With `yields`, the inserts yield to provisioning jobs (smaller and paced
/// while they run).
async fn write_records(
    txn: &DatabaseTransaction,
    lines: impl Iterator<Item = std::io::Result<String>>,
    header: &gitlab_connector::model::SnapshotHeader,
    seq: i64,
    mut open_rows: HashMap<String, (i64, String)>,
    yields: bool,
) -> Result<Written, StoreError> {
    let mut pending = Vec::with_capacity(INSERT_BATCH);
    let mut written = Written {
        inserted: 0,
        unchanged: 0,
        to_close: Vec::new(),
    };
    for line in lines {
        let line = line?;
        if line.is_empty() {
            continue;
        }
        let record: Record = serde_json::from_str(&line).map_err(|e| StoreError::Damaged {
            id: header.snapshot_id.clone(),
            message: format!("a record cannot be read: {e}"),
        })?;
        let Some(key) = record.order_key() else {
            continue;
        };
        let d = digest(&line);
        let lookup = Lookup::of(&record);
        match open_rows.remove(&key) {
            Some((_, old)) if old == d => {
                written.unchanged += 1;
                continue;
            }
            Some((id, _)) => written.to_close.push(id),
            None => {}
        }
        pending.push(snapshot_record::ActiveModel {
            connector: Set(header.connector.clone()),
            scope: Set(header.scope.clone()),
            record_key: Set(key),
            content: Set(line),
            digest: Set(d),
            valid_from: Set(seq),
            valid_to: Set(None),
            user_id: Set(lookup.user_id),
            resource: Set(lookup.resource),
            label: Set(lookup.label),
            ..Default::default()
        });
        // While provisioning runs, a sync's rows go in smaller statements: each holds the
        // database (and the WAL that a grant's commit flushes) for less time.
        if pending.len() >= INSERT_BATCH
            || (yields && pending.len() >= YIELDING_INSERT_BATCH && precedence::yielding())
        {
            written.inserted += flush(txn, &mut pending, yields).await?;
        }
    }
    written.inserted += flush(txn, &mut pending, yields).await?;
    written
        .to_close
        .extend(open_rows.into_values().map(|(id, _)| id));
    Ok(written)
}

/// With `yields`, a turn of the sync's background work for one statement of rows.
async fn row_turn(yields: bool) -> Option<precedence::Turn> {
    if yields {
        precedence::turn().await
    } else {
        None
    }
}

/// Inserts the pending rows; with `yields`, in a turn of the sync's background work.
async fn flush(
    txn: &DatabaseTransaction,
    pending: &mut Vec<snapshot_record::ActiveModel>,
    yields: bool,
) -> Result<u64, StoreError> {
    let n = pending.len() as u64;
    if n > 0 {
        let _turn = row_turn(yields).await;
        snapshot_record::Entity::insert_many(std::mem::take(pending))
            .exec_without_returning(txn)
            .await?;
    }
    Ok(n)
}
