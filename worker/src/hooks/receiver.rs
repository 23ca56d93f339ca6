//! The webhook receiver (`HOOKS_LISTEN`): `POST /hooks/gitlab/<connector>`.
//!
//! It only checks and keeps: the secret in `X-Gitlab-Token` (compared in constant time; wrong
//! or missing is 401 and nothing is kept), a body of at most 1 MiB (else 413) that is a JSON
//! object, and then the delivery goes into the stream `<P>_HOOKS` as `<p>.hooks.<connector>`.
//! It answers 200 only once JetStream acknowledged it, with a message id GitLab keeps across
//! its retries (`Idempotency-Key`), so a delivery GitLab sends twice is stored once. It never
//! calls GitLab and answers in milliseconds (GitLab.com waits 10 s, then counts a failure).
//! Events it does not know are kept and counted; what they mean is the processor's business.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap as NatsHeaders;
use async_nats::jetstream;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gitlab_connector::Secret;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::ConnectorId;
use crate::subjects::{Subjects, msg_id};

/// The largest delivery kept (GitLab's member and project payloads are a few KiB).
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// How long JetStream may take to acknowledge a delivery before GitLab is told to retry.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// `X-Gitlab-Event` values the event processor reads; any other is kept and counted as
/// `unknown` (a bounded label, whatever a sender puts in the header).
pub const KNOWN_EVENTS: &[&str] = &[
    "Member Hook",
    "Subgroup Hook",
    "Project Hook",
    "System Hook",
];

#[derive(Clone)]
pub struct Receiver {
    pub js: jetstream::Context,
    pub subjects: Subjects,
    /// The connectors that take webhooks, with their secrets.
    pub secrets: Arc<BTreeMap<ConnectorId, HookSecret>>,
}

/// A connector's webhook secret, read again from its file when a token does not match and the
/// file changed since (so `hooks install` on a running worker takes effect at once).
pub struct HookSecret {
    file: Option<std::path::PathBuf>,
    current: std::sync::RwLock<(Secret, Option<std::time::SystemTime>)>,
}

impl HookSecret {
    pub fn new(secret: Secret, file: Option<std::path::PathBuf>) -> Self {
        let modified = file.as_deref().and_then(modified);
        Self {
            file,
            current: std::sync::RwLock::new((secret, modified)),
        }
    }

    fn equals(&self, given: &[u8]) -> bool {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        bool::from(given.ct_eq(current.0.expose().as_bytes()))
    }

    /// Compares in constant time; on a mismatch, once more with the file's new secret if the
    /// file changed.
    pub fn matches(&self, given: &[u8]) -> bool {
        if self.equals(given) {
            return true;
        }
        let Some(file) = &self.file else {
            return false;
        };
        let now = modified(file);
        let changed = {
            let current = self.current.read().unwrap_or_else(|e| e.into_inner());
            now.is_some() && now != current.1
        };
        if !changed {
            return false;
        }
        match std::fs::read_to_string(file) {
            Ok(text) if !text.trim().is_empty() => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) =
                    (Secret::new(text.trim()), now);
                tracing::info!(file = %file.display(), "webhook secret read again: the file changed");
                self.equals(given)
            }
            _ => false,
        }
    }
}

fn modified(p: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

pub fn router(r: Receiver) -> Router {
    Router::new()
        .route("/hooks/gitlab/{connector}", post(receive))
        .with_state(r)
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn refuse(status: StatusCode, connector: &str, outcome: &'static str, error: &str) -> Response {
    metrics::counter!("gitlab_worker_hooks_received_total", "connector" => connector.to_string(), "event" => "-", "outcome" => outcome).increment(1);
    answer(status, json!({ "error": error }))
}

/// A header as text when it is short printable ASCII (it goes into NATS headers and logs).
fn header<'h>(headers: &'h HeaderMap, name: &str, max: usize) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= max && v.bytes().all(|b| (0x20..0x7f).contains(&b)))
}

/// An identifier GitLab sends (`Idempotency-Key`, an event UUID): letters, digits, `-_.:`.
fn token_header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    header(headers, name, 128).filter(|v| {
        v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    })
}

/// The delivery's message id: stable across GitLab's retries of it.
fn delivery_key(headers: &HeaderMap, body: &[u8]) -> String {
    if let Some(key) = token_header(headers, "idempotency-key") {
        return format!("key:{key}");
    }
    let digest = gitlab_connector::snapshot::hex(&Sha256::digest(body));
    match token_header(headers, "x-gitlab-event-uuid") {
        Some(uuid) => format!("event:{uuid}:{digest}"),
        None => format!("body:{digest}"),
    }
}

