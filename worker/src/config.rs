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
//! concurrency = 8
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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gitlab_connector::client::{BaseUrl, ClientConfig, RateLimitConfig};
use gitlab_connector::{InstanceKind, Secret};
use serde::Deserialize;

use crate::ids::ConnectorId;
use crate::policy::{AccountAction, Policy};
use crate::redact::redact_url;

/// Every default of every setting.
pub mod defaults {
    pub const CONNECTOR_ID: &str = "default";
    pub const DATABASE_URL: &str = "sqlite://gitlab-connector.db?mode=rwc";
    pub const NATS_URL: &str = "nats://127.0.0.1:4222";
    pub const SUBJECT_PREFIX: &str = "gitlab";
    pub const HTTP_LISTEN: &str = "127.0.0.1:9464";
    pub const CONCURRENCY: usize = 4;
    pub const MAX_CONCURRENCY: usize = 256;
    pub const ACK_WAIT_SECONDS: u64 = 30;
    pub const MAX_DELIVER: i64 = 8;
    pub const SHUTDOWN_GRACE_SECONDS: u64 = 25;
    pub const TOKEN_CHECK_INTERVAL_SECONDS: u64 = 3600;
    pub const ROTATE_DAYS_LEFT: u32 = 7;
    pub const SYNC_CONCURRENCY: usize = 16;
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set: {hint}")]
    Missing {
        name: Cow<'static, str>,
        hint: &'static str,
    },
    #[error("{name}: {message}")]
    Invalid {
        name: Cow<'static, str>,
        message: String,
    },
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

fn invalid(name: impl Into<Cow<'static, str>>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        message: message.into(),
    }
}

/// Where a connector's token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// `GITLAB_TOKEN` or `token_env`: cannot be rotated.
    Env(&'static str),
    EnvNamed(String),
    /// `GITLAB_TOKEN_FILE` or `token_file`: rewritten atomically on rotation.
    File(PathBuf),
}

/// One GitLab instance and its credential.
#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    pub id: ConnectorId,
    pub url: BaseUrl,
    pub token: Secret,
    pub token_source: TokenSource,
    /// Where the token came from, when it is a file (required for rotation).
    pub token_file: Option<PathBuf>,
    pub scope: Option<String>,
    pub rate_limit_per_minute: Option<u32>,
    /// Overrides the kind detected from the URL (GitLab Dedicated, proxies).
    pub instance: Option<InstanceKind>,
    /// Self-managed with an admin token: a grant to an unknown email may create the user.
    pub allow_create_users: bool,
    /// `serve` rotates a file-backed token when fewer days than this are left (0: never).
    pub rotate_when_days_left: u32,
    /// What jobs may do on this connector (docs/security.md).
    pub policy: Policy,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn read_token_file(name: Cow<'static, str>, path: &Path) -> Result<Secret, ConfigError> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| invalid(name.clone(), format!("cannot read {}: {e}", path.display())))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(invalid(
            name,
            format!(
                "{} is empty; put the service account's token in it",
                path.display()
            ),
        ));
    }
    Ok(Secret::new(t))
}

fn connector_id(name: Cow<'static, str>, id: &str) -> Result<ConnectorId, ConfigError> {
    ConnectorId::parse(id).map_err(|e| invalid(name, e.to_string()))
}

fn parse_instance(name: Cow<'static, str>, v: &str) -> Result<InstanceKind, ConfigError> {
    match v.trim() {
        "gitlab-com" => Ok(InstanceKind::GitlabCom),
        "self-managed" => Ok(InstanceKind::SelfManaged),
        other => Err(invalid(
            name,
            format!("{other:?} is not `gitlab-com` or `self-managed`"),
        )),
    }
}

fn positive<T: std::str::FromStr + PartialOrd + Default>(
    name: &'static str,
    v: &str,
    what: &str,
) -> Result<T, ConfigError> {
    v.trim()
        .parse::<T>()
        .ok()
        .filter(|n| *n > T::default())
        .ok_or_else(|| {
            invalid(
                name,
                format!("{v:?} is not a positive whole number of {what}"),
            )
        })
}

