//! GitLab access-governance connector: the GitLab REST v4 client, the access model, sync and
//! provisioning logic. No NATS and no database here, so everything is testable against
//! wiremock or the simulator.

pub mod api;
pub mod client;
pub mod error;
pub mod live;
pub mod model;
pub mod provision;
pub mod secret;
pub mod snapshot;
pub mod sync;

pub use client::{Client, ClientConfig, InstanceKind};
pub use error::{Error, Route};
pub use secret::Secret;
