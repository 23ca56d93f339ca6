use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    gitlab_worker::cli::run(gitlab_worker::cli::Cli::parse()).await
}
