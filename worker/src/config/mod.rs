//! Configuration (docs/configuration.md): environment variables, optionally layered over a TOML
//! file (`--config FILE`) that may declare several connectors. Every error names the setting and
//! says what to do; no error prints a token.
//!
//! This is the only module that reads the environment, and every default lives in [`defaults`]:
//! the command line may show a setting, never read it a second time.
//!
//! ```toml
//! database_url = "postgres://worker@db/gitlab"   # every worker-wide key is optional
//! nats_url = "tls://nats.example.com:4222"
//! concurrency_provision = 8                      # and concurrency_sync (default 2)
//! stream_replicas = 3                            # on a three-server NATS cluster
//!
//! [[connectors]]
//! id = "corp"
//! url = "https://git.example.com/gitlab"
//! token_file = "/run/secrets/gitlab-corp"        # or token_env = "VAR"
//! scope = "acme"
//! rate_limit_per_minute = 1200
//! ```
//!
//! Environment variables override the file's worker-wide keys; `GITLAB_URL` in the environment
//! adds one more connector (id `CONNECTOR_ID`, default `default`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gitlab_connector::Secret;
use serde::Deserialize;

use crate::ids::ConnectorId;
use crate::redact::redact_url;

mod connector;
mod transport;
mod values;

use connector::FileConnector;
pub use connector::{ClientLimits, ConnectorSettings, TokenSource};
pub use values::{ConfigError, JobTimeouts, defaults};
use values::{invalid, positive, read_token_file, var};

/// How the worker reaches NATS.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    pub url: String,
    pub creds_file: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    pub token: Option<Secret>,
    /// CA bundle for `tls://` servers with a private CA.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate and key for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub subject_prefix: String,
    /// Redelivery after this long without an ack or a progress ack (a crashed worker).
    pub ack_wait: Duration,
    /// Deliveries before a job is dead-lettered.
    pub max_deliver: i64,
    /// Job envelopes larger than this are rejected unread (`NATS_MAX_JOB_BYTES`).
    pub max_job_bytes: usize,
    /// `NATS_STREAM_REPLICAS`: replicas of every stream and the object store (3 on a cluster).
    pub stream_replicas: usize,
}

impl NatsSettings {
    /// The default settings for a server at `url`, without authentication or TLS.
    pub fn for_url(url: &str) -> Self {
        Self {
            url: url.to_string(),
            creds_file: None,
            user: None,
            password: None,
            token: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            subject_prefix: defaults::SUBJECT_PREFIX.into(),
            ack_wait: Duration::from_secs(defaults::ACK_WAIT_SECONDS),
            max_deliver: defaults::MAX_DELIVER,
            max_job_bytes: defaults::MAX_JOB_BYTES,
            stream_replicas: defaults::STREAM_REPLICAS,
        }
    }
}

