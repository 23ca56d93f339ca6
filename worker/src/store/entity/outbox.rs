//! Messages committed with the state they describe and published afterwards, in id order.
use sea_orm::entity::prelude::*;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// `Nats-Msg-Id`: deterministic, so a publish repeated after a crash is dropped by NATS.
    #[sea_orm(unique)]
    pub msg_id: String,
    /// `message` (publish `payload` on `subject`) or `snapshot_object` (upload the stored
    /// snapshot named in `payload` to the object store under the name `subject`).
    pub kind: String,
    pub subject: String,
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    pub created_at: DateTimeUtc,
    pub sent_at: Option<DateTimeUtc>,
    /// Set when the message could not be published (too large, refused): it is skipped, and
    /// a notice went to the DLQ.
    pub parked_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text", nullable)]
    pub parked_reason: Option<String>,
    /// The process that committed it and publishes it (`Store::owner`); any process
    /// publishes it once it has waited `OUTBOX_TAKEOVER`.
    pub owner: Option<String>,
    /// `results` or `events` (`store::OutboxLane`): which publisher sends it.
    pub lane: String,
}

impl ActiveModelBehavior for ActiveModel {}
