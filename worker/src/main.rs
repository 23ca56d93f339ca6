use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = gitlab_worker::cli::Cli::parse();
    // A one-shot sync is a single crawl whose work is parsing responses: one runtime thread
    // keeps the connection tasks and the parser together and avoids waking threads on every
    // response (measured: docs/benchmark.md). Everything else (serve's concurrent jobs, the
    // demo) gets the multi-threaded runtime.
    let runtime = if cli.command.is_one_shot_sync() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(rt) => rt.block_on(gitlab_worker::cli::run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(1)
        }
    }
}
