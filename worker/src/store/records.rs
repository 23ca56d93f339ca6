//! What the store hands to jobs and the scheduler: its own record types and states, never
//! sea-orm entities.

use chrono::{DateTime, Utc};
use gitlab_connector::provision::{MemberState, Target, TargetKind};
use sea_orm::entity::prelude::*;

/// A job id's life: `running` from its first delivery until its result is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum JobState {
    #[sea_orm(string_value = "running")]
    Running,
    #[sea_orm(string_value = "finished")]
    Finished,
}

/// A grant's life: `pending` from before its GitLab write (written ahead: the write may or may
/// not have happened) until the write is answered, `active` until the scheduler or a revoke
/// claims it (`ending`), then `ended`, or `conflict` when the membership had been changed
/// behind the worker's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum GrantState {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "active")]
    Active,
    #[sea_orm(string_value = "ending")]
    Ending,
    #[sea_orm(string_value = "ended")]
    Ended,
    #[sea_orm(string_value = "conflict")]
    Conflict,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Pending => "pending",
            GrantState::Active => "active",
            GrantState::Ending => "ending",
            GrantState::Ended => "ended",
            GrantState::Conflict => "conflict",
        }
    }

    /// Still in effect in GitLab (not yet undone).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            GrantState::Pending | GrantState::Active | GrantState::Ending
        )
    }
}

/// A job id as stored: the idempotency key, its lease and checkpoints, and once finished its
/// result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRecord {
    pub job_id: String,
    pub connector: String,
    pub kind: String,
    pub state: JobState,
    /// Deliveries that reached the handler.
    pub attempts: u32,
    /// Of those, the ones handed back to wait for a slot of a per-group limit (not attempts).
    pub deferrals: u32,
    /// The envelope as received.
    pub request: String,
    /// The result envelope (JSON), once finished.
    pub result: Option<String>,
    pub status: Option<String>,
    /// Handler checkpoints (JSON), so a redelivery resumes instead of repeating.
    pub progress: Option<String>,
    /// The JetStream stream sequence of the delivery that first ran the job (0: not NATS).
    pub stream_seq: u64,
}

impl JobRecord {
    /// The stored result, when the job is finished.
    pub fn finished_result(&self) -> Option<&str> {
        match self.state {
            JobState::Finished => self.result.as_deref(),
            JobState::Running => None,
        }
    }
}

/// A grant made by a `grant` job: what was there before, what the worker set, and for a JIT
/// grant the precise instant it is undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub job_id: String,
    pub connector: String,
    pub target_kind: TargetKind,
    pub target_id: u64,
    pub target_path: String,
    pub user_id: u64,
    /// The grant created the membership (undo removes it); otherwise it changed one (undo
    /// restores `prior`).
    pub created: bool,
    pub prior: Option<MemberState>,
    pub applied: MemberState,
    /// The precise expiry; `None` for a permanent grant.
    pub expires_at: Option<DateTime<Utc>>,
    pub state: GrantState,
    pub ended_at: Option<DateTime<Utc>>,
    pub note: Option<String>,
    /// Failed attempts to undo it so far.
    pub undo_attempts: u32,
    /// The slot of a per-group limit its undo reserved when it was put off (`<unix ms>@<lane>`).
    pub held_slot: Option<String>,
}

impl GrantRecord {
    /// The granted resource as results name it: `{"type": "group", "id": 42}`.
    pub fn target(&self) -> Target {
        Target::known(self.target_kind, self.target_id, self.target_path.clone())
    }
}
