//! `gitlab-worker sync`: one full sync now, no NATS.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use gitlab_connector::Client;
use gitlab_connector::snapshot;
use gitlab_connector::sync::{self, Scope, SnapshotMeta, SyncError, SyncOptions};

use super::exit;
use crate::config::{ConnectorSettings, Settings};
use crate::store::Store;

pub struct SyncArgs {
    pub scope: Option<String>,
    pub out: Option<PathBuf>,
    pub prev: Option<PathBuf>,
    /// `--concurrency`; `SYNC_CONCURRENCY` when absent.
    pub concurrency: Option<usize>,
    pub no_invitations: bool,
    pub connector: Option<String>,
    pub no_store: bool,
}

/// Settings resolved from the configuration for this run.
struct Run {
    concurrency: usize,
    spool_dir: PathBuf,
}

/// Returns the exit code: 0 complete, 3 partial, 2 configuration, 1 failure.
pub async fn run(config: Option<&Path>, args: SyncArgs) -> u8 {
    let all = match Settings::load(config, true) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let settings = match pick(&all, args.connector.as_deref()) {
        Ok(s) => s.clone(),
        Err(message) => {
            eprintln!("error: {message}");
            return exit::USAGE;
        }
    };
    let store = if args.no_store {
        None
    } else {
        match Store::open(&all.database_url).await {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("error: {e} (or pass --no-store to only write the file)");
                return exit::FAILURE;
            }
        }
    };
    let scope_text = match crate::config::sync_scope(args.scope.clone())
        .or_else(|| settings.scope.clone())
    {
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
    let concurrency = args.concurrency.unwrap_or(all.sync_concurrency);
    if concurrency == 0 || concurrency > 256 {
        eprintln!("error: --concurrency must be between 1 and 256");
        return exit::USAGE;
    }
    let run = Run {
        concurrency,
        spool_dir: all.spool_dir(),
    };
    let prev_sha256 = match &args.prev {
        // Without --prev, chain to the latest stored snapshot of this connector and scope.
        None => match &store {
            None => None,
            Some(st) => match st
                .latest_snapshot(settings.id.as_str(), &scope_text, false)
                .await
            {
                Ok(p) => p.map(|p| p.sha256),
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::FAILURE;
                }
            },
        },
        Some(p) => match previous(p, settings.id.as_str(), &scope_text) {
            Ok(sha) => Some(sha),
            Err(e) => {
                eprintln!("error: --prev {}: {e:#}", p.display());
                return exit::USAGE;
            }
        },
    };
    match execute(
        &settings,
        store.as_ref(),
        scope,
        &scope_text,
        prev_sha256,
        &args,
        &run,
    )
    .await
    {
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

/// The connector to sync: `--connector`, else the only one, else `default`.
fn pick<'a>(all: &'a Settings, wanted: Option<&str>) -> Result<&'a ConnectorSettings, String> {
    let ids = || {
        all.connectors
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    match wanted {
        Some(id) => all.connectors.get(id).ok_or_else(|| {
            format!(
                "--connector {id:?} is not configured (configured: {})",
                ids()
            )
        }),
        None if all.connectors.len() == 1 => {
            Ok(all.connectors.values().next().expect("one connector"))
        }
        None => all.connectors.get("default").ok_or_else(|| {
            format!(
                "several connectors are configured ({}); choose one with --connector",
                ids()
            )
        }),
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

/// Shows the sync's progress: a bar on a terminal, a log line every 5 s otherwise.
async fn report_progress(mut rx: tokio::sync::watch::Receiver<sync::Progress>) {
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
}

/// Where the snapshot is written: the temporary file (in the private spool, or beside `--out`
/// in the operator's folder, left as it is), else standard output.
fn open_output(tmp: Option<&Path>, spooled: bool) -> anyhow::Result<Box<dyn Write + Send>> {
    let Some(t) = tmp else {
        return Ok(Box::new(BufWriter::new(std::io::stdout())));
    };
    if let Some(dir) = t.parent() {
        let made = if spooled {
            crate::files::private_dir(dir)
        } else {
            std::fs::create_dir_all(dir)
        };
        made.with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = if spooled {
        crate::files::create_private(t)
    } else {
        std::fs::File::create(t)
    }
    .with_context(|| format!("cannot create {}", t.display()))?;
    Ok(Box::new(BufWriter::new(file)))
}

async fn execute(
    settings: &ConnectorSettings,
    store: Option<&Store>,
    scope: Scope,
    scope_text: &str,
    prev: Option<String>,
    args: &SyncArgs,
    run: &Run,
) -> anyhow::Result<bool> {
    let client = Client::new(settings.client_config())?;
    let check = client
        .check_token(chrono::Utc::now().date_naive())
        .await
        .map_err(|e| anyhow::anyhow!(TokenError(e.to_string())))?;
    for w in &check.warnings {
        eprintln!("warning: {w}");
    }
    let (tx, rx) = tokio::sync::watch::channel(sync::Progress::default());
    let mut opts = SyncOptions::new(scope);
    opts.concurrency = run.concurrency;
    opts.include_invitations = !args.no_invitations;
    opts.progress = Some(tx);
    let reporter = tokio::spawn(report_progress(rx));
    let meta = SnapshotMeta::new(settings.id.as_str(), scope_text);
    // Written to a temporary file first: moved into place (--out) or copied to standard output
    // only when complete, and stored from it.
    let (tmp, target): (Option<PathBuf>, Option<&PathBuf>) = match &args.out {
        Some(p) => (Some(tmp_path(p)), Some(p)),
        None if store.is_some() => (
            Some(run.spool_dir.join(format!("{}.ndjson", meta.snapshot_id))),
            None,
        ),
        None => (None, None),
    };
    let out = open_output(tmp.as_deref(), target.is_none())?;
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
    let written = match (&tmp, target) {
        (Some(t), Some(target)) => {
            std::fs::rename(t, target)
                .with_context(|| format!("cannot move the snapshot into {}", target.display()))?;
            Some(target.clone())
        }
        (Some(t), None) => {
            let mut f = std::fs::File::open(t)?;
            let mut so = std::io::stdout().lock();
            std::io::copy(&mut f, &mut so).context("cannot write the snapshot")?;
            so.flush()?;
            Some(t.clone())
        }
        _ => None,
    };
    if let (Some(st), Some(path)) = (store, &written) {
        let stored = st.store_snapshot(path, None).await;
        if target.is_none() {
            let _ = std::fs::remove_dir_all(&run.spool_dir);
        }
        let stored = stored.context("the snapshot was written but could not be stored")?;
        eprintln!(
            "stored as snapshot {} ({} record rows written, {} closed, {} unchanged)",
            stored.info.snapshot_id,
            stored.rows_inserted,
            stored.rows_closed,
            stored.rows_unchanged
        );
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