/// Everything `serve`, `run-job`, `sync` and `demo` need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connectors: BTreeMap<ConnectorId, ConnectorSettings>,
    pub database_url: String,
    pub nats: NatsSettings,
    pub http_listen: SocketAddr,
    /// `HOOKS_LISTEN`: the webhook receiver's address (off when unset).
    pub hooks_listen: Option<SocketAddr>,
    /// Jobs run at once, per kind of work (`WORKER_CONCURRENCY_PROVISION`/`_SYNC`).
    pub pools: JobPools,
    /// How long SIGTERM waits for jobs in flight before handing them back to NATS.
    pub shutdown_grace: Duration,
    /// How often `serve` checks the tokens' expiry for automatic rotation.
    pub token_check_interval: Duration,
    /// `SPOOL_DIR`: where snapshots are written before they are stored (each process uses a
    /// folder of its own inside it).
    pub spool_root: PathBuf,
    /// `SYNC_CONCURRENCY`: GitLab requests in flight during `gitlab-worker sync`.
    pub sync_concurrency: usize,
    /// `JOB_TIMEOUT_SECONDS[_<KIND>]`: how long a job may run.
    pub job_timeouts: JobTimeouts,
    /// `RETENTION_DAYS` (default 400; 0 keeps everything): finished jobs, sent outbox
    /// messages and unpinned snapshots older than this are deleted.
    pub retention: Option<Duration>,
    /// `RECONCILE_INTERVAL_SECONDS` (default 3600; 0 = off): how often each connector with a
    /// webhook secret gets a `reconcile` job.
    pub reconcile_interval: Option<Duration>,
    /// `HOOK_CHECK_INTERVAL_SECONDS` (default 300): how often `serve` reads GitLab's view of
    /// the connectors' webhooks (paused, disabled).
    pub hook_check_interval: Duration,
    /// `AUDIT_POLL_SECONDS` (default 300; 0 = off): how often the event processor reads GitLab's
    /// audit events for share changes (no webhook reports them).
    pub audit_poll_interval: Option<Duration>,
    /// `EVIDENCE_SIGNING_KEY_FILE`: the Ed25519 key `evidence export` signs with.
    pub evidence_signing_key_file: Option<PathBuf>,
    /// `UI_LISTEN`: the auditors' page (docs/auditors.md); off when `None`.
    pub ui_listen: Option<SocketAddr>,
    /// `UI_TOKEN_FILE`: the page's token (required off loopback).
    pub ui_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    nats_url: Option<String>,
    nats_creds_file: Option<PathBuf>,
    nats_user: Option<String>,
    nats_password_env: Option<String>,
    nats_token_env: Option<String>,
    nats_tls_ca_file: Option<PathBuf>,
    nats_tls_cert_file: Option<PathBuf>,
    nats_tls_key_file: Option<PathBuf>,
    nats_subject_prefix: Option<String>,
    http_listen: Option<String>,
    hooks_listen: Option<String>,
    ui_listen: Option<String>,
    ui_token_file: Option<PathBuf>,
    concurrency: Option<usize>,
    concurrency_provision: Option<usize>,
    concurrency_sync: Option<usize>,
    stream_replicas: Option<usize>,
    ack_wait_seconds: Option<u64>,
    max_deliver: Option<i64>,
    max_job_bytes: Option<usize>,
    shutdown_grace_seconds: Option<u64>,
    reconcile_interval_seconds: Option<u64>,
    #[serde(default)]
    connectors: Vec<FileConnector>,
}

impl Settings {
    /// Reads `file` (if any), then the environment. `need_connector`: at least one connector
    /// must be configured (every command but `migrate` and `snapshots`).
    pub fn load(file: Option<&Path>, need_connector: bool) -> Result<Self, ConfigError> {
        let mut fc = match file {
            None => FileConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::File {
                    path: p.display().to_string(),
                    message: format!("cannot read the configuration file: {e}"),
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::File {
                    path: p.display().to_string(),
                    message: format!("not a valid configuration: {e}"),
                })?
            }
        };
        let connectors = connectors(std::mem::take(&mut fc.connectors), need_connector)?;
        let nats = nats_settings(&fc)?;
        let live = LiveIntervals::load(&fc)?;
        let pools = job_pools(&fc)?;
        let database_url = var("DATABASE_URL")
            .or(fc.database_url)
            .unwrap_or_else(|| defaults::DATABASE_URL.into());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres:")
            || database_url.starts_with("postgresql:"))
        {
            return Err(invalid(
                "DATABASE_URL",
                format!(
                    "{:?} is neither sqlite://FILE?mode=rwc nor postgres://USER@HOST/DB",
                    redact_url(&database_url)
                ),
            ));
        }
        let http_text = var("HTTP_LISTEN")
            .or(fc.http_listen)
            .unwrap_or_else(|| defaults::HTTP_LISTEN.into());
        let http_listen = http_text.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "HTTP_LISTEN",
                format!("{http_text:?} is not an address:port such as 127.0.0.1:9464"),
            )
        })?;
        let hooks_listen = hooks_listen(fc.hooks_listen.take(), &connectors)?;
        let (ui_listen, ui_token_file) = ui_settings(fc.ui_listen.take(), fc.ui_token_file.take())?;
        let shutdown_grace = Duration::from_secs(match var("SHUTDOWN_GRACE_SECONDS") {
            Some(v) => positive::<u64>("SHUTDOWN_GRACE_SECONDS", &v, "seconds")?,
            None => fc
                .shutdown_grace_seconds
                .unwrap_or(defaults::SHUTDOWN_GRACE_SECONDS),
        });
        let token_check_interval = Duration::from_secs(match var("TOKEN_CHECK_INTERVAL_SECONDS") {
            Some(v) => positive::<u64>("TOKEN_CHECK_INTERVAL_SECONDS", &v, "seconds")?,
            None => defaults::TOKEN_CHECK_INTERVAL_SECONDS,
        });
        let spool_root = var("SPOOL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let sync_concurrency = match var("SYNC_CONCURRENCY") {
            Some(v) => positive::<usize>("SYNC_CONCURRENCY", &v, "requests")?,
            None => defaults::SYNC_CONCURRENCY,
        };
        let job_timeouts = JobTimeouts::from_env(var)?;
        let retention_days = match var("RETENTION_DAYS") {
            Some(v) if v.trim() == "0" => 0,
            Some(v) => positive::<u64>("RETENTION_DAYS", &v, "days")?,
            None => defaults::RETENTION_DAYS,
        };
        Ok(Self {
            ui_listen,
            ui_token_file,
            evidence_signing_key_file: var("EVIDENCE_SIGNING_KEY_FILE").map(PathBuf::from),
            audit_poll_interval: live.audit_poll,
            hook_check_interval: live.hook_check,
            reconcile_interval: live.reconcile,
            job_timeouts,
            retention: (retention_days > 0)
                .then(|| Duration::from_secs(retention_days.saturating_mul(86_400))),
            spool_root,
            sync_concurrency,
            token_check_interval,
            connectors,
            database_url,
            nats,
            http_listen,
            hooks_listen,
            pools,
            shutdown_grace,
        })
    }
}

