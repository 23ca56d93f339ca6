//! `/groups/:id/hooks`, `/hooks` (system hooks) and the delivery of queued webhook events, with
//! GitLab's headers:
//! `X-Gitlab-Event`, `X-Gitlab-Token`, `X-Gitlab-Instance`, `X-Gitlab-Webhook-UUID` (new per
//! attempt), `X-Gitlab-Event-UUID` and `Idempotency-Key` (both stable across the retries of one
//! event). An attempt waits 10 s for an answer (GitLab.com's timeout); a failed one is retried
//! up to three times. Every failed attempt counts towards the hook's pause (`crate::hooks`);
//! the fault controls (`PUT /_sim/hook_faults`) drop, duplicate, delay and reorder deliveries.

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
use crate::hooks::{Delivery, GroupHook, HookHealth, SystemHook};

/// One attempt to deliver one event.
#[derive(Debug, Clone, Serialize)]
pub struct HookAttempt {
    pub hook_id: u64,
    pub event: &'static str,
    pub event_uuid: String,
    pub idempotency_key: String,
    pub webhook_uuid: String,
    /// The receiver's status, or `None` when it did not answer in time or at all (or the
    /// delivery was not sent).
    pub status: Option<u16>,
    /// Not sent: dropped by the fault controls, or the hook is paused or disabled.
    pub dropped: bool,
    pub payload: serde_json::Value,
}

const TIMEOUT: Duration = Duration::from_secs(10);
const ATTEMPTS: u32 = 4;

fn with_health(mut v: serde_json::Value, id: u64, w: &crate::model::World) -> serde_json::Value {
    let health = w.hook_health.get(&id).cloned().unwrap_or_default();
    v["alert_status"] = json!(health.alert_status(w.now()));
    v["disabled_until"] = json!(health.disabled_until.filter(|_| !health.disabled));
    v
}

fn hook_json(h: &GroupHook, w: &crate::model::World) -> serde_json::Value {
    with_health(serde_json::to_value(h).unwrap_or_default(), h.id, w)
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
        .map(|h| hook_json(h, &w))
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
    let body = hook_json(&hook, &w);
    w.group_hooks.insert(hook.id, hook);
    json_response(StatusCode::CREATED, body)
}

