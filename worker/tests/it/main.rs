//! In-process tests of the worker: the handler over SQLite in memory and a simulator, driven
//! through `handle()` directly. They need no NATS and no PostgreSQL; the end-to-end tests in
//! `tests/e2e` run the built binary against real ones.

mod adversarial;
mod common;
mod deferred;
mod envelope;
mod handler;
mod hostile_gitlab;
mod policy;
mod rotation;
mod scheduler;
mod writeahead;