impl Settings {
    /// Every webhook secret file named is there (what `serve` needs; `hooks install` writes
    /// the file, so it does not ask).
    pub fn check_webhook_secrets(&self) -> Result<(), ConfigError> {
        for c in self.connectors.values() {
            if let (Some(path), None) = (&c.webhook_secret_file, &c.webhook_secret) {
                return Err(invalid(
                    format!("webhook secret of connector {}", c.id.as_str()),
                    format!(
                        "{} does not exist; run `gitlab-worker hooks install --url PUBLIC_URL` (it writes a new secret there and registers GitLab's webhook), or put the webhook's secret token in it",
                        path.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The auditors' page token from `UI_TOKEN_FILE` (`None` when none is configured).
    pub fn ui_token(&self) -> Result<Option<gitlab_connector::Secret>, ConfigError> {
        let Some(path) = &self.ui_token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "UI_TOKEN_FILE",
                format!("{} cannot be read: {e}", path.display()),
            )
        })?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(invalid(
                "UI_TOKEN_FILE",
                format!(
                    "{} holds {} characters; use a random token of at least 16 (e.g. `openssl rand -hex 32`)",
                    path.display(),
                    token.len()
                ),
            ));
        }
        Ok(Some(gitlab_connector::Secret::new(token.to_string())))
    }

    /// This process's spool folder inside `SPOOL_DIR`.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_root
            .join(format!("gitlab-worker-spool-{}", std::process::id()))
    }
}

/// The configuration file: `--config FILE`, else `GITLAB_WORKER_CONFIG`.
pub fn config_file(from_cli: Option<PathBuf>) -> Option<PathBuf> {
    from_cli.or_else(|| var("GITLAB_WORKER_CONFIG").map(PathBuf::from))
}

/// The log format: `--log-format`, else `LOG_FORMAT` (`pretty` or `json`; the logging module
/// picks by terminal when neither is set).
pub fn log_format(from_cli: Option<String>) -> Option<String> {
    from_cli.or_else(|| var("LOG_FORMAT"))
}

/// `RUST_LOG`: tracing filter directives (`info`, `gitlab_worker=debug,sqlx=warn`, …).
pub fn log_filter() -> Option<String> {
    var("RUST_LOG")
}

/// The address `gitlab-worker healthcheck` asks: `--addr`, else `HTTP_LISTEN`, else the default.
/// Read without the rest of the configuration: a container's healthcheck must not need it.
pub fn healthcheck_addr(from_cli: Option<String>) -> String {
    from_cli
        .or_else(|| var("HTTP_LISTEN"))
        .unwrap_or_else(|| defaults::HTTP_LISTEN.into())
}

/// The scope of `gitlab-worker sync`: `--scope`, else `GITLAB_SCOPE` (which also applies to a
/// connector of the configuration file that names no scope), else the connector's own.
pub fn sync_scope(from_cli: Option<String>) -> Option<String> {
    from_cli.or_else(|| var("GITLAB_SCOPE"))
}

/// The connectors of the configuration file, then the environment's.
fn connectors(
    file: Vec<FileConnector>,
    need_connector: bool,
) -> Result<BTreeMap<ConnectorId, ConnectorSettings>, ConfigError> {
    let mut connectors = BTreeMap::new();
    for (i, c) in file.into_iter().enumerate() {
        let c = c.into_settings(i)?;
        if connectors.contains_key(&c.id) {
            return Err(invalid(
                format!("connectors[{i}].id"),
                format!("connector id {:?} is declared twice", c.id.as_str()),
            ));
        }
        connectors.insert(c.id.clone(), c);
    }
    if var("GITLAB_URL").is_some() {
        let c = ConnectorSettings::from_env()?;
        if connectors.contains_key(&c.id) {
            return Err(invalid(
                "CONNECTOR_ID",
                format!(
                    "the environment's connector {:?} is also declared in the configuration file; give it another CONNECTOR_ID or remove one",
                    c.id.as_str()
                ),
            ));
        }
        connectors.insert(c.id.clone(), c);
    } else if need_connector && connectors.is_empty() {
        // The environment's message names GITLAB_URL, the usual first setting.
        ConnectorSettings::from_env()?;
    }

    Ok(connectors)
}

/// `UI_LISTEN` and `UI_TOKEN_FILE`: off loopback, the page is not served without a token.
fn ui_settings(
    listen_from_file: Option<String>,
    token_from_file: Option<PathBuf>,
) -> Result<(Option<SocketAddr>, Option<PathBuf>), ConfigError> {
    let listen = var("UI_LISTEN")
        .or(listen_from_file)
        .map(|text| {
            text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "UI_LISTEN",
                    format!("{text:?} is not an address:port such as 127.0.0.1:9466"),
                )
            })
        })
        .transpose()?;
    let token_file = var("UI_TOKEN_FILE").map(PathBuf::from).or(token_from_file);
    if let Some(addr) = listen
        && !addr.ip().is_loopback()
        && token_file.is_none()
    {
        return Err(ConfigError::Missing {
            name: "UI_TOKEN_FILE".into(),
            hint: "UI_LISTEN is not a loopback address, so the auditors' page needs a token: put one in a file (e.g. `openssl rand -hex 32 > ui.token; chmod 600 ui.token`) and set UI_TOKEN_FILE, or listen on 127.0.0.1",
        });
    }
    Ok((listen, token_file))
}

