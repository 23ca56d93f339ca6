//! One row per job id ever seen: the idempotency key and, once finished, the stored result.
use sea_orm::entity::prelude::*;

use crate::store::records::JobState;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub job_id: String,
    pub connector: String,
    pub kind: String,
    pub state: JobState,
    /// Deliveries that reached the handler.
    pub attempts: i32,
    #[sea_orm(column_type = "Text")]
    pub request: String,
    /// The result envelope, once finished.
    #[sea_orm(column_type = "Text", nullable)]
    pub result: Option<String>,
    pub status: Option<String>,
    /// Handler checkpoints, so a redelivered job resumes instead of repeating (provisioning).
    #[sea_orm(column_type = "Text", nullable)]
    pub progress: Option<String>,
    /// The JetStream stream sequence of the delivery that first ran the job (0: not NATS).
    pub stream_seq: i64,
    /// While a delivery runs the job it renews this lease; another delivery of the same job id
    /// may take the job over only once the lease has run out (the first one died).
    pub lease_until: DateTimeUtc,
    /// sha256 of the canonical envelope (null for jobs stored before it was kept).
    pub payload_sha256: Option<String>,
    /// The delivery running the job is its last (NATS will not deliver it again): if it dies,
    /// the scheduler answers the job `failed` once its lease has run out.
    pub final_delivery: bool,
    /// Deliveries handed back to wait for a slot of a per-group limit: not attempts.
    pub deferrals: i32,
    /// The slot the job reserved when it was last handed back (`<unix ms>@<lane>`).
    #[sea_orm(column_type = "Text", nullable)]
    pub held_slot: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

impl ActiveModelBehavior for ActiveModel {}
