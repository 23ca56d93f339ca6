//! One typed error for everything the GitLab client can report.
//!
//! GitLab reuses status codes for different situations (a 409 is either "Member already exists",
//! an idempotent success for a grant, or "Resource lock", a transient failure), so errors are
//! classified on status *and* body. Every variant carries the route template (never a URL, which
//! could carry user data, and never a token) and GitLab's own message.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde_json::Value;

/// `METHOD /route/:template` of a request, used in errors, logs and statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub method: &'static str,
    pub template: &'static str,
}

impl Route {
    pub const fn new(method: &'static str, template: &'static str) -> Self {
        Self { method, template }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.template)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    Connect,
    Timeout,
    /// The connection broke while sending or reading the body.
    Interrupted,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{route}: GitLab says the member already exists ({message})")]
    AlreadyMember { route: Route, message: String },

    #[error("{route}: GitLab could not obtain a lock ({message}); this is transient, retry later")]
    ResourceLock { route: Route, message: String },

    #[error("{route}: conflict ({message})")]
    Conflict { route: Route, message: String },

    #[error(
        "{route}: not found or not visible to this token ({message}); check the id or path and that the token's user is a member with enough access"
    )]
    NotFoundOrHidden { route: Route, message: String },

    #[error(
        "{route}: the token lacks the required scope ({message}); create a token with the `api` scope (or `read_api` for sync only)"
    )]
    InsufficientScope { route: Route, message: String },

    #[error(
        "{route}: forbidden ({message}); the token's user lacks the role or admin rights this needs"
    )]
    Forbidden { route: Route, message: String },

    #[error(
        "{route}: the GitLab token has expired ({message}); create or rotate a token and update GITLAB_TOKEN or GITLAB_TOKEN_FILE"
    )]
    TokenExpired { route: Route, message: String },

    #[error(
        "{route}: the GitLab token was revoked ({message}); create a new token and update GITLAB_TOKEN or GITLAB_TOKEN_FILE"
    )]
    TokenRevoked { route: Route, message: String },

    #[error(
        "{route}: unauthorized ({message}); the token is missing or unknown to this GitLab, check GITLAB_TOKEN and GITLAB_URL"
    )]
    Unauthorized { route: Route, message: String },

    #[error("{route}: GitLab rejected the request: {message}")]
    Validation {
        route: Route,
        message: String,
        /// Field → errors, when GitLab answered `{"message": {"field": ["..."]}}`.
        fields: BTreeMap<String, Vec<String>>,
    },

    #[error("{route}: rate limited by GitLab ({message}){}", fmt_wait(.retry_after))]
    RateLimited {
        route: Route,
        retry_after: Option<Duration>,
        message: String,
    },

    #[error("{route}: GitLab answered 201 but reported errors: {}", fmt_map(.errors))]
    InvitationErrors {
        route: Route,
        /// Address (email or username) → GitLab's message.
        errors: BTreeMap<String, String>,
    },

    #[error(
        "{route}: offset pagination reached GitLab's maximum offset ({message}); this list does not support keyset pagination"
    )]
    OffsetLimit { route: Route, message: String },

    #[error("{route}: not allowed ({message})")]
    NotAllowed { route: Route, message: String },

    #[error(
        "{route}: the response is larger than {limit} bytes and was not read; raise GITLAB_MAX_RESPONSE_BYTES if this GitLab really sends such pages"
    )]
    ResponseTooLarge { route: Route, limit: u64 },

    #[error(
        "{route}: the list's next page ({page}) was read before: GitLab's pagination loops, so the read stopped (a proxy or a GitLab bug); the list is incomplete"
    )]
    PageLoop { route: Route, page: String },

    #[error(
        "{route}: the list goes on past {read} items, more than its headers allow ({limit}); the read stopped and the list is incomplete"
    )]
    ListTooLong { route: Route, read: u64, limit: u64 },

    #[error("{route}: GitLab answered {status} ({message})")]
    UnexpectedStatus {
        route: Route,
        status: u16,
        message: String,
    },

    #[error("{route}: GitLab server error {status} ({message}){}; retry later", fmt_wait(.retry_after))]
    Server {
        route: Route,
        status: u16,
        message: String,
        /// A 503's `Retry-After`.
        retry_after: Option<Duration>,
    },

    #[error("{route}: could not reach GitLab ({message}); check GITLAB_URL and the network")]
    Transport {
        route: Route,
        kind: TransportKind,
        message: String,
    },

    #[error("{route}: could not read GitLab's response ({message})")]
    Decode { route: Route, message: String },

    #[error("invalid GitLab URL {url:?}: {reason}")]
    InvalidBaseUrl { url: String, reason: String },

    #[error("invalid client configuration: {0}")]
    InvalidConfig(String),

    #[error(
        "{route}: GitLab's limit on this group or project is taken by earlier requests until {}; the job is handed back until then",
        fmt_time(.at)
    )]
    SlotLater { route: Route, at: SystemTime },

    #[error("the request's time budget of {budget:?} ran out for {route}: {last}")]
    BudgetExhausted {
        route: Route,
        budget: Duration,
        last: Box<Error>,
    },
}