/// `HOOKS_LISTEN`: the receiver's address, which needs a connector with a webhook secret file.
fn hooks_listen(
    from_file: Option<String>,
    connectors: &BTreeMap<ConnectorId, ConnectorSettings>,
) -> Result<Option<SocketAddr>, ConfigError> {
    let hooks_listen = var("HOOKS_LISTEN")
        .or(from_file)
        .map(|text| {
            text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "HOOKS_LISTEN",
                    format!("{text:?} is not an address:port such as 127.0.0.1:9465"),
                )
            })
        })
        .transpose()?;
    if hooks_listen.is_some() && connectors.values().all(|c| c.webhook_secret_file.is_none()) {
        return Err(ConfigError::Missing {
            name: "GITLAB_WEBHOOK_SECRET_FILE".into(),
            hint: "HOOKS_LISTEN is set but no connector has a webhook secret: set GITLAB_WEBHOOK_SECRET_FILE (or a connector's webhook_secret_file), or unset HOOKS_LISTEN",
        });
    }
    Ok(hooks_listen)
}

/// The live-access intervals: `RECONCILE_INTERVAL_SECONDS`, `AUDIT_POLL_SECONDS` (0 = off) and
/// `HOOK_CHECK_INTERVAL_SECONDS`.
struct LiveIntervals {
    reconcile: Option<Duration>,
    audit_poll: Option<Duration>,
    hook_check: Duration,
}