impl ConnectorSettings {
    /// The connector the environment describes (`GITLAB_URL`, `GITLAB_TOKEN[_FILE]`, ...).
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = var("GITLAB_URL").ok_or(ConfigError::Missing {
            name: "GITLAB_URL".into(),
            hint: "set it to the instance's base URL, e.g. https://gitlab.com or https://git.example.com/gitlab",
        })?;
        let url = BaseUrl::parse(&url).map_err(|e| invalid("GITLAB_URL", e.to_string()))?;
        let (token, token_source) = match (var("GITLAB_TOKEN"), var("GITLAB_TOKEN_FILE")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "GITLAB_TOKEN",
                    "both GITLAB_TOKEN and GITLAB_TOKEN_FILE are set; keep one (a file is needed for token rotation)",
                ));
            }
            (Some(t), None) => (Secret::new(t.trim()), TokenSource::Env("GITLAB_TOKEN")),
            (None, Some(f)) => {
                let path = PathBuf::from(f);
                (
                    read_token_file("GITLAB_TOKEN_FILE".into(), &path)?,
                    TokenSource::File(path),
                )
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    name: "GITLAB_TOKEN".into(),
                    hint: "set GITLAB_TOKEN, or GITLAB_TOKEN_FILE to a file holding the service account's personal access token",
                });
            }
        };
        let rate_limit_per_minute = var("GITLAB_RATE_LIMIT_PER_MINUTE")
            .map(|v| positive::<u32>("GITLAB_RATE_LIMIT_PER_MINUTE", &v, "requests per minute"))
            .transpose()?;
        let id = connector_id(
            "CONNECTOR_ID".into(),
            &var("CONNECTOR_ID").unwrap_or_else(|| defaults::CONNECTOR_ID.into()),
        )?;
        let instance = var("GITLAB_INSTANCE")
            .map(|v| parse_instance("GITLAB_INSTANCE".into(), &v))
            .transpose()?;
        let allow_create_users = match var("GITLAB_ALLOW_CREATE_USERS").as_deref() {
            None | Some("false") | Some("0") => false,
            Some("true") | Some("1") => true,
            Some(other) => {
                return Err(invalid(
                    "GITLAB_ALLOW_CREATE_USERS",
                    format!("{other:?} is not true or false"),
                ));
            }
        };
        let rotate_when_days_left = match var("GITLAB_ROTATE_DAYS_LEFT") {
            Some(v) => v.trim().parse::<u32>().map_err(|_| {
                invalid(
                    "GITLAB_ROTATE_DAYS_LEFT",
                    format!("{v:?} is not a whole number of days (0 turns automatic rotation off)"),
                )
            })?,
            None => defaults::ROTATE_DAYS_LEFT,
        };
        let policy = PolicyText {
            max_grant_level: var("GITLAB_MAX_GRANT_LEVEL"),
            max_jit_seconds: var("GITLAB_MAX_JIT_SECONDS"),
            allow_permanent_grants: var("GITLAB_ALLOW_PERMANENT_GRANTS"),
            account_actions: var("GITLAB_ACCOUNT_ACTIONS"),
            protected_users: var("GITLAB_PROTECTED_USERS"),
        }
        .parse(|k| env_name(k).into())?;
        Ok(Self {
            policy,
            rotate_when_days_left,
            id,
            url,
            token,
            token_file: match &token_source {
                TokenSource::File(p) => Some(p.clone()),
                _ => None,
            },
            token_source,
            scope: var("GITLAB_SCOPE"),
            rate_limit_per_minute,
            instance,
            allow_create_users,
        })
    }

    /// The client configuration: the instance kind's rate-limit preset and the configured cap.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new(self.url.clone(), self.token.clone());
        if let Some(kind) = self.instance {
            c.instance = kind;
        }
        let preset = match c.instance {
            InstanceKind::GitlabCom => RateLimitConfig::gitlab_com(),
            InstanceKind::SelfManaged => RateLimitConfig::self_managed(),
        };
        c.rate_limit = match self.rate_limit_per_minute {
            Some(n) => preset.with_per_minute(Some(n)),
            None => preset,
        };
        c
    }
}

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
}

/// Everything `serve`, `run-job`, `sync` and `demo` need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub connectors: BTreeMap<ConnectorId, ConnectorSettings>,
    pub database_url: String,
    pub nats: NatsSettings,
    pub http_listen: SocketAddr,
    pub concurrency: usize,
    /// How long SIGTERM waits for jobs in flight before handing them back to NATS.
    pub shutdown_grace: Duration,
    /// How often `serve` checks the tokens' expiry for automatic rotation.
    pub token_check_interval: Duration,
    /// `SPOOL_DIR`: where snapshots are written before they are stored (each process uses a
    /// folder of its own inside it).
    pub spool_root: PathBuf,
    /// `SYNC_CONCURRENCY`: GitLab requests in flight during `gitlab-worker sync`.
    pub sync_concurrency: usize,
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
    concurrency: Option<usize>,
    ack_wait_seconds: Option<u64>,
    max_deliver: Option<i64>,
    shutdown_grace_seconds: Option<u64>,
    #[serde(default)]
    connectors: Vec<FileConnector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnector {
    id: String,
    url: String,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    scope: Option<String>,
    rate_limit_per_minute: Option<u32>,
    instance: Option<String>,
    #[serde(default)]
    allow_create_users: bool,
    rotate_when_days_left: Option<u32>,
    max_grant_level: Option<toml::Value>,
    max_jit_seconds: Option<u64>,
    allow_permanent_grants: Option<bool>,
    account_actions: Option<Vec<String>>,
    protected_users: Option<Vec<String>>,
}

