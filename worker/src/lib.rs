//! The `gitlab-worker` service as a library, so tests can run the whole app in-process.
//! `main.rs` only parses arguments and calls [`cli::run`].
//!
//! Modules depend on each other in one direction only; each imports from those listed before
//! it, never after:
//!
//! 1. [`ids`], [`redact`], [`policy`], [`files`]: identifiers, safe printing, the policy rules
//!    and private files, no dependencies inside the crate;
//! 2. [`config`]: settings from the environment and the TOML file (the only reader of the
//!    environment);
//! 3. [`store`]: persistence, with its own record types; [`history`]: point-in-time answers
//!    over what the store keeps;
//! 4. [`subjects`], [`connector`]: subject names, and a configured GitLab with its client;
//! 5. [`jobs`]: the envelope, one module per kind, and the handler that dispatches them;
//! 6. [`scheduler`]: the JIT expiry loop;
//! 7. [`nats`], [`http`], [`logging`], [`ui`]: the transports, the health port and the
//!    auditors' page;
//! 8. [`app`]: assembles the running service;
//! 9. [`cli`]: the command line.

pub mod app;
pub mod cli;
pub mod config;
pub mod connector;
pub mod evidence;
pub mod files;
pub mod history;
pub mod hooks;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod live;
pub mod logging;
pub mod nats;
pub mod policy;
pub mod redact;
pub mod scheduler;
pub mod store;
pub mod subjects;
pub mod ui;