fn fmt_wait(d: &Option<Duration>) -> String {
    match d {
        Some(d) => format!("; retry after {}s", d.as_secs()),
        None => String::new(),
    }
}

fn fmt_time(t: &SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(*t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn fmt_map(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    /// The route the error came from, when it came from a request.
    pub fn route(&self) -> Option<Route> {
        use Error::*;
        match self {
            AlreadyMember { route, .. }
            | ResourceLock { route, .. }
            | Conflict { route, .. }
            | NotFoundOrHidden { route, .. }
            | InsufficientScope { route, .. }
            | Forbidden { route, .. }
            | TokenExpired { route, .. }
            | TokenRevoked { route, .. }
            | Unauthorized { route, .. }
            | Validation { route, .. }
            | RateLimited { route, .. }
            | InvitationErrors { route, .. }
            | OffsetLimit { route, .. }
            | NotAllowed { route, .. }
            | ResponseTooLarge { route, .. }
            | PageLoop { route, .. }
            | ListTooLong { route, .. }
            | UnexpectedStatus { route, .. }
            | Server { route, .. }
            | Transport { route, .. }
            | Decode { route, .. }
            | SlotLater { route, .. }
            | BudgetExhausted { route, .. } => Some(*route),
            InvalidBaseUrl { .. } | InvalidConfig(_) => None,
        }
    }

    /// Could the same request succeed if sent again later, unchanged?
    pub fn is_transient(&self) -> bool {
        match self {
            Error::ResourceLock { .. }
            | Error::RateLimited { .. }
            | Error::SlotLater { .. }
            | Error::Server { .. }
            | Error::Transport { .. } => true,
            Error::BudgetExhausted { last, .. } => last.is_transient(),
            _ => false,
        }
    }

    /// How long GitLab asked us to wait, when it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::RateLimited { retry_after, .. } | Error::Server { retry_after, .. } => {
                *retry_after
            }
            Error::BudgetExhausted { last, .. } => last.retry_after(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFoundOrHidden { .. })
    }

    /// A short stable code for results and metrics.
    pub fn code(&self) -> &'static str {
        use Error::*;
        match self {
            AlreadyMember { .. } => "already_member",
            ResourceLock { .. } => "resource_lock",
            Conflict { .. } => "conflict",
            NotFoundOrHidden { .. } => "not_found",
            InsufficientScope { .. } => "insufficient_scope",
            Forbidden { .. } => "forbidden",
            TokenExpired { .. } => "token_expired",
            TokenRevoked { .. } => "token_revoked",
            Unauthorized { .. } => "unauthorized",
            Validation { .. } => "validation",
            RateLimited { .. } => "rate_limited",
            SlotLater { .. } => "slot_later",
            InvitationErrors { .. } => "invitation_errors",
            OffsetLimit { .. } => "offset_limit",
            NotAllowed { .. } => "not_allowed",
            ResponseTooLarge { .. } => "response_too_large",
            PageLoop { .. } => "page_loop",
            ListTooLong { .. } => "list_too_long",
            UnexpectedStatus { .. } => "unexpected_status",
            Server { .. } => "server_error",
            Transport { .. } => "transport",
            Decode { .. } => "decode",
            InvalidBaseUrl { .. } => "invalid_base_url",
            InvalidConfig(_) => "invalid_config",
            BudgetExhausted { last, .. } => last.code(),
        }
    }
}

