//! What every part of the configuration shares: the defaults, the error, and the readers of
//! single values.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use gitlab_connector::{InstanceKind, Secret};

use crate::ids::ConnectorId;

/// Every default of every setting.
pub mod defaults {
    pub const CONNECTOR_ID: &str = "default";
    pub const DATABASE_URL: &str = "sqlite://gitlab-connector.db?mode=rwc";
    pub const NATS_URL: &str = "nats://127.0.0.1:4222";
    pub const SUBJECT_PREFIX: &str = "gitlab";
    pub const HTTP_LISTEN: &str = "127.0.0.1:9464";
    /// Provisioning jobs at once (`WORKER_CONCURRENCY_PROVISION`).
    pub const PROVISION_CONCURRENCY: usize = 4;
    /// Syncs and reconciles at once (`WORKER_CONCURRENCY_SYNC`).
    pub const SYNC_JOB_CONCURRENCY: usize = 2;
    pub const STREAM_REPLICAS: usize = 1;
    pub const MAX_STREAM_REPLICAS: usize = 5;
    pub const MAX_CONCURRENCY: usize = 256;
    pub const ACK_WAIT_SECONDS: u64 = 30;
    pub const MAX_DELIVER: i64 = 8;
    pub const SHUTDOWN_GRACE_SECONDS: u64 = 25;
    pub const TOKEN_CHECK_INTERVAL_SECONDS: u64 = 3600;
    pub const ROTATE_DAYS_LEFT: u32 = 7;
    pub const SYNC_CONCURRENCY: usize = 16;
    pub const MAX_WAIT_SECONDS: u64 = 600;
    pub const MAX_JOB_BYTES: usize = 256 * 1024;
    pub const MAX_RESPONSE_BYTES: u64 = 32 * 1024 * 1024;
    pub const RETENTION_DAYS: u64 = 400;
    /// A full sync of each connector with hooks, to find what hooks cannot tell.
    pub const RECONCILE_INTERVAL_SECONDS: u64 = 3600;
    pub const HOOK_CHECK_INTERVAL_SECONDS: u64 = 300;
    pub const AUDIT_POLL_SECONDS: u64 = 300;
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

pub(super) fn invalid(
    name: impl Into<Cow<'static, str>>,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        name: name.into(),
        message: message.into(),
    }
}

pub(super) fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

pub(super) fn read_token_file(name: Cow<'static, str>, path: &Path) -> Result<Secret, ConfigError> {
    read_secret_file(name, path, "put the service account's token in it")
}

/// A secret kept in a file (a token, a webhook secret), trimmed; an empty file is an error
/// with `hint` saying what belongs in it.
pub(super) fn read_secret_file(
    name: Cow<'static, str>,
    path: &Path,
    hint: &str,
) -> Result<Secret, ConfigError> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| invalid(name.clone(), format!("cannot read {}: {e}", path.display())))?;
    let t = t.trim();
    if t.is_empty() {
        return Err(invalid(
            name,
            format!("{} is empty; {hint}", path.display()),
        ));
    }
    Ok(Secret::new(t))
}

pub(super) fn connector_id(name: Cow<'static, str>, id: &str) -> Result<ConnectorId, ConfigError> {
    ConnectorId::parse(id).map_err(|e| invalid(name, e.to_string()))
}

pub(super) fn parse_instance(
    name: Cow<'static, str>,
    v: &str,
) -> Result<InstanceKind, ConfigError> {
    match v.trim() {
        "gitlab-com" => Ok(InstanceKind::GitlabCom),
        "self-managed" => Ok(InstanceKind::SelfManaged),
        other => Err(invalid(
            name,
            format!("{other:?} is not `gitlab-com` or `self-managed`"),
        )),
    }
}

pub(super) fn positive<T: std::str::FromStr + PartialOrd + Default>(
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

/// How long a job of each kind may run before it is stopped (`JOB_TIMEOUT_SECONDS` for every
/// kind, `JOB_TIMEOUT_SECONDS_<KIND>` for one). Generous for a sync (a large scope on
/// GitLab.com takes an hour of its rate limit), tight for provisioning (a handful of requests).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct JobTimeouts {
    pub sync: Duration,
    pub grant: Duration,
    pub revoke: Duration,
    pub invite: Duration,
    pub deprovision: Duration,
    pub rotate_token: Duration,
}

impl Default for JobTimeouts {
    fn default() -> Self {
        let provision = Duration::from_secs(300);
        Self {
            sync: Duration::from_secs(6 * 3600),
            grant: provision,
            revoke: provision,
            invite: provision,
            deprovision: Duration::from_secs(1800),
            rotate_token: provision,
        }
    }
}

impl JobTimeouts {
    /// Each kind with the variable that sets its timeout alone.
    pub const KINDS: [(&'static str, &'static str); 6] = [
        ("sync", "JOB_TIMEOUT_SECONDS_SYNC"),
        ("grant", "JOB_TIMEOUT_SECONDS_GRANT"),
        ("revoke", "JOB_TIMEOUT_SECONDS_REVOKE"),
        ("invite", "JOB_TIMEOUT_SECONDS_INVITE"),
        ("deprovision", "JOB_TIMEOUT_SECONDS_DEPROVISION"),
        ("rotate_token", "JOB_TIMEOUT_SECONDS_ROTATE_TOKEN"),
    ];

    pub fn for_kind(&self, kind: &str) -> Duration {
        match kind {
            "sync" | "reconcile" => self.sync,
            "grant" => self.grant,
            "revoke" => self.revoke,
            "invite" => self.invite,
            "deprovision" => self.deprovision,
            _ => self.rotate_token,
        }
    }

    fn slot(&mut self, kind: &str) -> Option<&mut Duration> {
        Some(match kind {
            "sync" => &mut self.sync,
            "grant" => &mut self.grant,
            "revoke" => &mut self.revoke,
            "invite" => &mut self.invite,
            "deprovision" => &mut self.deprovision,
            "rotate_token" => &mut self.rotate_token,
            _ => return None,
        })
    }

    /// The defaults, then `JOB_TIMEOUT_SECONDS`, then each `JOB_TIMEOUT_SECONDS_<KIND>`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut t = Self::default();
        if let Some(v) = var("JOB_TIMEOUT_SECONDS") {
            let all = Duration::from_secs(positive::<u64>("JOB_TIMEOUT_SECONDS", &v, "seconds")?);
            for (k, _) in Self::KINDS {
                if let Some(s) = t.slot(k) {
                    *s = all;
                }
            }
        }
        for (k, name) in Self::KINDS {
            if let Some(v) = var(name) {
                let secs = positive::<u64>(name, &v, "seconds")?;
                if let Some(s) = t.slot(k) {
                    *s = Duration::from_secs(secs);
                }
            }
        }
        Ok(t)
    }
}
