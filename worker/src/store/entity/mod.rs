//! sea-orm entities, one module per table. The tables are created by [`super::migration`].

pub mod audit_log;
pub mod change_batch;
pub mod grant;
pub mod job;
pub mod lease;
pub mod outbox;
pub mod snapshot;
pub mod snapshot_record;