impl FileConnector {
    fn into_settings(self, i: usize) -> Result<ConnectorSettings, ConfigError> {
        let at = |k: &str| -> Cow<'static, str> { format!("connectors[{i}].{k}").into() };
        let id = connector_id(at("id"), &self.id)?;
        let url = BaseUrl::parse(&self.url).map_err(|e| invalid(at("url"), e.to_string()))?;
        let (token, token_source) = match (self.token_file, self.token_env) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    at("token_file"),
                    "both token_file and token_env are set; keep one (a file is needed for token rotation)",
                ));
            }
            (Some(p), None) => (read_token_file(at("token_file"), &p)?, TokenSource::File(p)),
            (None, Some(v)) => {
                let t = var(&v).ok_or_else(|| {
                    invalid(
                        at("token_env"),
                        format!("the environment variable {v} is not set or empty"),
                    )
                })?;
                (Secret::new(t.trim()), TokenSource::EnvNamed(v))
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    name: at("token_file"),
                    hint: "give token_file (a file holding the token; needed for rotation) or token_env (the name of an environment variable); tokens are never written into the config file",
                });
            }
        };
        if self.rate_limit_per_minute == Some(0) {
            return Err(invalid(
                at("rate_limit_per_minute"),
                "must be a positive number of requests per minute",
            ));
        }
        let instance = self
            .instance
            .map(|v| parse_instance(at("instance"), &v))
            .transpose()?;
        let policy = PolicyText {
            max_grant_level: self.max_grant_level.map(|v| match v {
                toml::Value::String(s) => s,
                other => other.to_string(),
            }),
            max_jit_seconds: self.max_jit_seconds.map(|n| n.to_string()),
            allow_permanent_grants: self.allow_permanent_grants.map(|b| b.to_string()),
            account_actions: self.account_actions.map(|a| a.join(",")),
            protected_users: self.protected_users.map(|u| u.join(",")),
        }
        .parse(|k| at(k))?;
        Ok(ConnectorSettings {
            policy,
            id,
            url,
            token,
            token_file: match &token_source {
                TokenSource::File(p) => Some(p.clone()),
                _ => None,
            },
            token_source,
            scope: self.scope.filter(|s| !s.trim().is_empty()),
            rate_limit_per_minute: self.rate_limit_per_minute,
            instance,
            allow_create_users: self.allow_create_users,
            rotate_when_days_left: self
                .rotate_when_days_left
                .unwrap_or(defaults::ROTATE_DAYS_LEFT),
        })
    }
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
        let concurrency = match var("WORKER_CONCURRENCY") {
            Some(v) => positive::<usize>("WORKER_CONCURRENCY", &v, "jobs")?,
            None => fc.concurrency.unwrap_or(defaults::CONCURRENCY),
        };
        if concurrency == 0 || concurrency > defaults::MAX_CONCURRENCY {
            return Err(invalid(
                "WORKER_CONCURRENCY",
                format!("{concurrency} is outside 1..={}", defaults::MAX_CONCURRENCY),
            ));
        }
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
        Ok(Self {
            spool_root,
            sync_concurrency,
            token_check_interval,
            connectors,
            database_url,
            nats,
            http_listen,
            concurrency,
            shutdown_grace,
        })
    }
}

impl Settings {
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
    };
    if nats.tls_cert_file.is_some() != nats.tls_key_file.is_some() {
        return Err(invalid(
            "NATS_TLS_CERT_FILE",
            "a client certificate needs its key: set NATS_TLS_CERT_FILE and NATS_TLS_KEY_FILE together",
        ));
    }
    Ok(nats)
}

/// A connector's policy settings as text, from the environment or the TOML file.
struct PolicyText {
    max_grant_level: Option<String>,
    max_jit_seconds: Option<String>,
    allow_permanent_grants: Option<String>,
    account_actions: Option<String>,
    protected_users: Option<String>,
}

/// The environment variable of a policy key.
fn env_name(key: &str) -> &'static str {
    match key {
        "max_grant_level" => "GITLAB_MAX_GRANT_LEVEL",
        "max_jit_seconds" => "GITLAB_MAX_JIT_SECONDS",
        "allow_permanent_grants" => "GITLAB_ALLOW_PERMANENT_GRANTS",
        "account_actions" => "GITLAB_ACCOUNT_ACTIONS",
        _ => "GITLAB_PROTECTED_USERS",
    }
}

