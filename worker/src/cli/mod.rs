//! The command line of interface.md section 1.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod sync;

/// Exit codes of interface.md section 1.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const PARTIAL: u8 = 3;
}

#[derive(Debug, Parser)]
#[command(
    name = "gitlab-worker",
    version,
    about = "GitLab access-governance connector: syncs access snapshots and executes provisioning jobs from NATS JetStream"
)]
pub struct Cli {
    /// TOML configuration file declaring one or more connectors (environment variables still apply).
    #[arg(long, global = true, env = "GITLAB_WORKER_CONFIG")]
    pub config: Option<PathBuf>,

    /// `pretty` or `json` (default: pretty on a terminal, json otherwise).
    #[arg(long, global = true, env = "LOG_FORMAT")]
    pub log_format: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume jobs from NATS until SIGTERM/SIGINT, then shut down gracefully.
    Serve,
    /// One full sync now, no NATS needed; writes the snapshot as NDJSON. Exit code 0 when the
    /// snapshot is complete, 3 when it is partial.
    Sync {
        /// Top-level group full path or numeric id, or `instance` (default: GITLAB_SCOPE).
        #[arg(long, env = "GITLAB_SCOPE")]
        scope: Option<String>,
        /// Where to write the NDJSON snapshot (standard output when absent).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The previous snapshot of the same connector and scope, to chain `prev_sha256` to.
        #[arg(long)]
        prev: Option<PathBuf>,
        /// GitLab requests in flight at once.
        #[arg(long, env = "SYNC_CONCURRENCY", default_value_t = 16)]
        concurrency: usize,
        /// Skip pending invitations (one request per group and project fewer).
        #[arg(long)]
        no_invitations: bool,
    },
    /// Execute one job envelope locally (no NATS) and print the result envelope as JSON.
    RunJob {
        /// A job envelope file, or `-` for standard input.
        file: PathBuf,
    },
    /// Apply database migrations.
    Migrate,
    /// The quick start: an in-process simulated GitLab, SQLite, a sync, a JIT grant that expires,
    /// an invitation, a deprovisioning and the access diff.
    Demo,
    /// What an auditor reads: stored snapshots and their differences.
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List stored snapshots.
    List,
    /// Show one snapshot's header and summary.
    Show { id: String },
    /// The access diff between two snapshots (snapshot files), as NDJSON on standard output.
    Diff { a: String, b: String },
    /// Export a stored snapshot.
    Export {
        id: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
        format: ExportFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Ndjson,
    Csv,
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Serve => "serve",
            Command::Sync { .. } => "sync",
            Command::RunJob { .. } => "run-job",
            Command::Migrate => "migrate",
            Command::Demo => "demo",
            Command::Snapshots { .. } => "snapshots",
        }
    }
}

/// Runs a parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    if let Err(e) = crate::logging::init(cli.log_format.as_deref()) {
        eprintln!("error: {e}");
        return ExitCode::from(exit::USAGE);
    }
    gitlab_connector::client::install_crypto_provider();
    match cli.command {
        Command::Sync {
            scope,
            out,
            prev,
            concurrency,
            no_invitations,
        } => {
            let code = sync::run(sync::SyncArgs {
                scope,
                out,
                prev,
                concurrency,
                no_invitations,
            })
            .await;
            return ExitCode::from(code);
        }
        Command::Snapshots {
            command: SnapshotsCommand::Diff { a, b },
        } if std::path::Path::new(&a).is_file() && std::path::Path::new(&b).is_file() => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            return match gitlab_connector::snapshot::diff::diff_files(
                std::path::Path::new(&a),
                std::path::Path::new(&b),
                &mut out,
            ) {
                Ok(_) => match std::io::Write::flush(&mut out) {
                    Ok(()) => ExitCode::from(exit::OK),
                    Err(e) => {
                        eprintln!("error: cannot write the diff: {e}");
                        ExitCode::from(exit::FAILURE)
                    }
                },
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(exit::FAILURE)
                }
            };
        }
        _ => {}
    }
    let name = cli.command.name();
    eprintln!(
        "gitlab-worker {name}: not yet implemented in this build; see the README's roadmap for the issue that adds it"
    );
    ExitCode::from(exit::FAILURE)
}
