//! The `gitlab-worker` service as a library, so tests can run the whole app in-process.
//! `main.rs` only parses arguments and calls [`cli::run`].

pub mod app;
pub mod cli;
pub mod config;
pub mod http;
pub mod jobs;
pub mod logging;
pub mod nats;
pub mod scheduler;
pub mod store;
