//! `/groups/:id/hooks` and the delivery of queued webhook events, with GitLab's headers:
//! `X-Gitlab-Event`, `X-Gitlab-Token`, `X-Gitlab-Instance`, `X-Gitlab-Webhook-UUID` (new per
//! attempt), `X-Gitlab-Event-UUID` and `Idempotency-Key` (both stable across the retries of one
//! event). An attempt waits 10 s for an answer (GitLab.com's timeout); a failed one is retried
//! up to three times.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Extension, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::members::{may_manage, resolve};
use super::{Caller, Params, Sim, bad_request, json_response, no_content, not_found};
use crate::hooks::{Delivery, GroupHook};

/// One attempt to deliver one event.
#[derive(Debug, Clone, Serialize)]
pub struct HookAttempt {
    pub hook_id: u64,
    pub event: &'static str,
    pub event_uuid: String,
    pub idempotency_key: String,
    pub webhook_uuid: String,
    /// The receiver's status, or `None` when it did not answer in time or at all.
    pub status: Option<u16>,
    pub payload: serde_json::Value,
}

const TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 4;

fn hook_json(h: &GroupHook) -> serde_json::Value {
    let mut v = serde_json::to_value(h).unwrap_or_default();
    v["alert_status"] = json!("executable");
    v["disabled_until"] = json!(null);
    v
}

/// Only a group's owners (and administrators) manage its hooks.
fn owned_group(sim: &Sim, c: &Caller, id: &str) -> Result<u64, Response> {
    let w = sim.world.read().unwrap();
    let r = resolve::<false>(&w, c, id)?;
    may_manage(&w, c, r, 50)?;
    match r {
        crate::model::Resource::Group(g) => Ok(g),
        crate::model::Resource::Project(_) => Err(not_found("Group")),
    }
}

pub(crate) async fn list(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let g = match owned_group(&sim, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let w = sim.world.read().unwrap();
    let hooks: Vec<_> = w
        .group_hooks
        .values()
        .filter(|h| h.group_id == g)
        .map(hook_json)
        .collect();
    json_response(StatusCode::OK, json!(hooks))
}

pub(crate) async fn create(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let g = match owned_group(&sim, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let p = match Params::parse(q.as_deref(), &headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(url) = p.str("url").filter(|u| u.starts_with("http")) else {
        return bad_request("url is missing or not an http(s) URL");
    };
    let flag = |k: &str, default: bool| p.str(k).map_or(default, |v| super::is_true(&v));
    let mut w = sim.world.write().unwrap();
    let hook = GroupHook {
        id: w.next_id(),
        group_id: g,
        url,
        token: p.str("token"),
        member_events: flag("member_events", false),
        subgroup_events: flag("subgroup_events", false),
        project_events: flag("project_events", false),
        push_events: flag("push_events", true),
        enable_ssl_verification: flag("enable_ssl_verification", true),
        created_at: w.now(),
    };
    let body = hook_json(&hook);
    w.group_hooks.insert(hook.id, hook);
    json_response(StatusCode::CREATED, body)
}

pub(crate) async fn remove(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path((id, hook_id)): Path<(String, String)>,
) -> Response {
    let g = match owned_group(&sim, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let mut w = sim.world.write().unwrap();
    let hook_id = hook_id.parse::<u64>().unwrap_or(0);
    if w.group_hooks.get(&hook_id).is_none_or(|h| h.group_id != g) {
        return not_found("Hook");
    }
    w.group_hooks.remove(&hook_id);
    no_content()
}

/// Sends every queued delivery, each in a task of its own (GitLab's are Sidekiq jobs: their
/// order is not guaranteed either).
pub(crate) fn send_queued(sim: &Arc<Sim>) {
    if sim.world.read().unwrap().hook_queue.is_empty() {
        return;
    }
    let queued = std::mem::take(&mut sim.world.write().unwrap().hook_queue);
    for d in queued {
        tokio::spawn(deliver(sim.clone(), d));
    }
}

fn uuid(sim: &Sim) -> String {
    let mut rng = sim.rng.lock().unwrap();
    let hex: String = (0..32)
        .map(|_| char::from_digit(rng.u32(0..16), 16).expect("a hex digit"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

async fn deliver(sim: Arc<Sim>, d: Delivery) {
    let event_uuid = uuid(&sim);
    let idempotency_key = uuid(&sim);
    let body = d.payload.to_string();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        let webhook_uuid = uuid(&sim);
        let mut headers = vec![
            ("Content-Type", "application/json".to_string()),
            ("User-Agent", "GitLab/17.6.0".to_string()),
            ("X-Gitlab-Event", d.event.to_string()),
            ("X-Gitlab-Instance", sim.base_url().to_string()),
            ("X-Gitlab-Webhook-UUID", webhook_uuid.clone()),
            ("X-Gitlab-Event-UUID", event_uuid.clone()),
            ("Idempotency-Key", idempotency_key.clone()),
        ];
        if let Some(t) = &d.token {
            headers.push(("X-Gitlab-Token", t.clone()));
        }
        let status = tokio::time::timeout(TIMEOUT, post(&d.url, &headers, &body))
            .await
            .ok()
            .flatten();
        sim.hook_log.lock().unwrap().push(HookAttempt {
            hook_id: d.hook_id,
            event: d.event,
            event_uuid: event_uuid.clone(),
            idempotency_key: idempotency_key.clone(),
            webhook_uuid,
            status,
            payload: d.payload.clone(),
        });
        sim.hook_attempted.notify_waiters();
        if status.is_some_and(|s| (200..300).contains(&s)) {
            return;
        }
    }
}

/// A plain-HTTP POST (the simulator delivers to test receivers on loopback); the status.
async fn post(url: &str, headers: &[(&str, String)], body: &str) -> Option<u16> {
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let mut stream = tokio::net::TcpStream::connect(host).await.ok()?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
}
