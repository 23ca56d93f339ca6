//! `gitlab-worker sync`: one full sync now, no NATS.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use gitlab_connector::Client;
use gitlab_connector::snapshot;
use gitlab_connector::sync::{self, Scope, SnapshotMeta, SyncError, SyncOptions};

use super::exit;
use crate::config::ConnectorSettings;

pub struct SyncArgs {
    pub scope: Option<String>,
    pub out: Option<PathBuf>,
    pub prev: Option<PathBuf>,
    pub concurrency: usize,
    pub no_invitations: bool,
}

/// Returns the exit code: 0 complete, 3 partial, 2 configuration, 1 failure.
pub async fn run(args: SyncArgs) -> u8 {
    let settings = match ConnectorSettings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let scope_text = match args.scope.clone().or_else(|| settings.scope.clone()) {
        Some(s) => s,
        None => {
            eprintln!(
                "error: GITLAB_SCOPE is not set and --scope was not given: name a top-level group path or id, or `instance`"
            );
            return exit::USAGE;
        }
    };
    let scope = match Scope::parse(&scope_text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: GITLAB_SCOPE: {e}");
            return exit::USAGE;
        }
    };
    if args.concurrency == 0 || args.concurrency > 256 {
        eprintln!("error: --concurrency must be between 1 and 256");
        return exit::USAGE;
    }
    let prev_sha256 = match &args.prev {
        None => None,
        Some(p) => match previous(p, &settings.id, &scope_text) {
            Ok(sha) => Some(sha),
            Err(e) => {
                eprintln!("error: --prev {}: {e:#}", p.display());
                return exit::USAGE;
            }
        },
    };
    match execute(&settings, scope, &scope_text, prev_sha256, &args).await {
        Ok(complete) => {
            if complete {
                exit::OK
            } else {
                exit::PARTIAL
            }
        }
        Err(e) if e.downcast_ref::<TokenError>().is_some() => {
            eprintln!("error: GITLAB_TOKEN: {e:#}");
            exit::USAGE
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            exit::FAILURE
        }
    }
}

/// The configured token cannot be used: a configuration error (exit 2).
#[derive(Debug)]
struct TokenError(String);

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TokenError {}

/// The previous snapshot's hash, after checking it is intact and of the same connector and scope.
fn previous(path: &Path, connector: &str, scope: &str) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).context("cannot open the previous snapshot")?;
    let summary = snapshot::verify(std::io::BufReader::new(file))?;
    let first = snapshot::records(std::io::BufReader::new(std::fs::File::open(path)?)).next();
    match first {
        Some(Ok(gitlab_connector::model::Record::Snapshot(h)))
            if h.connector == connector && h.scope == scope =>
        {
            Ok(summary.sha256)
        }
        Some(Ok(gitlab_connector::model::Record::Snapshot(h))) => anyhow::bail!(
            "it is a snapshot of connector {:?} and scope {:?}, not {connector:?}/{scope:?}",
            h.connector,
            h.scope
        ),
        _ => anyhow::bail!("it does not start with a snapshot header"),
    }
}

async fn execute(
    settings: &ConnectorSettings,
    scope: Scope,
    scope_text: &str,
    prev: Option<String>,
    args: &SyncArgs,
) -> anyhow::Result<bool> {
    let client = Client::new(settings.client_config())?;
    let check = client
        .check_token(chrono::Utc::now().date_naive())
        .await
        .map_err(|e| anyhow::anyhow!(TokenError(e.to_string())))?;
    for w in &check.warnings {
        eprintln!("warning: {w}");
    }
    let (tx, mut rx) = tokio::sync::watch::channel(sync::Progress::default());
    let mut opts = SyncOptions::new(scope);
    opts.concurrency = args.concurrency;
    opts.include_invitations = !args.no_invitations;
    opts.progress = Some(tx);
    let reporter = tokio::spawn(async move {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg:<14} [{bar:30}] {pos}/{len} lists, {prefix}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let mut last_log = std::time::Instant::now();
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            match &bar {
                Some(b) => {
                    b.set_length(p.lists_known);
                    b.set_position(p.lists_done);
                    b.set_message(p.phase.clone());
                    b.set_prefix(format!("{} requests, {} records", p.requests, p.records));
                }
                None if last_log.elapsed() >= Duration::from_secs(5) => {
                    last_log = std::time::Instant::now();
                    tracing::info!(phase = %p.phase, lists_done = p.lists_done, lists_known = p.lists_known, requests = p.requests, records = p.records, "sync progress");
                }
                None => {}
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    });
    let meta = SnapshotMeta::new(&settings.id, scope_text);
    let (tmp, target): (Option<PathBuf>, Option<&PathBuf>) = match &args.out {
        Some(p) => (Some(tmp_path(p)), Some(p)),
        None => (None, None),
    };
    let out: Box<dyn Write + Send> = match &tmp {
        Some(t) => Box::new(BufWriter::new(
            std::fs::File::create(t).with_context(|| format!("cannot create {}", t.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout())),
    };
    let result = sync::run(&client, &opts, meta, prev, out).await;
    drop(opts);
    let _ = reporter.await;
    let (summary, _) = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            return Err(match e {
                SyncError::Auth(inner) => anyhow::anyhow!("{inner}"),
                other => other.into(),
            });
        }
    };
    if let (Some(t), Some(target)) = (&tmp, target) {
        std::fs::rename(t, target)
            .with_context(|| format!("cannot move the snapshot into {}", target.display()))?;
    }
    let counts: Vec<String> = summary
        .counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect();
    eprintln!(
        "{} snapshot {} ({}); {} API requests, {} rate-limit waits, {} retries; sha256 {}",
        if summary.complete {
            "complete"
        } else {
            "PARTIAL"
        },
        summary.snapshot_id,
        counts.join(", "),
        summary.api_requests,
        summary.rate_limit_waits,
        summary.retries,
        summary.sha256
    );
    for e in &summary.errors {
        eprintln!("  not read: {} ({}): {}", e.what, e.code, e.message);
    }
    for w in &summary.warnings {
        eprintln!("  note: {w}");
    }
    Ok(summary.complete)
}

fn tmp_path(p: &Path) -> PathBuf {
    let mut name = p.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial-write");
    p.with_file_name(name)
}
