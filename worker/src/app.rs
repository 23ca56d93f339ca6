//! Assembles the running service from its settings: store, connectors (token checked), handler,
//! NATS, HTTP, and the shutdown sequence. `serve` and the in-process tests both use [`serve`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gitlab_connector::Client;
use gitlab_connector::api::Capability;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, Settings};
use crate::connector::Connector;
use crate::http::{self, Health};
use crate::ids::ConnectorId;
use crate::jobs::{Clock, Handler};
use crate::nats::{self, NatsError};
use crate::store::{OutboxLane, Store, StoreError};
use crate::subjects::Subjects;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Exit code 2: a setting is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Exit code 2: a connector's token cannot be used.
    #[error("connector {connector:?}: {message}")]
    Token { connector: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Nats(#[from] NatsError),
    #[error("cannot listen on HTTP_LISTEN {addr}: {source}")]
    Http {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on UI_LISTEN {addr}: {source}")]
    Ui {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on HOOKS_LISTEN {addr}: {source}")]
    Hooks {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl AppError {
    /// Usage and configuration problems exit with 2 (docs/contract.md, "Exit codes").
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            AppError::Config(_)
                | AppError::Token { .. }
                | AppError::Store(StoreError::UnsupportedUrl(_))
        )
    }
}

/// Builds a client per connector and, when `check_tokens`, checks each token with
/// `GET /personal_access_tokens/self` (expired, revoked, scopes, expiry soon).
pub async fn connectors(
    settings: &Settings,
    check_tokens: bool,
) -> Result<BTreeMap<ConnectorId, Arc<Connector>>, AppError> {
    let mut out = BTreeMap::new();
    let today = chrono::Utc::now().date_naive();
    for (id, s) in &settings.connectors {
        let client = Client::new(s.client_config()).map_err(|e| AppError::Token {
            connector: id.to_string(),
            message: e.to_string(),
        })?;
        let capability = if check_tokens {
            let probe = Connector::new(s.clone(), client.clone(), None);
            crate::jobs::rotate::check_interrupted(&probe)
                .await
                .map_err(|message| AppError::Token {
                    connector: id.to_string(),
                    message,
                })?;
            let check = client
                .check_token(today)
                .await
                .map_err(|e| AppError::Token {
                    connector: id.to_string(),
                    message: e.to_string(),
                })?;
            for w in &check.warnings {
                tracing::warn!(connector = %id, "token: {w}");
            }
            if check.capability == Capability::SyncOnly {
                tracing::warn!(connector = %id, "the token has read_api only: sync jobs run, provisioning jobs are refused");
            }
            Some(check.capability)
        } else {
            None
        };
        out.insert(
            id.clone(),
            Arc::new(Connector::new(s.clone(), client, capability)),
        );
    }
    Ok(out)
}

pub fn handler(
    settings: &Settings,
    store: Store,
    connectors: BTreeMap<ConnectorId, Arc<Connector>>,
    publish: bool,
) -> Handler {
    Handler {
        store,
        connectors,
        subjects: Subjects::new(&settings.nats.subject_prefix),
        spool_dir: settings.spool_dir(),
        publish,
        lease: settings.nats.ack_wait,
        // Two leases: time for a dead holder's lease to lapse, and for a live one to finish
        // a provisioning job; a longer run (a sync) hands the duplicate message back.
        busy_wait: (settings.nats.ack_wait * 2).max(Duration::from_secs(10)),
        clock: Clock::system(),
        max_job_bytes: settings.nats.max_job_bytes,
        timeouts: settings.job_timeouts.clone(),
    }
}

/// How often `serve` applies retention (and once at start).
const RETENTION_EVERY: Duration = Duration::from_secs(6 * 3600);

/// Applies retention every [`RETENTION_EVERY`] until `stop`: whatever is older than `keep`.
async fn retain(store: Store, keep: Duration, stop: CancellationToken) {
    loop {
        let cutoff = chrono::Utc::now() - chrono::Duration::from_std(keep).unwrap_or_default();
        match store.apply_retention(cutoff).await {
            Ok(p) => tracing::info!(
                jobs = p.jobs,
                outbox = p.outbox,
                snapshots = p.snapshots,
                snapshot_records = p.snapshot_records,
                "retention applied (RETENTION_DAYS)"
            ),
            Err(e) => tracing::warn!("retention: {e}; tried again later"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_EVERY) => {}
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down gracefully"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down gracefully"),
        }
        token.cancel();
    });
}

/// Runs a background task that must outlive every job (the outbox publisher, the JIT
/// scheduler) until `stop`: a panic in it is logged and the task started again, instead of a
/// worker that goes on taking jobs whose results are never published or grants never undone.
pub(crate) fn supervise<F, Fut>(
    name: &'static str,
    stop: CancellationToken,
    start: F,
) -> JoinHandle<()>
where
    F: Fn(CancellationToken) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(start(stop.clone())).await {
                Err(e) if e.is_panic() && !stop.is_cancelled() => {
                    metrics::counter!("gitlab_worker_task_restarts_total", "task" => name)
                        .increment(1);
                    tracing::error!(
                        "the {name} panicked; starting it again (this is a bug in gitlab-worker, please report it)"
                    );
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                _ => return,
            }
        }
    })
}

