//! Configuration from the environment (interface.md section 2). Every error names the setting
//! and says what to do; no error prints a token.

use std::path::PathBuf;

use gitlab_connector::client::{BaseUrl, ClientConfig, RateLimitConfig};
use gitlab_connector::{InstanceKind, Secret};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is not set: {hint}")]
    Missing {
        name: &'static str,
        hint: &'static str,
    },
    #[error("{name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// One GitLab instance and its credential.
#[derive(Debug, Clone)]
pub struct ConnectorSettings {
    pub id: String,
    pub url: BaseUrl,
    pub token: Secret,
    /// Where the token came from, when it is a file (required for rotation).
    pub token_file: Option<PathBuf>,
    pub scope: Option<String>,
    pub rate_limit_per_minute: Option<u32>,
    /// `GITLAB_INSTANCE`: overrides the kind detected from the URL (GitLab Dedicated, proxies).
    pub instance: Option<InstanceKind>,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl ConnectorSettings {
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = var("GITLAB_URL").ok_or(ConfigError::Missing {
            name: "GITLAB_URL",
            hint: "set it to the instance's base URL, e.g. https://gitlab.com or https://git.example.com/gitlab",
        })?;
        let url = BaseUrl::parse(&url).map_err(|e| ConfigError::Invalid {
            name: "GITLAB_URL",
            message: e.to_string(),
        })?;
        let (token, token_file) = match (var("GITLAB_TOKEN"), var("GITLAB_TOKEN_FILE")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    name: "GITLAB_TOKEN",
                    message: "both GITLAB_TOKEN and GITLAB_TOKEN_FILE are set; keep one (a file is needed for token rotation)".into(),
                });
            }
            (Some(t), None) => (Secret::new(t.trim()), None),
            (None, Some(f)) => {
                let path = PathBuf::from(f);
                let t = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                    name: "GITLAB_TOKEN_FILE",
                    message: format!("cannot read {}: {e}", path.display()),
                })?;
                let t = t.trim().to_string();
                if t.is_empty() {
                    return Err(ConfigError::Invalid {
                        name: "GITLAB_TOKEN_FILE",
                        message: format!(
                            "{} is empty; put the service account's token in it",
                            path.display()
                        ),
                    });
                }
                (Secret::new(t), Some(path))
            }
            (None, None) => {
                return Err(ConfigError::Missing {
                    name: "GITLAB_TOKEN",
                    hint: "set GITLAB_TOKEN, or GITLAB_TOKEN_FILE to a file holding the service account's personal access token",
                });
            }
        };
        let rate_limit_per_minute =
            match var("GITLAB_RATE_LIMIT_PER_MINUTE") {
                None => None,
                Some(v) => Some(v.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(
                    || ConfigError::Invalid {
                        name: "GITLAB_RATE_LIMIT_PER_MINUTE",
                        message: format!(
                            "{v:?} is not a positive whole number of requests per minute"
                        ),
                    },
                )?),
            };
        let id = var("CONNECTOR_ID").unwrap_or_else(|| "default".into());
        if !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::Invalid {
                name: "CONNECTOR_ID",
                message: format!(
                    "{id:?} may only contain letters, digits, '-' and '_' (it is part of NATS subjects)"
                ),
            });
        }
        let instance = match var("GITLAB_INSTANCE").as_deref().map(str::trim) {
            None => None,
            Some("gitlab-com") => Some(InstanceKind::GitlabCom),
            Some("self-managed") => Some(InstanceKind::SelfManaged),
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "GITLAB_INSTANCE",
                    message: format!("{other:?} is not `gitlab-com` or `self-managed`"),
                });
            }
        };
        Ok(Self {
            id,
            url,
            token,
            token_file,
            scope: var("GITLAB_SCOPE"),
            rate_limit_per_minute,
            instance,
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
