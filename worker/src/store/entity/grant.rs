//! Grants made by `grant` jobs: what was there before, what the worker set, and, for JIT grants,
//! the precise instant the scheduler undoes it.
use sea_orm::entity::prelude::*;

use crate::store::records::GrantState;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "grants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub job_id: String,
    pub connector: String,
    /// `group` or `project`.
    pub target_type: String,
    pub target_id: i64,
    pub target_path: String,
    pub user_id: i64,
    /// True when the grant created the membership (undo removes it); false when it changed one
    /// (undo restores `prior`).
    pub created: bool,
    #[sea_orm(column_type = "Text", nullable)]
    pub prior: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub applied: String,
    /// The precise expiry; null for a permanent grant.
    pub expires_at: Option<DateTimeUtc>,
    pub state: GrantState,
    pub ended_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text", nullable)]
    pub note: Option<String>,
    pub updated_at: DateTimeUtc,
    /// While a scheduler undoes the grant (state `ending`), its claim lasts until then.
    pub claimed_until: Option<DateTimeUtc>,
    /// Failed attempts to undo it.
    pub undo_attempts: i32,
    /// A failed undo is tried again from then on.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// The slot of a per-group limit its undo reserved when it was put off until then.
    #[sea_orm(column_type = "Text", nullable)]
    pub held_slot: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}
