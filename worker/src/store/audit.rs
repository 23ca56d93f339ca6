//! The audit log: every write the worker made in GitLab, whatever its outcome.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use super::entity::audit_log;
use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub connector: String,
    pub job_id: Option<String>,
    pub action: String,
    pub target: serde_json::Value,
    pub user_id: Option<u64>,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub outcome: String,
}

/// A stored audit entry as written (JSON fields as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub connector: String,
    pub job_id: Option<String>,
    pub action: String,
    pub target: String,
    pub user_id: Option<i64>,
    pub before: Option<String>,
    pub after: Option<String>,
    /// `pending` (written ahead; the worker stopped before the answer), `ok`, or the error
    /// code GitLab's answer mapped to.
    pub outcome: String,
}

impl From<audit_log::Model> for AuditRow {
    fn from(m: audit_log::Model) -> Self {
        AuditRow {
            id: m.id,
            at: m.at,
            connector: m.connector,
            job_id: m.job_id,
            action: m.action,
            target: m.target,
            user_id: m.user_id,
            before: m.before,
            after: m.after,
            outcome: m.outcome,
        }
    }
}

impl Store {
    /// Stores an entry (written ahead of its write, with outcome `pending`); returns its id.
    pub async fn audit_begin(&self, e: AuditEntry) -> Result<i64, StoreError> {
        let r = audit_log::Entity::insert(audit_log::ActiveModel {
            at: Set(e.at),
            connector: Set(e.connector),
            job_id: Set(e.job_id),
            action: Set(e.action),
            target: Set(e.target.to_string()),
            user_id: Set(e.user_id.and_then(|u| i64::try_from(u).ok())),
            before: Set(e.before.map(|v| v.to_string())),
            after: Set(e.after.map(|v| v.to_string())),
            outcome: Set(e.outcome),
            ..Default::default()
        })
        .exec(&self.db)
        .await?;
        Ok(r.last_insert_id)
    }

    /// Completes an entry written ahead with the write's outcome.
    pub async fn audit_finish(&self, id: i64, outcome: &str) -> Result<(), StoreError> {
        audit_log::Entity::update_many()
            .col_expr(audit_log::Column::Outcome, Expr::value(outcome))
            .filter(audit_log::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// The audit entries of one job (or all, oldest first).
    pub async fn audit_entries(&self, job_id: Option<&str>) -> Result<Vec<AuditRow>, StoreError> {
        let mut q = audit_log::Entity::find().order_by_asc(audit_log::Column::Id);
        if let Some(j) = job_id {
            q = q.filter(audit_log::Column::JobId.eq(j));
        }
        Ok(q.all(&self.db)
            .await?
            .into_iter()
            .map(AuditRow::from)
            .collect())
    }
}
