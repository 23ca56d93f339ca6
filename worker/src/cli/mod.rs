//! The command line (docs/contract.md, "Commands"). Settings are read by [`crate::config`]
//! only; options here name them in their help but never read the environment themselves.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod access;
mod config_show;
#[cfg(feature = "demo")]
mod demo;
mod evidence;
mod hooks;
mod outbox;
mod run_job;
mod snapshots;
mod sync;

pub(crate) use snapshots::write_csv as write_access_csv;

/// Exit codes (docs/contract.md, "Exit codes").
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
    /// TOML configuration file declaring one or more connectors (environment variables still
    /// apply) [env: GITLAB_WORKER_CONFIG].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,

    /// `pretty` or `json` (default: pretty on a terminal, json otherwise) [env: LOG_FORMAT].
    #[arg(long, global = true)]
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
        /// Top-level group full path or numeric id, or `instance` [env: GITLAB_SCOPE].
        #[arg(long)]
        scope: Option<String>,
        /// Where to write the NDJSON snapshot (standard output when absent).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The previous snapshot of the same connector and scope, to chain `prev_sha256` to.
        #[arg(long)]
        prev: Option<PathBuf>,
        /// GitLab requests in flight at once [env: SYNC_CONCURRENCY; default: 16].
        #[arg(long)]
        concurrency: Option<usize>,
        /// Skip pending invitations (one request per group and project fewer).
        #[arg(long)]
        no_invitations: bool,
        /// The connector to sync when the configuration declares several.
        #[arg(long)]
        connector: Option<String>,
        /// Do not store the snapshot in the database (DATABASE_URL); only write it out.
        #[arg(long)]
        no_store: bool,
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
    #[cfg(feature = "demo")]
    Demo,
    /// Exit 0 when the worker's health endpoint answers 200 (for container healthchecks, which
    /// have no curl): GET http://HTTP_LISTEN/readyz.
    Healthcheck {
        /// The worker's HTTP address [env: HTTP_LISTEN; default: 127.0.0.1:9464].
        #[arg(long)]
        addr: Option<String>,
        /// `/readyz` (default) or `/livez`.
        #[arg(long, default_value = "/readyz")]
        path: String,
    },
    /// The effective configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// What an auditor reads: stored snapshots and their differences.
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Point-in-time answers for auditors over the stored history (docs/auditors.md): who had
    /// access to a resource, what a user could reach, and every change with its cause.
    Access {
        #[command(subcommand)]
        command: AccessCommand,
    },
    /// Signed evidence bundles for auditors (docs/evidence.md).
    Evidence {
        #[command(subcommand)]
        command: EvidenceCommand,
    },
    /// GitLab's webhooks for live access: install, check, remove (docs/hooks.md).
    Hooks {
        #[command(subcommand)]
        command: HooksCommand,
    },
    /// Results and events that could not be published (parked), for operators.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
}

/// Options every `access` question takes.
#[derive(Debug, Clone, clap::Args)]
pub struct AnswerOptions {
    /// The time asked about: RFC 3339 or a date (its start, UTC) [default: now].
    #[arg(long, value_parser = access::parse_time, global = true)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// The connector (default: the only one configured, or the only one with snapshots).
    #[arg(long, global = true)]
    pub connector: Option<String>,
    /// The sync scope (default: the scope of the connector's newest snapshot).
    #[arg(long, global = true)]
    pub scope: Option<String>,
    #[arg(long, value_enum, default_value_t = AnswerFormat::Table, global = true)]
    pub format: AnswerFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AnswerFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// Every user with effective access to RESOURCE at a time: level, every path, since when,
    /// and the user's state, kind, admin flag, 2FA and last activity.
    Who {
        /// `group:PATH`, `group:ID`, `project:PATH` or `project:ID`.
        resource: String,
        #[command(flatten)]
        common: AnswerOptions,
    },
    /// Every resource USER could reach at a time, with the same columns.
    User {
        /// A username, or `id:N`.
        user: String,
        #[command(flatten)]
        common: AnswerOptions,
    },
    /// Every change of effective access (syncs, live GitLab events, reconciles) and every write
    /// the worker made (provisioning jobs, JIT expiries), oldest first, with its cause.
    History {
        /// Only this user (a username, or `id:N`).
        #[arg(long)]
        user: Option<String>,
        /// Only this resource (`group:PATH`, `project:ID`, …).
        #[arg(long)]
        resource: Option<String>,
        /// From this time (RFC 3339 or a date).
        #[arg(long, value_parser = access::parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Up to this time [default: now, or --at].
        #[arg(long, value_parser = access::parse_time)]
        until: Option<chrono::DateTime<chrono::Utc>>,
        #[command(flatten)]
        common: AnswerOptions,
    },
}

