//! `gitlab-worker run-job FILE|-`: one job envelope, executed locally through the same handler
//! as `serve`, with no NATS; the result envelope is printed as JSON on standard output.
//!
//! Exit codes: 0 succeeded or noop, 1 failed, 2 rejected (bad input) or configuration error.

use std::io::Read;
use std::path::Path;

use super::{exit, fail};
use crate::app;
use crate::jobs::{Delivery, JobStatus};

pub async fn run(config: Option<&Path>, file: &Path) -> u8 {
    let bytes = if file == Path::new("-") {
        let mut b = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut b) {
            eprintln!("error: cannot read the job from standard input: {e}");
            return exit::USAGE;
        }
        b
    } else {
        match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot read the job file {}: {e}", file.display());
                return exit::USAGE;
            }
        }
    };
    let (settings, store) = match super::settings_and_pooled_store(config, true).await {
        Ok(both) => both,
        Err(code) => return code,
    };
    let connectors = match app::connectors(&settings, true).await {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let handler = app::handler(&settings, store.clone(), connectors, false);
    let handled = handler.handle(&bytes, Delivery::once()).await;
    let _ = std::fs::remove_dir_all(&handler.spool_dir);
    let _ = store.close().await;
    match handled {
        Ok(h) => {
            println!("{}", h.result);
            match h.status {
                JobStatus::Succeeded | JobStatus::Noop => exit::OK,
                JobStatus::Failed => exit::FAILURE,
                JobStatus::Rejected => exit::USAGE,
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILURE
        }
    }
}
