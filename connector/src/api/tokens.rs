//! Personal access tokens: the connector's own, and users' (admin).

use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::BoxStream;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::{date_or_timestamp, lenient_timestamp};
use crate::client::{Client, ListSpec, PageItem, Repeat, Request};
use crate::error::Error;
use crate::secret::Secret;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonalAccessToken {
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub revoked: bool,
    #[serde(default)]
    pub active: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub user_id: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default, with = "lenient_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, with = "lenient_timestamp")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Tokens expire at 00:00 UTC on this date.
    #[serde(default, with = "date_or_timestamp")]
    pub expires_at: Option<NaiveDate>,
}

impl PageItem for PersonalAccessToken {}

impl PersonalAccessToken {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// The answer to a rotation: the new token's metadata and its value, shown only once.
/// No `Serialize`, and the value prints as `[redacted]`.
#[derive(Debug, Clone, Deserialize)]
pub struct RotatedToken {
    #[serde(flatten)]
    pub info: PersonalAccessToken,
    pub token: Secret,
}

impl Client {
    /// `GET /personal_access_tokens/self`: scopes and expiry of the token in use.
    pub async fn token_self(&self) -> Result<PersonalAccessToken, Error> {
        self.get_json(Request::get(
            "/personal_access_tokens/self",
            "/personal_access_tokens/self",
        ))
        .await
    }

    /// `POST /personal_access_tokens/self/rotate`. **Sent exactly once, never retried**: GitLab
    /// revokes the old token at once, and rotating an already revoked token revokes the whole
    /// token family (reuse detection). The caller must persist the new token before using it.
    pub async fn rotate_token_self(&self, expires_at: NaiveDate) -> Result<RotatedToken, Error> {
        let req = Request::new(
            Method::POST,
            "/personal_access_tokens/self/rotate",
            "/personal_access_tokens/self/rotate",
        )
        .json(json!({ "expires_at": expires_at.format("%Y-%m-%d").to_string() }));
        let route = req.route;
        self.execute(req, Repeat::Never).await?.json(route)
    }

    /// `GET /personal_access_tokens?user_id=N` (admin): a user's tokens.
    pub fn user_tokens(
        &self,
        user_id: u64,
    ) -> BoxStream<'static, Result<PersonalAccessToken, Error>> {
        let req = Request::get("/personal_access_tokens", "/personal_access_tokens")
            .query("user_id", user_id);
        crate::client::items_stream(self, ListSpec::offset(req))
    }

    /// `GET /personal_access_tokens/:id`.
    pub async fn token(&self, id: u64) -> Result<PersonalAccessToken, Error> {
        self.get_json(Request::get(
            "/personal_access_tokens/:id",
            format!("/personal_access_tokens/{id}"),
        ))
        .await
    }

    /// `DELETE /personal_access_tokens/:id`: revokes a token.
    pub async fn revoke_token(&self, id: u64) -> Result<(), Error> {
        let req = Request::new(
            Method::DELETE,
            "/personal_access_tokens/:id",
            format!("/personal_access_tokens/{id}"),
        );
        self.write_with_reread(
            req,
            |_| Ok(()),
            || async {
                match self.token(id).await {
                    Ok(t) => Ok((t.revoked || !t.active).then_some(())),
                    Err(e) if e.is_not_found() => Ok(Some(())),
                    Err(e) => Err(e),
                }
            },
        )
        .await
    }
}

/// What the connector may do with its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Capability {
    /// `api`: syncs and provisioning.
    Full,
    /// `read_api` only: syncs; provisioning jobs are refused.
    SyncOnly,
}

/// The result of checking the connector's own token.
#[derive(Debug, Clone)]
pub struct TokenCheck {
    pub token: PersonalAccessToken,
    pub capability: Capability,
    /// Days until the token expires (it stops working at 00:00 UTC that day).
    pub days_left: Option<i64>,
    /// Problems that do not stop the connector, said plainly.
    pub warnings: Vec<String>,
}

/// A token the connector cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum TokenProblem {
    #[error(transparent)]
    Rejected(#[from] Error),
    #[error(
        "the token is not active (revoked: {revoked}); create a new one and update GITLAB_TOKEN or GITLAB_TOKEN_FILE"
    )]
    Inactive { revoked: bool },
    #[error(
        "the token has the scopes [{scopes}]; a sync needs `read_api` (or `api`), provisioning needs `api`: create a token with `api`"
    )]
    Scopes { scopes: String },
}

/// Warn this many days before the token expires.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

impl Client {
    /// Checks the connector's token with `GET /personal_access_tokens/self`: active, scopes,
    /// expiry. An expired or revoked token is an error naming what to do.
    pub async fn check_token(&self, today: NaiveDate) -> Result<TokenCheck, TokenProblem> {
        let token = self.token_self().await?;
        if token.revoked || !token.active {
            return Err(TokenProblem::Inactive {
                revoked: token.revoked,
            });
        }
        let capability = if token.has_scope("api") {
            Capability::Full
        } else if token.has_scope("read_api") {
            Capability::SyncOnly
        } else {
            return Err(TokenProblem::Scopes {
                scopes: token.scopes.join(", "),
            });
        };
        let mut warnings = Vec::new();
        if capability == Capability::SyncOnly {
            warnings.push(
                "the token has `read_api` but not `api`: sync-only mode, provisioning jobs will be rejected".to_string(),
            );
        }
        let days_left = token.expires_at.map(|d| (d - today).num_days());
        if let (Some(days), Some(date)) = (days_left, token.expires_at)
            && days <= EXPIRY_WARNING_DAYS
        {
            warnings.push(format!(
                "the token expires on {date} ({days} days left): rotate it (a `rotate_token` job, with GITLAB_TOKEN_FILE) or replace it"
            ));
        }
        Ok(TokenCheck {
            token,
            capability,
            days_left,
            warnings,
        })
    }
}