impl PolicyText {
    /// `name` gives the setting's name in messages (a variable, or `connectors[i].key`).
    fn parse(self, name: impl Fn(&str) -> Cow<'static, str>) -> Result<Policy, ConfigError> {
        let mut p = Policy::default();
        if let Some(v) = self.max_grant_level {
            let level = v
                .trim()
                .parse::<gitlab_connector::api::AccessLevel>()
                .ok()
                .filter(|l| [5, 10, 15, 20, 25, 30, 40, 50].contains(&l.0))
                .ok_or_else(|| {
                    invalid(
                        name("max_grant_level"),
                        format!("{v:?} is not a level a grant can give: guest, reporter, developer, maintainer, owner (or 10 … 50)"),
                    )
                })?;
            p.max_grant_level = level;
        }
        if let Some(v) = self.max_jit_seconds {
            p.max_jit_seconds =
                v.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        invalid(
                            name("max_jit_seconds"),
                            format!("{v:?} is not a positive whole number of seconds"),
                        )
                    })?;
        }
        if let Some(v) = self.allow_permanent_grants {
            p.allow_permanent_grants = match v.trim() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(invalid(
                        name("allow_permanent_grants"),
                        format!("{other:?} is not true or false"),
                    ));
                }
            };
        }
        if let Some(v) = self.account_actions {
            let mut actions = std::collections::BTreeSet::new();
            for a in v.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                actions.insert(AccountAction::parse(a).ok_or_else(|| {
                    invalid(
                        name("account_actions"),
                        format!(
                            "{a:?} is not an account action; use block, deactivate, ban, delete"
                        ),
                    )
                })?);
            }
            p.account_actions = actions;
        }
        if let Some(v) = self.protected_users {
            p.protected_users = v
                .split(',')
                .map(|u| u.trim().to_lowercase())
                .filter(|u| !u.is_empty())
                .collect();
        }
        Ok(p)
    }
}

impl Settings {
    /// Transports that send secrets in the clear: an `http://` GitLab (the token travels in
    /// every request) or NATS without TLS to a host that is not this machine. Logged at start.
    pub fn cleartext_warnings(&self) -> Vec<String> {
        let gitlab: Vec<(&str, String)> = self
            .connectors
            .values()
            .map(|c| (c.id.as_str(), c.url.to_string()))
            .collect();
        let tls = self.nats.url.starts_with("tls://") || self.nats.tls_ca_file.is_some();
        cleartext_warnings(&gitlab, &self.nats.url, tls)
    }
}

fn cleartext_warnings(gitlab: &[(&str, String)], nats: &str, nats_tls: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (id, url) in gitlab {
        if url.starts_with("http://") {
            out.push(format!(
                "connector {id:?}: GITLAB_URL {} is plain http: the token is sent unencrypted; use https",
                redact_url(url)
            ));
        }
    }
    if !nats_tls && !is_loopback_url(nats) {
        out.push(format!(
            "NATS_URL {} is not TLS and not on this machine: jobs, results and NATS credentials cross the network unencrypted; use tls://",
            redact_url(nats)
        ));
    }
    out
}

/// Whether every host of a (possibly comma-separated) NATS URL is on this machine.
fn is_loopback_url(urls: &str) -> bool {
    urls.split(',').all(|u| {
        let rest = u.trim().split("://").nth(1).unwrap_or(u.trim());
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.split(']').next())
            .unwrap_or_else(|| host.split(':').next().unwrap_or(""));
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

#[cfg(test)]
mod tests {
    use super::{cleartext_warnings, is_loopback_url};

    #[test]
    fn cleartext_transports_are_warned_about_without_their_secrets() {
        let w = cleartext_warnings(
            &[
                ("corp", "http://gitlab.internal".into()),
                ("com", "https://gitlab.com".into()),
            ],
            "nats://u:natssecret@nats.example.com:4222",
            false,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("corp") && w[0].contains("plain http"));
        assert!(w[1].contains("not TLS") && !w[1].contains("natssecret"));
        assert!(cleartext_warnings(&[], "nats://127.0.0.1:4222", false).is_empty());
        assert!(cleartext_warnings(&[], "nats://nats.example.com:4222", true).is_empty());
    }

    #[test]
    fn only_this_machine_counts_as_loopback() {
        assert!(is_loopback_url("nats://127.0.0.1:4222"));
        assert!(is_loopback_url("nats://u:p@localhost:4222"));
        assert!(is_loopback_url("nats://[::1]:4222"));
        assert!(!is_loopback_url("nats://nats.example.com:4222"));
        assert!(!is_loopback_url(
            "nats://127.0.0.1:4222,nats://10.0.0.2:4222"
        ));
    }
}
