//! Jobs, transport-agnostic: NATS, `run-job` and `demo` all call the [`Handler`].
//!
//! One module per job kind owns its parameters (`Params::parse`) and its execution
//! (`execute(ctx, params) -> Result<Done, JobFailure>`): [`sync`], [`grant`], [`revoke`],
//! [`invite`], [`deprovision`], [`rotate`]; [`undo`] is the JIT undo that the scheduler and
//! `revoke` share. Inside this folder the dependencies run one way:
//! `codes`, `result`, `fields` → `outcome`, `audit`, `context`, `bounded` → the kinds (and
//! `undo`, `events`) → `envelope` → `delivery`, `handler`, `deferred`.

pub mod abandoned;
mod audit;
pub mod bounded;
pub mod codes;
pub mod context;
pub mod deferred;
pub mod delivery;
pub mod envelope;
pub mod events;
mod fields;
mod guard;
pub mod handler;
pub mod outcome;
pub mod result;
pub mod scope_lock;

pub mod deprovision;
pub mod grant;
pub mod invite;
pub mod revoke;
pub mod rotate;
pub mod sync;
pub mod undo;

pub use codes::Code;
pub use context::Clock;
pub use delivery::{DEFERRALS_MAX, Delivery, Disposition, Handled, HandlerError};
pub use envelope::{Job, JobKind, JobParams, Rejection, parse_job};
pub use handler::Handler;
pub use result::{Change, JobError, JobResult, JobStatus, RESULT_SCHEMA};
