//! A job's end: its result, the messages announcing it, and the store writes the job deferred
//! to it (the outcomes of its audited GitLab writes, its grant's activation), committed
//! together. On PostgreSQL that is one statement (every write but the last a data-modifying
//! `WITH` clause): at hundreds of jobs a second the round trips, not the statements, are
//! PostgreSQL's work. SQLite, in-process, runs the same statements in one transaction.

use std::collections::BTreeMap;

use chrono::Utc;
use sea_orm::sea_query::{
    Alias, CommonTableExpression, Expr, InsertStatement, OnConflict, SubQueryStatement,
    UpdateStatement, WithClause,
};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryTrait, TransactionTrait,
};

use super::entity::{audit_log, grant, job, outbox};
use super::jobs::{OutboxLane, OutboxMessage};
use super::records::{GrantState, JobState};
use super::{Store, StoreError};

/// Store writes a running job leaves for its end. The audit entry of each GitLab write is
/// stored ahead of the write (that cannot wait); what the write answered can: it is committed
/// with the job's result, or on its own when the job is handed back. A worker that dies in
/// between leaves the entry `pending`, which is what it says: the outcome was not recorded
/// (a resumed revoke, invitation or deprovision re-reads GitLab and marks it `confirmed`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// Audit entries (their ids) and what their write answered (`ok` or an error code).
    pub audit_outcomes: Vec<(i64, String)>,
    /// The job's written-ahead grant is in GitLab: `pending` becomes `active`.
    pub grant_active: bool,
}

impl Settlement {
    fn writes(&self, job_id: &str) -> Vec<Write> {
        // One UPDATE per outcome (a deprovision's hundreds of writes are mostly `ok`), a
        // bounded number of ids each.
        let mut by_outcome: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for (id, outcome) in &self.audit_outcomes {
            by_outcome.entry(outcome).or_default().push(*id);
        }
        let mut writes: Vec<Write> = by_outcome
            .into_iter()
            .flat_map(|(outcome, ids)| {
                ids.chunks(IDS_PER_UPDATE)
                    .map(|ids| {
                        Write::Update(
                            audit_log::Entity::update_many()
                                .col_expr(
                                    audit_log::Column::Outcome,
                                    Expr::value(outcome.to_string()),
                                )
                                .filter(audit_log::Column::Id.is_in(ids.iter().copied()))
                                .into_query(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if self.grant_active {
            writes.push(Write::Update(
                grant::Entity::update_many()
                    .col_expr(grant::Column::State, Expr::value(GrantState::Active))
                    .col_expr(grant::Column::UpdatedAt, Expr::value(Utc::now()))
                    .filter(grant::Column::JobId.eq(job_id))
                    .filter(grant::Column::State.eq(GrantState::Pending))
                    .into_query(),
            ));
        }
        writes
    }
}

/// One write of several committed together.
enum Write {
    Update(UpdateStatement),
    Insert(InsertStatement),
}

impl From<Write> for SubQueryStatement {
    fn from(w: Write) -> Self {
        match w {
            Write::Update(u) => u.into(),
            Write::Insert(i) => i.into(),
        }
    }
}

/// Audit entries per outcome update: far inside both databases' limits on bound values.
const IDS_PER_UPDATE: usize = 1_000;

/// Rows per outbox insert: far inside both databases' limits on bound values.
const OUTBOX_ROWS_PER_INSERT: usize = 500;

/// The outbox rows of `messages` (one commit's: all in its lane), a statement per
/// [`OUTBOX_ROWS_PER_INSERT`]; a message id already there is kept as it is. The lane is `None`
/// when there are no messages.
pub(super) fn outbox_inserts(
    owner: &str,
    messages: Vec<OutboxMessage>,
) -> (Option<OutboxLane>, Vec<InsertStatement>) {
    let lane = (!messages.is_empty()).then(|| OutboxLane::of(&messages));
    let mut rows = messages.into_iter().map(|m| {
        let mut row = m.into_active(lane.unwrap_or(OutboxLane::Results));
        row.owner = sea_orm::ActiveValue::Set(Some(owner.to_string()));
        row
    });
    let mut inserts = Vec::new();
    loop {
        let chunk: Vec<_> = rows.by_ref().take(OUTBOX_ROWS_PER_INSERT).collect();
        if chunk.is_empty() {
            return (lane, inserts);
        }
        inserts.push(
            outbox::Entity::insert_many(chunk)
                .on_conflict(
                    OnConflict::column(outbox::Column::MsgId)
                        .do_nothing()
                        .to_owned(),
                )
                .into_query(),
        );
    }
}

fn finish_update(job_id: &str, status: &str, result: &str) -> UpdateStatement {
    job::Entity::update_many()
        .col_expr(job::Column::State, Expr::value(JobState::Finished))
        .col_expr(job::Column::Status, Expr::value(status.to_string()))
        .col_expr(job::Column::Result, Expr::value(result.to_string()))
        .col_expr(job::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(job::Column::JobId.eq(job_id))
        .into_query()
}

/// Finishes a job inside a caller's transaction (a sync's, with its snapshot).
pub(super) async fn finish_in<C: ConnectionTrait>(
    db: &C,
    job_id: &str,
    status: &str,
    result: &str,
) -> Result<(), StoreError> {
    db.execute(&finish_update(job_id, status, result)).await?;
    Ok(())
}

impl Store {
    /// Commits the result, the messages announcing it and what the job left to settle,
    /// together.
    pub async fn finish_job(
        &self,
        job_id: &str,
        status: &str,
        result: &str,
        outbox: Vec<OutboxMessage>,
        settlement: &Settlement,
    ) -> Result<(), StoreError> {
        let mut writes = settlement.writes(job_id);
        let (lane, inserts) = outbox_inserts(&self.owner, outbox);
        writes.extend(inserts.into_iter().map(Write::Insert));
        writes.push(Write::Update(finish_update(job_id, status, result)));
        self.write_together(writes).await?;
        self.committed(lane);
        Ok(())
    }

    /// Commits what a job left to settle when it ends without a result (handed back).
    pub async fn settle(&self, job_id: &str, settlement: &Settlement) -> Result<(), StoreError> {
        self.write_together(settlement.writes(job_id)).await
    }

    async fn write_together(&self, mut writes: Vec<Write>) -> Result<(), StoreError> {
        let Some(last) = writes.pop() else {
            return Ok(());
        };
        if self.db.get_database_backend() != DbBackend::Postgres {
            let txn = self.db.begin().await?;
            for w in writes.into_iter().chain([last]) {
                execute(&txn, w, None).await?;
            }
            txn.commit().await?;
            return Ok(());
        }
        let clause = (!writes.is_empty()).then(|| {
            let mut clause = WithClause::new();
            for (n, w) in writes.into_iter().enumerate() {
                clause.cte(
                    CommonTableExpression::new()
                        .query(w)
                        .table_name(Alias::new(format!("w{n}")))
                        .to_owned(),
                );
            }
            clause
        });
        execute(&self.db, last, clause).await
    }
}

async fn execute<C: ConnectionTrait>(
    db: &C,
    write: Write,
    with: Option<WithClause>,
) -> Result<(), StoreError> {
    match (write, with) {
        (Write::Update(u), None) => db.execute(&u).await?,
        (Write::Insert(i), None) => db.execute(&i).await?,
        (Write::Update(u), Some(w)) => db.execute(&u.with(w)).await?,
        (Write::Insert(i), Some(w)) => db.execute(&i.with(w)).await?,
    };
    Ok(())
}
