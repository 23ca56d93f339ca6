//! Jobs, transport-agnostic: the envelope (interface.md section 3) and the result (section 4).
//! NATS, `run-job` and `demo` all parse and answer through this module.

pub mod envelope;
pub mod result;

pub use envelope::{
    DeprovisionAction, GrantExpiry, Job, JobKind, JobParams, Rejection, TargetSelector,
    UserSelector, parse_job,
};
pub use result::{Change, JobError, JobResult, JobStatus, RESULT_SCHEMA};
