//! Live access from GitLab's own events (docs/hooks.md): the webhook receiver keeps GitLab's
//! deliveries in the `<P>_HOOKS` stream.

pub mod manage;
pub mod receiver;