impl AccessCommand {
    fn common(&self) -> &AnswerOptions {
        match self {
            AccessCommand::Who { common, .. }
            | AccessCommand::User { common, .. }
            | AccessCommand::History { common, .. } => common,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum EvidenceCommand {
    /// A new Ed25519 signing key (PKCS#8 PEM, mode 0600) for `evidence export`
    /// (EVIDENCE_SIGNING_KEY_FILE); an existing file is not replaced.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// A stored snapshot as a signed bundle in a new folder: snapshot.ndjson, access.csv,
    /// diff.ndjson (with --since), manifest.json, manifest.sig, public_key.pem.
    Export {
        /// A snapshot id, or an unambiguous prefix of one.
        snapshot: String,
        #[arg(long)]
        out: PathBuf,
        /// An earlier stored snapshot to diff against.
        #[arg(long)]
        since: Option<String>,
    },
    /// Checks a bundle offline: the signature, every file's sha256, the snapshot's own hash and
    /// the hash chain. Exit 0 when all hold, 1 naming what does not.
    Verify { dir: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum HooksCommand {
    /// Register the connector's webhook in GitLab, idempotently: a group webhook on the scope's
    /// top-level group (member, subgroup and project events; no pushes; SSL verification on),
    /// or with --system a system hook (self-managed, administrator token). A new random secret
    /// is written to the secret file (GITLAB_WEBHOOK_SECRET_FILE, mode 0600) first.
    Install {
        /// The public address GitLab reaches the receiver (HOOKS_LISTEN) at; the connector's
        /// path `/hooks/gitlab/<connector>` is added unless the URL ends with it.
        #[arg(long)]
        url: String,
        /// The connector, when the configuration declares several.
        #[arg(long)]
        connector: Option<String>,
        /// A system hook instead of a group webhook.
        #[arg(long)]
        system: bool,
    },
    /// GitLab's view of the connectors' webhooks, one JSON object per hook (`alert_status`:
    /// executable, temporarily_disabled after 4 failures in a row, disabled after 40). Exit 1
    /// when one is missing, paused or disabled.
    Status {
        #[arg(long)]
        connector: Option<String>,
    },
    /// Remove the connector's group webhooks (and with --system its system hooks).
    Uninstall {
        #[arg(long)]
        connector: Option<String>,
        #[arg(long)]
        system: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// List parked messages: what could not be published, and why.
    Parked {
        /// One JSON object per line instead of tab-separated text.
        #[arg(long)]
        json: bool,
    },
    /// Mark parked messages as dealt with, so `/readyz` is green again.
    Dismiss {
        /// The parked message's id (from `outbox parked`).
        id: Option<i64>,
        /// Every parked message.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
}

impl Command {
    fn is_demo(&self) -> bool {
        #[cfg(feature = "demo")]
        if matches!(self, Command::Demo) {
            return true;
        }
        false
    }

    /// A one-shot sync and a point-in-time answer run on a single runtime thread (see
    /// `main.rs`): each is one sequence of work, and waking other threads only costs.
    pub fn is_one_shot_sync(&self) -> bool {
        matches!(self, Command::Sync { .. } | Command::Access { .. })
    }
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every connector's effective settings and policy, and the worker-wide settings, as JSON
    /// (no token or password is printed).
    Show,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List stored snapshots, oldest first.
    List {
        /// Only this connector's snapshots.
        #[arg(long)]
        connector: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one stored snapshot's metadata, header and summary as JSON.
    Show {
        /// A snapshot id, or an unambiguous prefix of one.
        id: String,
    },
    /// The access diff between two snapshots, as NDJSON on standard output. A and B are stored
    /// snapshot ids (or prefixes) or snapshot files.
    Diff { a: String, b: String },
    /// Export a stored snapshot: NDJSON exactly as first written (sha256 checked), or the access
    /// records as CSV.
    Export {
        /// A snapshot id, or an unambiguous prefix of one.
        id: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Ndjson)]
        format: ExportFormat,
    },
    /// The live change batches stored on a snapshot (from GitLab's webhooks), oldest first,
    /// after checking their hash chain from the snapshot's own sha256; a broken chain is an
    /// error naming the first batch that does not hold.
    Changes {
        /// A snapshot id, or an unambiguous prefix of one.
        id: String,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Store a snapshot file (e.g. written by `sync --no-store`) after checking its sha256, so
    /// the queries and the page can use it.
    Import { file: PathBuf },
    /// Keep a snapshot whatever its age (retention, RETENTION_DAYS, skips it).
    Pin {
        /// A snapshot id, or an unambiguous prefix of one.
        id: String,
    },
    /// Let retention delete a pinned snapshot again once it is old enough.
    Unpin {
        /// A snapshot id, or an unambiguous prefix of one.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Ndjson,
    Csv,
}

/// Runs a parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let default_filter = if cli.command.is_demo() {
        crate::logging::QUIET_FILTER
    } else {
        crate::logging::DEFAULT_FILTER
    };
    let log_format = crate::config::log_format(cli.log_format);
    let directives = crate::config::log_filter();
    if let Err(e) =
        crate::logging::init_with(log_format.as_deref(), directives.as_deref(), default_filter)
    {
        eprintln!("error: {e}");
        return ExitCode::from(exit::USAGE);
    }
    gitlab_connector::client::install_crypto_provider();
    let config_file = crate::config::config_file(cli.config);
    let config = config_file.as_deref();
    let code = match cli.command {
        Command::Sync {
            scope,
            out,
            prev,
            concurrency,
            no_invitations,
            connector,
            no_store,
        } => {
            sync::run(
                config,
                sync::SyncArgs {
                    scope,
                    out,
                    prev,
                    concurrency,
                    no_invitations,
                    connector,
                    no_store,
                },
            )
            .await
        }
        Command::Serve => serve(config).await,
        Command::RunJob { file } => run_job::run(config, &file).await,
        Command::Migrate => migrate(config).await,
        Command::Snapshots { command } => snapshots::run(config, command).await,
        Command::Outbox { command } => outbox::run(config, command).await,
        Command::Hooks { command } => hooks::run(config, command).await,
        Command::Access { command } => access::run(config, command).await,
        Command::Evidence { command } => evidence::run(config, command).await,
        Command::Config {
            command: ConfigCommand::Show,
        } => config_show::run(config),
        Command::Healthcheck { addr, path } => {
            healthcheck(&crate::config::healthcheck_addr(addr), &path)
        }
        #[cfg(feature = "demo")]
        Command::Demo => demo::run().await,
    };
    ExitCode::from(code)
}

/// Loads the settings and opens the database with one connection (a command that reads or
/// writes one thing at a time), or prints why not and returns the exit code.
pub(crate) async fn settings_and_store(
    config: Option<&std::path::Path>,
    need_connector: bool,
) -> Result<(crate::config::Settings, crate::store::Store), u8> {
    let settings =
        crate::config::Settings::load(config, need_connector).map_err(|e| fail(&e.into()))?;
    let store = crate::store::Store::open_single(&settings.database_url)
        .await
        .map_err(|e| fail(&e.into()))?;
    Ok((settings, store))
}

/// As `settings_and_store`, with the full pool: a job renews its lease while it works.
pub(crate) async fn settings_and_pooled_store(
    config: Option<&std::path::Path>,
    need_connector: bool,
) -> Result<(crate::config::Settings, crate::store::Store), u8> {
    let settings =
        crate::config::Settings::load(config, need_connector).map_err(|e| fail(&e.into()))?;
    let store = crate::store::Store::open(&settings.database_url)
        .await
        .map_err(|e| fail(&e.into()))?;
    Ok((settings, store))
}

/// Prints an application error and returns its exit code.
pub(crate) fn fail(e: &crate::app::AppError) -> u8 {
    eprintln!("error: {e}");
    if e.is_config() {
        exit::USAGE
    } else {
        exit::FAILURE
    }
}

async fn serve(config: Option<&std::path::Path>) -> u8 {
    let settings = match crate::config::Settings::load(config, true) {
        Ok(s) => s,
        Err(e) => return fail(&e.into()),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    crate::app::cancel_on_signal(shutdown.clone());
    match crate::app::serve(settings, shutdown).await {
        Ok(()) => exit::OK,
        Err(e) => fail(&e),
    }
}

async fn migrate(config: Option<&std::path::Path>) -> u8 {
    let settings = match crate::config::Settings::load(config, false) {
        Ok(s) => s,
        Err(e) => return fail(&e.into()),
    };
    let result = async {
        let store = crate::store::Store::connect(&settings.database_url).await?;
        let pending = store.pending_migrations().await?;
        store.migrate().await?;
        store.close().await?;
        Ok::<_, crate::store::StoreError>(pending)
    }
    .await;
    match result {
        Ok(n) => {
            eprintln!(
                "database {}: {n} migration(s) applied, schema up to date",
                crate::redact::redact_url(&settings.database_url)
            );
            exit::OK
        }
        Err(e) => fail(&e.into()),
    }
}

fn healthcheck(addr: &str, path: &str) -> u8 {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    use std::time::Duration;
    // 0.0.0.0 (listen on every interface) is reached through loopback.
    let addr = addr.replace("0.0.0.0", "127.0.0.1");
    let result = (|| -> std::io::Result<String> {
        let target = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        Ok(resp)
    })();
    match result {
        Ok(resp) if resp.starts_with("HTTP/1.1 200") => exit::OK,
        Ok(resp) => {
            let body = resp.split_once("\r\n\r\n").map_or("", |x| x.1).trim();
            eprintln!("unhealthy: {body}");
            exit::FAILURE
        }
        Err(e) => {
            eprintln!("unhealthy: cannot reach http://{addr}{path}: {e}");
            exit::FAILURE
        }
    }
}
