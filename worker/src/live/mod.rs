//! Live access (docs/hooks.md): GitLab's deliveries in `<P>_HOOKS` become targeted re-reads,
//! applied to the live state (the newest complete snapshot with the change batches stored on
//! it), stored as hash-chained change batches, and announced as access events with
//! `cause: "gitlab_event"`.

pub mod audit;
pub mod processor;
pub mod reconcile;
pub mod state;

pub use processor::Processor;