impl LiveIntervals {
    fn load(fc: &FileConfig) -> Result<Self, ConfigError> {
        let reconcile_seconds = match var("RECONCILE_INTERVAL_SECONDS") {
            Some(v) if v.trim() == "0" => 0,
            Some(v) => positive::<u64>("RECONCILE_INTERVAL_SECONDS", &v, "seconds")?,
            None => fc
                .reconcile_interval_seconds
                .unwrap_or(defaults::RECONCILE_INTERVAL_SECONDS),
        };
        let hook_check_interval = Duration::from_secs(match var("HOOK_CHECK_INTERVAL_SECONDS") {
            Some(v) => positive::<u64>("HOOK_CHECK_INTERVAL_SECONDS", &v, "seconds")?,
            None => defaults::HOOK_CHECK_INTERVAL_SECONDS,
        });
        let audit_seconds = match var("AUDIT_POLL_SECONDS") {
            Some(v) if v.trim() == "0" => 0,
            Some(v) => positive::<u64>("AUDIT_POLL_SECONDS", &v, "seconds")?,
            None => defaults::AUDIT_POLL_SECONDS,
        };
        Ok(Self {
            reconcile: (reconcile_seconds > 0).then(|| Duration::from_secs(reconcile_seconds)),
            audit_poll: (audit_seconds > 0).then(|| Duration::from_secs(audit_seconds)),
            hook_check: hook_check_interval,
        })
    }
}

/// How the worker reaches NATS: the environment over the file.
fn nats_settings(fc: &FileConfig) -> Result<NatsSettings, ConfigError> {
    let subject_prefix = var("NATS_SUBJECT_PREFIX")
        .or_else(|| fc.nats_subject_prefix.clone())
        .unwrap_or_else(|| defaults::SUBJECT_PREFIX.into());
    if subject_prefix.is_empty()
        || !subject_prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(invalid(
            "NATS_SUBJECT_PREFIX",
            format!(
                "{subject_prefix:?} may only contain letters, digits, '-' and '_' (it names subjects and streams)"
            ),
        ));
    }
    let secret_env = |name: &str| var(name).map(|v| Secret::new(v.trim()));
    let password = match &fc.nats_password_env {
        Some(v) => Some(secret_env(v).ok_or_else(|| {
            invalid(
                "nats_password_env",
                format!("the environment variable {v} is not set"),
            )
        })?),
        None => match (secret_env("NATS_PASSWORD"), var("NATS_PASSWORD_FILE")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "NATS_PASSWORD_FILE",
                    "both NATS_PASSWORD and NATS_PASSWORD_FILE are set; keep one",
                ));
            }
            (Some(p), None) => Some(p),
            (None, Some(f)) => Some(read_token_file("NATS_PASSWORD_FILE".into(), Path::new(&f))?),
            (None, None) => None,
        },
    };
    let token = match &fc.nats_token_env {
        Some(v) => Some(secret_env(v).ok_or_else(|| {
            invalid(
                "nats_token_env",
                format!("the environment variable {v} is not set"),
            )
        })?),
        None => secret_env("NATS_TOKEN"),
    };
    let user = var("NATS_USER").or_else(|| fc.nats_user.clone());
    if user.is_some() != password.is_some() {
        return Err(invalid(
            "NATS_USER",
            "NATS_USER and NATS_PASSWORD go together; set both or neither",
        ));
    }
    let creds_file = var("NATS_CREDS_FILE")
        .map(PathBuf::from)
        .or_else(|| fc.nats_creds_file.clone());
    if let Some(p) = &creds_file
        && !p.is_file()
    {
        return Err(invalid(
            "NATS_CREDS_FILE",
            format!("{} is not a readable file", p.display()),
        ));
    }
    let path_setting = |env: &str, file: Option<PathBuf>| var(env).map(PathBuf::from).or(file);
    let nats = NatsSettings {
        url: var("NATS_URL")
            .or_else(|| fc.nats_url.clone())
            .unwrap_or_else(|| defaults::NATS_URL.into()),
        creds_file,
        user,
        password,
        token,
        tls_ca_file: path_setting("NATS_TLS_CA_FILE", fc.nats_tls_ca_file.clone()),
        tls_cert_file: path_setting("NATS_TLS_CERT_FILE", fc.nats_tls_cert_file.clone()),
        tls_key_file: path_setting("NATS_TLS_KEY_FILE", fc.nats_tls_key_file.clone()),
        subject_prefix,
        ack_wait: Duration::from_secs(match var("NATS_ACK_WAIT_SECONDS") {
            Some(v) => positive::<u64>("NATS_ACK_WAIT_SECONDS", &v, "seconds")?,
            None => fc.ack_wait_seconds.unwrap_or(defaults::ACK_WAIT_SECONDS),
        }),
        max_deliver: match var("NATS_MAX_DELIVER") {
            Some(v) => positive::<i64>("NATS_MAX_DELIVER", &v, "deliveries")?,
            None => fc.max_deliver.unwrap_or(defaults::MAX_DELIVER),
        },
        max_job_bytes: match var("NATS_MAX_JOB_BYTES") {
            Some(v) => positive::<usize>("NATS_MAX_JOB_BYTES", &v, "bytes")?,
            None => fc.max_job_bytes.unwrap_or(defaults::MAX_JOB_BYTES),
        },
        stream_replicas: match var("NATS_STREAM_REPLICAS") {
            Some(v) => positive::<usize>("NATS_STREAM_REPLICAS", &v, "replicas")?,
            None => fc.stream_replicas.unwrap_or(defaults::STREAM_REPLICAS),
        },
    };
    if !(1..=defaults::MAX_STREAM_REPLICAS).contains(&nats.stream_replicas) {
        return Err(invalid(
            "NATS_STREAM_REPLICAS",
            format!(
                "{} is outside 1..={} (JetStream's limit; 3 on a three-server cluster)",
                nats.stream_replicas,
                defaults::MAX_STREAM_REPLICAS
            ),
        ));
    }
    if nats.tls_cert_file.is_some() != nats.tls_key_file.is_some() {
        return Err(invalid(
            "NATS_TLS_CERT_FILE",
            "a client certificate needs its key: set NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE together",
        ));
    }
    Ok(nats)
}