/// Starts the webhook receiver on `addr` for the connectors that have a webhook secret (the
/// settings make sure one has).
async fn start_hooks(
    addr: SocketAddr,
    settings: &Settings,
    js: async_nats::jetstream::Context,
    subjects: &Subjects,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, AppError> {
    let secrets: BTreeMap<_, _> = settings
        .connectors
        .iter()
        .filter_map(|(id, c)| {
            c.webhook_secret.clone().map(|s| {
                let secret =
                    crate::hooks::receiver::HookSecret::new(s, c.webhook_secret_file.clone());
                (id.clone(), secret)
            })
        })
        .collect();
    let receiver = crate::hooks::receiver::Receiver {
        js,
        subjects: subjects.clone(),
        secrets: Arc::new(secrets),
    };
    let (bound, task) = http::serve_with(
        addr,
        crate::hooks::receiver::router(receiver),
        stop,
        http::HEADER_READ_TIMEOUT,
        http::CONNECTION_TIMEOUT,
    )
    .await
    .map_err(|source| AppError::Hooks { addr, source })?;
    eprintln!("gitlab-worker: hooks on {bound}");
    Ok(task)
}

/// The auditors' page on `UI_LISTEN`, when set.
async fn start_ui(
    settings: &Settings,
    store: &Store,
    token: Option<gitlab_connector::Secret>,
    stop: &CancellationToken,
) -> Result<Option<JoinHandle<()>>, AppError> {
    let Some(addr) = settings.ui_listen else {
        return Ok(None);
    };
    let ui = crate::ui::Ui {
        store: store.clone(),
        connectors: settings.connectors.keys().map(|c| c.to_string()).collect(),
        token,
    };
    let (at, task) = crate::ui::serve(addr, ui, stop.clone())
        .await
        .map_err(|source| AppError::Ui { addr, source })?;
    // A stable line for scripts and tests, whatever the log format.
    eprintln!("gitlab-worker: auditors' page on http://{at}");
    Ok(Some(task))
}

/// Automatic token rotation, per connector that asks for it.
fn rotations(
    handler: &Handler,
    settings: &Settings,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    handler
        .connectors
        .values()
        .filter(|c| c.settings.rotate_when_days_left > 0)
        .map(|c| {
            tokio::spawn(crate::jobs::rotate::auto_rotate(
                handler.store.clone(),
                vec![c.clone()],
                c.settings.rotate_when_days_left,
                settings.token_check_interval,
                stop.clone(),
            ))
        })
        .collect()
}

/// `/livez`, `/readyz` and `/metrics` on `addr`, until `stop`.
async fn serve_health(
    addr: SocketAddr,
    health: Health,
    stop: &CancellationToken,
) -> Result<(SocketAddr, JoinHandle<()>), AppError> {
    http::serve(addr, Arc::new(health), stop.clone())
        .await
        .map_err(|source| AppError::Http { addr, source })
}

/// Creates or reconciles the streams, buckets and consumers, and shares every connector's
/// GitLab budget with the other workers using its token.
async fn setup_nats(
    settings: &Settings,
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    connectors: &BTreeMap<ConnectorId, Arc<Connector>>,
) -> Result<nats::Consumers, AppError> {
    let ack_pending = |n: usize| i64::try_from(n * 64).unwrap_or(1024);
    let consumers = nats::setup(
        js,
        subjects,
        &settings.nats,
        (
            ack_pending(settings.pools.provision),
            ack_pending(settings.pools.sync),
        ),
    )
    .await?;
    let budget = nats::budget::bucket(js, subjects, settings.nats.stream_replicas).await?;
    for (id, c) in connectors {
        c.client.share_budget(Arc::new(nats::budget::KvBudget::new(
            budget.clone(),
            id.as_str(),
        )));
    }
    Ok(consumers)
}

/// The job pools: provisioning and syncs, each pulled through its own consumer.
fn pools(settings: &Settings, consumers: nats::Consumers) -> Vec<nats::serve::Pool> {
    vec![
        nats::serve::Pool {
            work: nats::Work::Provision,
            consumer: consumers.provision,
            concurrency: settings.pools.provision,
        },
        nats::serve::Pool {
            work: nats::Work::Sync,
            consumer: consumers.sync,
            concurrency: settings.pools.sync,
        },
    ]
}

/// `gitlab-worker serve`: runs until `shutdown` is cancelled, then drains.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> Result<(), AppError> {
    settings.check_webhook_secrets()?;
    let ui_token = settings.ui_token()?;
    let metrics = http::install_metrics();
    for w in settings.cleartext_warnings() {
        tracing::warn!("{w}");
    }
    let store = Store::open(&settings.database_url).await?;
    let connectors = connectors(&settings, true).await?;
    let subjects = Subjects::new(&settings.nats.subject_prefix);
    let client = nats::connect(&settings.nats, Duration::from_secs(30)).await?;
    let js = async_nats::jetstream::new(client.clone());
    let consumers = setup_nats(&settings, &js, &subjects, &connectors).await?;

    let health = Health {
        nats: Some(client.clone()),
        store: store.clone(),
        shutting_down: shutdown.clone(),
        metrics,
        connectors: connectors.values().cloned().collect(),
    };
    let http_stop = CancellationToken::new();
    let (bound, http_task) = serve_health(settings.http_listen, health, &http_stop).await?;

    let handler = Arc::new(handler(&settings, store.clone(), connectors, true));
    let background_stop = CancellationToken::new();
    // One publisher per lane: results never wait while a sync's events are built and sent.
    let outbox_tasks = OutboxLane::ALL.map(|lane| {
        let publisher = nats::outbox::OutboxPublisher {
            store: store.clone(),
            js: js.clone(),
            subjects: subjects.clone(),
            lane,
            spool_dir: settings.spool_dir(),
        };
        let name = match lane {
            OutboxLane::Results => "outbox publisher (results)",
            OutboxLane::Events => "outbox publisher (events)",
        };
        supervise(name, background_stop.clone(), move |stop| {
            publisher.clone().run(stop)
        })
    });
    let watchers = [
        (nats::Work::Provision, &consumers.provision),
        (nats::Work::Sync, &consumers.sync),
    ]
    .map(|(work, c)| {
        tokio::spawn(nats::serve::watch_consumer(
            work,
            c.clone(),
            background_stop.clone(),
        ))
    });
    // Tasks that end when `background_stop` is cancelled, before the outbox's last flush.
    let mut background: Vec<JoinHandle<()>> = vec![{
        let handler = handler.clone();
        supervise("JIT scheduler", background_stop.clone(), move |stop| {
            crate::scheduler::run(handler.clone(), stop)
        })
    }];
    background.extend(rotations(&handler, &settings, &background_stop));
    background.extend(
        settings
            .retention
            .map(|keep| tokio::spawn(retain(store.clone(), keep, background_stop.clone()))),
    );
    background.extend(crate::live::start(crate::live::Background {
        settings: &settings,
        store: &store,
        js: &js,
        subjects: &subjects,
        connectors: handler.connectors.values().cloned().collect(),
        stop: background_stop.clone(),
    }));
    background.push(tokio::spawn(crate::jobs::rotate::watch_token_files(
        handler.connectors.values().cloned().collect(),
        background_stop.clone(),
    )));
    tracing::info!(http = %bound, provision = settings.pools.provision, sync = settings.pools.sync, "serving jobs");
    // A stable line for scripts and tests, whatever the log format.
    let hooks = match settings.hooks_listen {
        None => None,
        Some(addr) => {
            Some(start_hooks(addr, &settings, js.clone(), &subjects, http_stop.clone()).await?)
        }
    };
    let ui = start_ui(&settings, &store, ui_token, &http_stop).await?;
    eprintln!("gitlab-worker: ready; http on {bound}");

    nats::serve::run(
        nats::serve::ServeContext {
            handler,
            js,
            ack_wait: settings.nats.ack_wait,
            max_deliver: settings.nats.max_deliver,
            shutdown_grace: settings.shutdown_grace,
            precedence: gitlab_connector::client::Precedence::new(),
        },
        pools(&settings, consumers),
        shutdown,
    )
    .await;

    // Publish what the last jobs committed, then let NATS flush acks and publishes.
    background_stop.cancel();
    for task in background {
        let _ = task.await;
    }
    for task in outbox_tasks {
        let _ = task.await;
    }
    for w in watchers {
        let _ = w.await;
    }
    if let Err(e) = client.drain().await {
        tracing::warn!("NATS drain: {e}");
    }
    http_stop.cancel();
    let _ = http_task.await;
    for task in [hooks, ui].into_iter().flatten() {
        let _ = task.await;
    }
    let _ = std::fs::remove_dir_all(settings.spool_dir());
    store.close().await?;
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_supervised_task_that_panics_is_started_again_until_it_returns() {
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let task = supervise("test task", CancellationToken::new(), move |_| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("injected panic {n}");
                }
            }
        });
        task.await.unwrap();
        assert_eq!(
            starts.load(Ordering::SeqCst),
            3,
            "two panics, then a clean return"
        );
    }

    #[tokio::test]
    async fn a_supervised_task_is_not_restarted_once_stopped() {
        let stop = CancellationToken::new();
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        let task = supervise("test task", stop, move |stopping| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                stopping.cancel();
                panic!("panics while shutting down");
            }
        });
        task.await.unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 1);
    }
}
