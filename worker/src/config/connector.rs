//! One connector's settings: from the environment (`GITLAB_URL`, …) or a `[[connectors]]` entry
//! of the TOML file, with its policy.

use std::borrow::Cow;
use std::path::PathBuf;

use gitlab_connector::client::{BaseUrl, ClientConfig, RateLimitConfig};
use gitlab_connector::{InstanceKind, Secret};
use serde::Deserialize;

use super::values::{
    ConfigError, connector_id, defaults, invalid, parse_instance, positive, read_secret_file,
    read_token_file, var,
};
use crate::ids::ConnectorId;
use crate::policy::{AccountAction, Policy};

/// Where a connector's token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// `GITLAB_TOKEN` or `token_env`: cannot be rotated.
    Env(&'static str),
    EnvNamed(String),
    /// `GITLAB_TOKEN_FILE` or `token_file`: rewritten atomically on rotation.
    File(PathBuf),
}

impl TokenSource {
    /// The token file, when the token comes from one.
    pub fn file(&self) -> Option<PathBuf> {
        match self {
            TokenSource::File(p) => Some(p.clone()),
            _ => None,
        }
    }
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
    /// What the client accepts from GitLab.
    pub limits: ClientLimits,
    /// The secret GitLab sends in `X-Gitlab-Token` with this connector's webhooks
    /// (`GITLAB_WEBHOOK_SECRET_FILE` / `webhook_secret_file`); without one the receiver
    /// refuses its hooks.
    pub webhook_secret: Option<Secret>,
    /// Where the webhook secret is kept (`hooks install` writes it). A file that does not
    /// exist yet leaves `webhook_secret` empty: `serve` refuses to start so, `hooks install`
    /// creates it.
    pub webhook_secret_file: Option<PathBuf>,
}

const WEBHOOK_SECRET_HINT: &str =
    "put the webhook's secret token in it (`gitlab-worker hooks install` writes one)";

/// The secret and its file; a file that does not exist yet is no error here (see
/// [`ConnectorSettings::webhook_secret_file`]).
fn webhook_secret(
    name: Cow<'static, str>,
    path: Option<PathBuf>,
) -> Result<(Option<Secret>, Option<PathBuf>), ConfigError> {
    match path {
        None => Ok((None, None)),
        Some(p) if !p.exists() => Ok((None, Some(p))),
        Some(p) => Ok((
            Some(read_secret_file(name, &p, WEBHOOK_SECRET_HINT)?),
            Some(p),
        )),
    }
}

/// Bounds on what a GitLab answer can make the client do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientLimits {
    /// The longest single wait GitLab may ask for (`Retry-After`, `RateLimit-Reset`) that is
    /// honoured in place; a longer one becomes `rate_limited` for the job layer.
    pub max_wait: std::time::Duration,
    /// The largest response body read.
    pub max_response_bytes: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_wait: std::time::Duration::from_secs(defaults::MAX_WAIT_SECONDS),
            max_response_bytes: defaults::MAX_RESPONSE_BYTES,
        }
    }
}

impl ClientLimits {
    fn parse(
        max_wait: Option<String>,
        max_response: Option<String>,
        name: impl Fn(&str) -> Cow<'static, str>,
    ) -> Result<Self, ConfigError> {
        let mut l = Self::default();
        if let Some(v) = max_wait {
            l.max_wait = std::time::Duration::from_secs(seconds(name("max_wait_seconds"), &v)?);
        }
        if let Some(v) = max_response {
            l.max_response_bytes = v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= 1024)
                .ok_or_else(|| {
                    invalid(
                        name("max_response_bytes"),
                        format!("{v:?} is not a number of bytes (1024 or more)"),
                    )
                })?;
        }
        Ok(l)
    }
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
        let limits = ClientLimits::parse(
            var("GITLAB_MAX_WAIT_SECONDS"),
            var("GITLAB_MAX_RESPONSE_BYTES"),
            |k| match k {
                "max_wait_seconds" => "GITLAB_MAX_WAIT_SECONDS".into(),
                _ => "GITLAB_MAX_RESPONSE_BYTES".into(),
            },
        )?;
        let (webhook_secret, webhook_secret_file) = webhook_secret(
            "GITLAB_WEBHOOK_SECRET_FILE".into(),
            var("GITLAB_WEBHOOK_SECRET_FILE").map(PathBuf::from),
        )?;
        Ok(Self {
            webhook_secret,
            webhook_secret_file,
            limits,
            policy,
            rotate_when_days_left,
            id,
            url,
            token,
            token_file: token_source.file(),
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
        c.retry.max_wait = self.limits.max_wait;
        c.max_response_bytes = self.limits.max_response_bytes;
        c
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConnector {
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
    max_wait_seconds: Option<u64>,
    max_response_bytes: Option<u64>,
    webhook_secret_file: Option<PathBuf>,
}

impl FileConnector {
    pub(super) fn into_settings(self, i: usize) -> Result<ConnectorSettings, ConfigError> {
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
        let limits = ClientLimits::parse(
            self.max_wait_seconds.map(|n| n.to_string()),
            self.max_response_bytes.map(|n| n.to_string()),
            |k| at(k),
        )?;
        let (webhook_secret, webhook_secret_file) =
            webhook_secret(at("webhook_secret_file"), self.webhook_secret_file)?;
        Ok(ConnectorSettings {
            webhook_secret,
            webhook_secret_file,
            limits,
            policy,
            id,
            url,
            token,
            token_file: token_source.file(),
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

/// A positive whole number of seconds.
fn seconds(name: Cow<'static, str>, v: &str) -> Result<u64, ConfigError> {
    v.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            invalid(
                name,
                format!("{v:?} is not a positive whole number of seconds"),
            )
        })
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
            p.max_jit_seconds = seconds(name("max_jit_seconds"), &v)?;
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
