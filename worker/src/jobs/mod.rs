//! Jobs, transport-agnostic: the envelope (interface.md section 3), the result (section 4), and
//! the handler that NATS, `run-job` and `demo` all call.

pub mod envelope;
pub mod events;
pub mod handler;
pub mod provision;
pub mod result;
pub mod rotation;
mod sync_job;

pub use envelope::{
    DeprovisionAction, GrantExpiry, Job, JobKind, JobParams, Rejection, TargetSelector,
    UserSelector, parse_job,
};
pub use handler::{Connector, Delivery, Disposition, Handled, Handler, HandlerError, Subjects};
pub use result::{Change, JobError, JobResult, JobStatus, RESULT_SCHEMA};