/// GitLab's message from an error body: `{"message": "..."}`, `{"message": {...}}`,
/// `{"error": "...", "error_description": "..."}` or plain text (Rack::Attack's `Retry later`).
pub(crate) fn body_message(body: &[u8]) -> (String, Option<Value>) {
    const MAX: usize = 500;
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let text = match &parsed {
        Some(Value::Object(map)) => {
            if let Some(desc) = map.get("error_description").and_then(Value::as_str) {
                desc.to_string()
            } else if let Some(m) = map.get("message") {
                match m {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            } else if let Some(e) = map.get("error") {
                match e {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                }
            } else {
                Value::Object(map.clone()).to_string()
            }
        }
        Some(other) => other.to_string(),
        None => String::from_utf8_lossy(body).trim().to_string(),
    };
    let mut text = crate::secret::scrub(&text, None);
    if text.len() > MAX {
        let mut cut = MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    (text, parsed)
}

/// Classifies a non-success response. `retry_after` is the server's requested wait, if any.
pub(crate) fn classify(
    route: Route,
    status: StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
) -> Error {
    let (message, parsed) = body_message(body);
    let obj = parsed.as_ref().and_then(Value::as_object);
    let oauth_error = obj.and_then(|o| o.get("error")).and_then(Value::as_str);
    match status.as_u16() {
        400 => {
            let fields = obj
                .and_then(|o| o.get("message"))
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            let errs = match v {
                                Value::Array(a) => a
                                    .iter()
                                    .map(|e| e.as_str().map_or_else(|| e.to_string(), String::from))
                                    .collect(),
                                Value::String(s) => vec![s.clone()],
                                other => vec![other.to_string()],
                            };
                            (k.clone(), errs)
                        })
                        .collect()
                })
                .unwrap_or_default();
            Error::Validation {
                route,
                message,
                fields,
            }
        }
        401 => {
            let lower = message.to_ascii_lowercase();
            if oauth_error == Some("invalid_token") && lower.contains("expired") {
                Error::TokenExpired { route, message }
            } else if oauth_error == Some("invalid_token") && lower.contains("revoked") {
                Error::TokenRevoked { route, message }
            } else {
                Error::Unauthorized { route, message }
            }
        }
        403 => {
            if oauth_error == Some("insufficient_scope") {
                let scope = obj
                    .and_then(|o| o.get("scope"))
                    .and_then(Value::as_str)
                    .map(|s| format!("; accepted scopes: {s}"))
                    .unwrap_or_default();
                Error::InsufficientScope {
                    route,
                    message: format!("{message}{scope}"),
                }
            } else {
                Error::Forbidden { route, message }
            }
        }
        404 => Error::NotFoundOrHidden { route, message },
        405 => {
            let lower = message.to_ascii_lowercase();
            if lower.contains("maximum allowed offset") || lower.contains("keyset") {
                Error::OffsetLimit { route, message }
            } else {
                Error::NotAllowed { route, message }
            }
        }
        409 => {
            let lower = message.to_ascii_lowercase();
            if lower.contains("resource lock") {
                Error::ResourceLock { route, message }
            } else if lower.contains("member already exists") {
                Error::AlreadyMember { route, message }
            } else {
                Error::Conflict { route, message }
            }
        }
        429 => Error::RateLimited {
            route,
            retry_after,
            message,
        },
        s if s >= 500 => Error::Server {
            route,
            status: s,
            message,
            retry_after,
        },
        s => Error::UnexpectedStatus {
            route,
            status: s,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Route = Route::new("GET", "/groups/:id/members");

    #[test]
    fn conflicts_are_told_apart_by_body() {
        let lock = classify(
            R,
            StatusCode::CONFLICT,
            br#"{"message":"409 Conflict: Resource lock"}"#,
            None,
        );
        assert!(matches!(lock, Error::ResourceLock { .. }));
        assert!(lock.is_transient());
        let exists = classify(
            R,
            StatusCode::CONFLICT,
            br#"{"message":"Member already exists"}"#,
            None,
        );
        assert!(matches!(exists, Error::AlreadyMember { .. }));
        assert!(!exists.is_transient());
    }

    #[test]
    fn validation_keeps_the_field_map() {
        let e = classify(
            R,
            StatusCode::BAD_REQUEST,
            br#"{"message":{"access_level":["should be greater than or equal to Owner inherited membership from group Gitlab Org"]}}"#,
            None,
        );
        match e {
            Error::Validation { fields, .. } => {
                assert!(fields["access_level"][0].starts_with("should be greater"))
            }
            other => panic!("{other:?}"),
        }
        let grape = classify(
            R,
            StatusCode::BAD_REQUEST,
            br#"{"error":"access_level does not have a valid value"}"#,
            None,
        );
        assert!(
            grape
                .to_string()
                .contains("access_level does not have a valid value")
        );
    }

    #[test]
    fn plain_text_bodies_are_kept() {
        let e = classify(R, StatusCode::TOO_MANY_REQUESTS, b"Retry later\n", None);
        assert!(matches!(e, Error::RateLimited { ref message, .. } if message == "Retry later"));
    }

    #[test]
    fn token_shaped_text_in_a_body_never_reaches_the_message() {
        let e = classify(
            R,
            StatusCode::BAD_GATEWAY,
            b"<html>upstream said: PRIVATE-TOKEN glpat-FAKE0abcdef rejected</html>",
            None,
        );
        let text = e.to_string();
        assert!(!text.contains("glpat-FAKE0abc"), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
}