/// How many jobs of each kind of work one worker runs at once: provisioning (grant, revoke,
/// invite, deprovision, rotate_token) and syncs (sync, reconcile) are pulled by consumers of
/// their own, so a grant never waits behind long syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPools {
    pub provision: usize,
    pub sync: usize,
}

/// `WORKER_CONCURRENCY_PROVISION` (or the older `WORKER_CONCURRENCY`) and
/// `WORKER_CONCURRENCY_SYNC`, each in 1..=256.
fn job_pools(fc: &FileConfig) -> Result<JobPools, ConfigError> {
    let pool = |name: &'static str, env: Option<String>, file: Option<usize>, default: usize| {
        let n = match env {
            Some(v) => positive::<usize>(name, &v, "jobs")?,
            None => file.unwrap_or(default),
        };
        if n == 0 || n > defaults::MAX_CONCURRENCY {
            return Err(invalid(
                name,
                format!("{n} is outside 1..={}", defaults::MAX_CONCURRENCY),
            ));
        }
        Ok(n)
    };
    let (provision_name, provision_env) = match var("WORKER_CONCURRENCY_PROVISION") {
        Some(v) => ("WORKER_CONCURRENCY_PROVISION", Some(v)),
        None => ("WORKER_CONCURRENCY", var("WORKER_CONCURRENCY")),
    };
    Ok(JobPools {
        provision: pool(
            provision_name,
            provision_env,
            fc.concurrency_provision.or(fc.concurrency),
            defaults::PROVISION_CONCURRENCY,
        )?,
        sync: pool(
            "WORKER_CONCURRENCY_SYNC",
            var("WORKER_CONCURRENCY_SYNC"),
            fc.concurrency_sync,
            defaults::SYNC_JOB_CONCURRENCY,
        )?,
    })
}