/// The connector a delivery is for, when it takes hooks and the delivery carries its secret.
#[allow(clippy::result_large_err)] // the refusal is the response itself, built once
fn authenticate<'r>(
    r: &'r Receiver,
    connector: &str,
    headers: &HeaderMap,
) -> Result<&'r ConnectorId, Response> {
    let Some((id, secret)) = ConnectorId::parse(connector)
        .ok()
        .and_then(|id| r.secrets.get_key_value(&id))
    else {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "-",
            "unknown_connector",
            "no webhook is configured for this connector (set its webhook_secret_file)",
        ));
    };
    let given = headers
        .get("x-gitlab-token")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !secret.matches(given) {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            id.as_str(),
            "unauthorized",
            "X-Gitlab-Token is missing or is not this connector's webhook secret",
        ));
    }
    Ok(id)
}

async fn receive(
    State(r): State<Receiver>,
    Path(connector): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let id = match authenticate(&r, &connector, &parts.headers) {
        Ok(id) => id,
        Err(refused) => return refused,
    };
    let connector = id.as_str();
    let declared = parts
        .headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            connector,
            "too_large",
            "the delivery is larger than 1 MiB",
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return too_large();
    }
    let Ok(body) = axum::body::to_bytes(Body::new(body), MAX_BODY_BYTES).await else {
        return too_large();
    };
    if !serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object()) {
        return refuse(
            StatusCode::BAD_REQUEST,
            connector,
            "invalid",
            "the body is not a JSON object",
        );
    }
    let event = header(&parts.headers, "x-gitlab-event", 100).unwrap_or("");
    let event_label = KNOWN_EVENTS
        .iter()
        .find(|k| **k == event)
        .copied()
        .unwrap_or("unknown");
    let mut nats_headers = NatsHeaders::new();
    for (from, to) in [
        ("x-gitlab-event", "Gitlab-Event"),
        ("x-gitlab-event-uuid", "Gitlab-Event-UUID"),
        ("x-gitlab-webhook-uuid", "Gitlab-Webhook-UUID"),
        ("x-gitlab-instance", "Gitlab-Instance"),
        ("idempotency-key", "Idempotency-Key"),
    ] {
        if let Some(v) = header(&parts.headers, from, 200) {
            nats_headers.insert(to, v);
        }
    }
    nats_headers.insert("Received-At", chrono::Utc::now().to_rfc3339().as_str());
    let key = msg_id::hook(connector, &delivery_key(&parts.headers, &body));
    let publish = jetstream::message::PublishMessage::build()
        .payload(body)
        .headers(nats_headers)
        .message_id(&key);
    let stored = async {
        let ack =
            r.js.send_publish(r.subjects.hooks(connector), publish)
                .await
                .map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())
    };
    let outcome = match tokio::time::timeout(ACK_TIMEOUT, stored).await {
        Ok(Ok(ack)) => Ok(ack.duplicate),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!(
            "no acknowledgement within {} s",
            ACK_TIMEOUT.as_secs()
        )),
    };
    let counted = |outcome: &'static str| {
        metrics::counter!("gitlab_worker_hooks_received_total", "connector" => connector.to_string(), "event" => event_label, "outcome" => outcome).increment(1);
    };
    match outcome {
        Ok(duplicate) => {
            counted(if duplicate { "duplicate" } else { "stored" });
            if event_label == "unknown" {
                tracing::info!(
                    connector,
                    event,
                    "a webhook event the worker does not read was kept"
                );
            }
            answer(
                StatusCode::OK,
                json!({"stored": true, "duplicate": duplicate}),
            )
        }
        Err(e) => {
            counted("unavailable");
            tracing::warn!(
                connector,
                "a webhook delivery could not be stored: {e}; GitLab retries it"
            );
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "the delivery could not be stored; retry later"}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_message_id_is_gitlabs_idempotency_key_else_the_event_and_the_body() {
        let body = br#"{"event_name":"user_add_to_group"}"#;
        let by_key = delivery_key(&headers(&[("idempotency-key", "abc-123")]), body);
        assert_eq!(by_key, "key:abc-123");
        let by_event = delivery_key(&headers(&[("x-gitlab-event-uuid", "e-1")]), body);
        assert!(by_event.starts_with("event:e-1:"), "{by_event}");
        let by_body = delivery_key(&HeaderMap::new(), body);
        assert!(by_body.starts_with("body:"));
        assert_ne!(by_body, delivery_key(&HeaderMap::new(), b"{}"));
        // A key with characters that do not belong in one is not trusted.
        let odd = delivery_key(&headers(&[("idempotency-key", "a b/c")]), body);
        assert!(odd.starts_with("body:"), "{odd}");
    }
}