/// `PUT /groups/:id/hooks/:hook_id`: the fields given change; editing a paused or disabled
/// hook enables it again (GitLab's behaviour).
pub(crate) async fn edit(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path((id, hook_id)): Path<(String, String)>,
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
    let hook_id = hook_id.parse::<u64>().unwrap_or(0);
    let mut w = sim.world.write().unwrap();
    let Some(h) = w.group_hooks.get_mut(&hook_id).filter(|h| h.group_id == g) else {
        return not_found("Hook");
    };
    if let Some(url) = p.str("url") {
        if !url.starts_with("http") {
            return bad_request("url is not an http(s) URL");
        }
        h.url = url;
    }
    if p.has("token") {
        h.token = p.str("token");
    }
    let flag = |k: &str, current: bool| p.str(k).map_or(current, |v| super::is_true(&v));
    h.member_events = flag("member_events", h.member_events);
    h.subgroup_events = flag("subgroup_events", h.subgroup_events);
    h.project_events = flag("project_events", h.project_events);
    h.push_events = flag("push_events", h.push_events);
    h.enable_ssl_verification = flag("enable_ssl_verification", h.enable_ssl_verification);
    let h = h.clone();
    w.hook_health.remove(&hook_id);
    json_response(StatusCode::OK, hook_json(&h, &w))
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

pub(crate) async fn show(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path((id, hook_id)): Path<(String, String)>,
) -> Response {
    let g = match owned_group(&sim, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let w = sim.world.read().unwrap();
    match w
        .group_hooks
        .get(&hook_id.parse::<u64>().unwrap_or(0))
        .filter(|h| h.group_id == g)
    {
        Some(h) => json_response(StatusCode::OK, hook_json(h, &w)),
        None => not_found("Hook"),
    }
}

/// System hooks are an administrator's, and self-managed only.
fn admin_only(sim: &Sim, c: &Caller) -> Result<(), Response> {
    if !c.is_admin || sim.world.read().unwrap().mode == crate::model::Mode::GitlabCom {
        return Err(super::forbidden());
    }
    Ok(())
}

fn system_json(h: &SystemHook, w: &crate::model::World) -> serde_json::Value {
    with_health(serde_json::to_value(h).unwrap_or_default(), h.id, w)
}

pub(crate) async fn list_system(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
) -> Response {
    if let Err(r) = admin_only(&sim, &c) {
        return r;
    }
    let w = sim.world.read().unwrap();
    let hooks: Vec<_> = w
        .system_hooks
        .values()
        .map(|h| system_json(h, &w))
        .collect();
    json_response(StatusCode::OK, json!(hooks))
}

pub(crate) async fn create_system(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(r) = admin_only(&sim, &c) {
        return r;
    }
    let p = match Params::parse(q.as_deref(), &headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(url) = p.str("url").filter(|u| u.starts_with("http")) else {
        return bad_request("url is missing or not an http(s) URL");
    };
    let flag = |k: &str, default: bool| p.str(k).map_or(default, |v| super::is_true(&v));
    let mut w = sim.world.write().unwrap();
    let hook = SystemHook {
        id: w.next_id(),
        url,
        token: p.str("token"),
        push_events: flag("push_events", true),
        tag_push_events: flag("tag_push_events", false),
        merge_requests_events: flag("merge_requests_events", false),
        repository_update_events: flag("repository_update_events", false),
        enable_ssl_verification: flag("enable_ssl_verification", true),
        created_at: w.now(),
    };
    let body = system_json(&hook, &w);
    w.system_hooks.insert(hook.id, hook);
    json_response(StatusCode::CREATED, body)
}

pub(crate) async fn remove_system(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(hook_id): Path<String>,
) -> Response {
    if let Err(r) = admin_only(&sim, &c) {
        return r;
    }
    let mut w = sim.world.write().unwrap();
    match w.system_hooks.remove(&hook_id.parse::<u64>().unwrap_or(0)) {
        Some(_) => no_content(),
        None => not_found("Hook"),
    }
}

/// Sends every queued delivery, each in a task of its own (GitLab's are Sidekiq jobs: their
/// order is not guaranteed either), through the fault controls.
pub(crate) fn send_queued(sim: &Arc<Sim>) {
    if sim.world.read().unwrap().hook_queue.is_empty() {
        return;
    }
    let queued = std::mem::take(&mut sim.world.write().unwrap().hook_queue);
    let faults = sim.config.lock().unwrap().hook_faults.clone();
    for d in queued {
        let (drop, duplicate, delay) = {
            let mut rng = sim.rng.lock().unwrap();
            let delay = match (faults.delay_ms, faults.reorder) {
                (0, _) => 0,
                (ms, true) => rng.u64(0..=ms),
                (ms, false) => ms,
            };
            (rng.f64() < faults.drop, rng.f64() < faults.duplicate, delay)
        };
        let ids = DeliveryIds {
            event_uuid: uuid(sim),
            idempotency_key: uuid(sim),
        };
        if drop {
            log(sim, &d, &ids, String::new(), None, true);
            continue;
        }
        let copies = if duplicate { 2 } else { 1 };
        for _ in 0..copies {
            let (sim, d, ids) = (sim.clone(), d.clone(), ids.clone());
            tokio::spawn(async move {
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                deliver(sim, d, ids).await;
            });
        }
    }
}

/// What stays the same across the retries of one delivery.
#[derive(Clone)]
struct DeliveryIds {
    event_uuid: String,
    idempotency_key: String,
}

fn log(
    sim: &Sim,
    d: &Delivery,
    ids: &DeliveryIds,
    webhook_uuid: String,
    status: Option<u16>,
    dropped: bool,
) {
    sim.hook_log.lock().unwrap().push(HookAttempt {
        hook_id: d.hook_id,
        event: d.event,
        event_uuid: ids.event_uuid.clone(),
        idempotency_key: ids.idempotency_key.clone(),
        webhook_uuid,
        status,
        dropped,
        payload: d.payload.clone(),
    });
    sim.hook_attempted.notify_waiters();
}

/// Notes an attempt's outcome in the hook's health; true when it may go on being retried.
fn note(sim: &Sim, hook_id: u64, ok: bool) -> bool {
    let mut w = sim.world.write().unwrap();
    let now = w.now();
    let h: &mut HookHealth = w.hook_health.entry(hook_id).or_default();
    if ok {
        h.succeeded();
    } else {
        h.failed(now);
    }
    h.sends(now)
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

async fn deliver(sim: Arc<Sim>, d: Delivery, ids: DeliveryIds) {
    let body = d.payload.to_string();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        let sends = {
            let w = sim.world.read().unwrap();
            w.hook_health
                .get(&d.hook_id)
                .is_none_or(|h| h.sends(w.now()))
        };
        if !sends {
            log(&sim, &d, &ids, String::new(), None, true);
            return;
        }
        let webhook_uuid = uuid(&sim);
        let mut headers = vec![
            ("Content-Type", "application/json".to_string()),
            ("User-Agent", "GitLab/17.6.0".to_string()),
            ("X-Gitlab-Event", d.event.to_string()),
            ("X-Gitlab-Instance", sim.base_url().to_string()),
            ("X-Gitlab-Webhook-UUID", webhook_uuid.clone()),
            ("X-Gitlab-Event-UUID", ids.event_uuid.clone()),
            ("Idempotency-Key", ids.idempotency_key.clone()),
        ];
        if let Some(t) = &d.token {
            headers.push(("X-Gitlab-Token", t.clone()));
        }
        let status = tokio::time::timeout(TIMEOUT, post(&d.url, &headers, &body))
            .await
            .ok()
            .flatten();
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let may_retry = note(&sim, d.hook_id, ok);
        log(&sim, &d, &ids, webhook_uuid, status, false);
        if ok || !may_retry {
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
