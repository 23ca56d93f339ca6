//! The simulator, driven through our client and through raw HTTP (one binary, several suites).

mod api;
mod common;
mod limits_faults;
mod pagination;
mod python_gitlab;
mod seeding;
mod webhooks;
