//! The HTTP server: GitLab's REST v4 under `/api/v4`, test controls under `/_sim`.

mod admin;
mod audit;
mod auth;
mod groups;
pub mod hooks;
mod invitations;
mod limits;
mod members;
pub(crate) mod pages;
mod projects;
mod render;
mod tokens;
mod users;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::model::World;
pub use auth::Caller;
pub use limits::UserRateLimit;
pub(crate) use members::role_name;

/// Faults injected into `/api/v4` responses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fraction (0–1) of requests answered with 500, 502 or 503.
    pub error_rate: f64,
    /// Added to every response.
    pub latency_ms: u64,
    /// Fraction of requests whose connection drops mid-response.
    pub drop_rate: f64,
    /// Fraction of requests answered `409 Resource lock`.
    pub lock_rate: f64,
    /// Resources that always fail: `{"path": "/projects/42", "status": 403}` matches that path
    /// and everything below it (ids as GitLab's API paths use them, without `/api/v4`).
    pub rules: Vec<FaultRule>,
}

/// One resource that misbehaves. A rule with a `status` answers with it instead of the handler;
/// a rule without one lets the handler answer and then changes its response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultRule {
    pub path: String,
    #[serde(default)]
    pub status: Option<u16>,
    /// Only this method (`GET`, …); all when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Headers set on the response, replacing the handler's: `{"retry-after": "99999999999"}`,
    /// `{"ratelimit-reset": "-1"}`. `{self}` in a value becomes the request's own URL, so
    /// `{"link": "<{self}>; rel=\"next\""}` is a page whose next page is itself.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body replaced by this many bytes of a JSON array that never ends in time, streamed
    /// (the simulator does not hold it).
    #[serde(default)]
    pub body_bytes: Option<u64>,
}

impl FaultRule {
    /// `path` (and everything below it) always answers `status`.
    pub fn status(path: impl Into<String>, status: u16) -> Self {
        Self {
            path: path.into(),
            status: Some(status),
            ..Self::default()
        }
    }

    fn matches(&self, method: &Method, bare_path: &str) -> bool {
        let method_ok = self
            .method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
        method_ok
            && bare_path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The rule's changes to a response (its headers, its body).
    fn apply(&self, sim: &Sim, path: &str, mut resp: Response) -> Response {
        for (name, value) in &self.headers {
            let value = value.replace("{self}", &format!("{}/api/v4{path}", sim.base_url()));
            if let (Ok(n), Ok(v)) = (
                axum::http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                resp.headers_mut().insert(n, v);
            }
        }
        if let Some(n) = self.body_bytes {
            resp.headers_mut()
                .remove(axum::http::header::CONTENT_LENGTH);
            *resp.body_mut() = endless_array(n);
        }
        resp
    }
}

/// `n` bytes of `[{"id":1},{"id":1},…`, produced as they are sent.
fn endless_array(n: u64) -> Body {
    const ITEM: &[u8] = b"{\"id\":1},";
    let chunk: bytes::Bytes = ITEM.repeat(64 * 1024 / ITEM.len()).into();
    let first = bytes::Bytes::from_static(b"[");
    let full_chunks = n.saturating_sub(1) / chunk.len() as u64;
    let stream = futures::stream::iter(
        std::iter::once(first)
            .chain(std::iter::repeat_n(chunk, full_chunks as usize))
            .map(Ok::<_, std::io::Error>),
    );
    Body::from_stream(stream)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimConfig {
    /// The per-user limit (Rack::Attack's authenticated API throttle); `None` = off.
    pub rate_limit: Option<UserRateLimit>,
    /// The mode's application limits (429 without RateLimit headers): GitLab.com's
    /// per-endpoint table in gitlab-com mode; member deletion (60/min per group or project,
    /// GitLab's default) in both modes.
    pub endpoint_limits: bool,
    /// `offset_pagination_limit`: the maximum offset on keyset-capable lists (0 = none).
    pub offset_cap: u64,
    pub faults: Faults,
    /// Dropped, duplicated, delayed and reordered webhook deliveries.
    #[serde(default)]
    pub hook_faults: crate::hooks::HookFaults,
}

impl SimConfig {
    pub fn for_mode(_mode: crate::model::Mode) -> Self {
        Self {
            rate_limit: None,
            endpoint_limits: true,
            offset_cap: 50_000,
            faults: Faults::default(),
            hook_faults: crate::hooks::HookFaults::default(),
        }
    }
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    pub method: String,
    /// `GET /groups/:id/members`
    pub route: String,
    /// The raw path and query below `/api/v4`.
    pub path: String,
    pub status: u16,
    pub user_id: Option<u64>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RouteCount {
    pub requests: u64,
    pub statuses: BTreeMap<u16, u64>,
}

#[derive(Default)]
pub(crate) struct RequestLog {
    entries: Vec<LogEntry>,
    counts: BTreeMap<String, RouteCount>,
}

const LOG_CAP: usize = 200_000;

impl RequestLog {
    fn record(&mut self, entry: LogEntry) {
        let c = self.counts.entry(entry.route.clone()).or_default();
        c.requests += 1;
        *c.statuses.entry(entry.status).or_default() += 1;
        if self.entries.len() >= LOG_CAP {
            self.entries.drain(..LOG_CAP / 2);
        }
        self.entries.push(entry);
    }
}

/// The running simulator's shared state.
pub struct Sim {
    pub world: RwLock<World>,
    pub config: Mutex<SimConfig>,
    pub(crate) log: Mutex<RequestLog>,
    pub(crate) limits: Mutex<limits::LimitState>,
    rng: Mutex<fastrand::Rng>,
    base_url: OnceLock<String>,
    /// Every webhook delivery attempt, in the order they were answered.
    pub(crate) hook_log: Mutex<Vec<hooks::HookAttempt>>,
    /// Woken after each webhook delivery attempt.
    pub(crate) hook_attempted: tokio::sync::Notify,
    /// API requests being answered now, and the most at once since the last reset.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// Counts a request as being answered until dropped.
struct InFlight<'a>(&'a Sim);

impl<'a> InFlight<'a> {
    fn start(sim: &'a Sim) -> Self {
        let now = sim.in_flight.fetch_add(1, SeqCst) + 1;
        sim.most_in_flight.fetch_max(now, SeqCst);
        Self(sim)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, SeqCst);
    }
}

impl Sim {
    pub fn new(world: World, config: SimConfig, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            world: RwLock::new(world),
            config: Mutex::new(config),
            log: Mutex::new(RequestLog::default()),
            limits: Mutex::new(limits::LimitState::default()),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
            base_url: OnceLock::new(),
            hook_log: Mutex::new(Vec::new()),
            hook_attempted: tokio::sync::Notify::new(),
            in_flight: Default::default(),
            most_in_flight: Default::default(),
        })
    }

    /// The most API requests answered at once since the last [`Sim::reset_most_in_flight`]
    /// (or the start).
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(SeqCst)
    }

    pub fn reset_most_in_flight(&self) {
        self.most_in_flight.store(0, SeqCst);
    }

    pub fn set_base_url(&self, url: String) {
        let _ = self.base_url.set(url);
    }

    /// `http://127.0.0.1:PORT`, used in `Link` headers and `web_url`s.
    pub fn base_url(&self) -> &str {
        self.base_url
            .get()
            .map_or("http://localhost", String::as_str)
    }

    /// Requests per route (`GET /groups/:id/members`) so far.
    pub fn counts(&self) -> BTreeMap<String, RouteCount> {
        self.log.lock().unwrap().counts.clone()
    }

    /// The webhook deliveries attempted so far.
    pub fn hook_attempts(&self) -> Vec<hooks::HookAttempt> {
        self.hook_log.lock().unwrap().clone()
    }

    /// Waits until `n` webhook deliveries were attempted (or `timeout` passed); returns them.
    pub async fn wait_for_hook_attempts(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<hooks::HookAttempt> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let attempted = self.hook_attempted.notified();
            let attempts = self.hook_attempts();
            if attempts.len() >= n || tokio::time::timeout_at(deadline, attempted).await.is_err() {
                return attempts;
            }
        }
    }

    pub fn requests(&self) -> Vec<LogEntry> {
        self.log.lock().unwrap().entries.clone()
    }

    pub fn reset_log(&self) {
        *self.log.lock().unwrap() = RequestLog::default();
    }

    fn chance(&self, p: f64) -> bool {
        p > 0.0 && self.rng.lock().unwrap().f64() < p
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    let api = Router::new()
        .route("/user", get(users::current))
        .route("/users", get(users::list).post(users::create))
        .route("/users/{id}", get(users::show).delete(users::remove))
        .route("/users/{id}/{action}", post(users::action))
        .route("/personal_access_tokens", get(tokens::list))
        .route("/personal_access_tokens/self", get(tokens::show_self))
        .route(
            "/personal_access_tokens/self/rotate",
            post(tokens::rotate_self),
        )
        .route(
            "/personal_access_tokens/{id}",
            get(tokens::show).delete(tokens::revoke),
        )
        .route("/groups", get(groups::list))
        .route("/groups/{id}", get(groups::show))
        .route("/groups/{id}/descendant_groups", get(groups::descendants))
        .route("/groups/{id}/subgroups", get(groups::subgroups))
        .route("/groups/{id}/projects", get(groups::projects))
        .route(
            "/groups/{id}/billable_members",
            get(groups::billable_members),
        )
        .route(
            "/groups/{id}/enterprise_users",
            get(groups::enterprise_users),
        )
        .route(
            "/groups/{id}/saml_group_links",
            get(groups::saml_group_links),
        )
        .route("/groups/{id}/member_roles", get(groups::member_roles))
        .route("/member_roles", get(groups::instance_member_roles))
        .route("/projects", get(projects::list))
        .route("/projects/{id}", get(projects::show))
        .route("/groups/{id}/hooks", get(hooks::list).post(hooks::create))
        .route(
            "/groups/{id}/hooks/{hook_id}",
            get(hooks::show).put(hooks::edit).delete(hooks::remove),
        )
        .route("/hooks", get(hooks::list_system).post(hooks::create_system))
        .route("/groups/{id}/audit_events", get(audit::group_events))
        .route("/audit_events", get(audit::instance_events))
        .route("/hooks/{hook_id}", delete(hooks::remove_system))
        .route(
            "/groups/{id}/members",
            get(members::list::<false>).post(members::add::<false>),
        )
        .route(
            "/projects/{id}/members",
            get(members::list::<true>).post(members::add::<true>),
        )
        .route(
            "/groups/{id}/members/{user_id}",
            get(members::show::<false>)
                .put(members::edit::<false>)
                .delete(members::remove::<false>),
        )
        .route(
            "/projects/{id}/members/{user_id}",
            get(members::show::<true>)
                .put(members::edit::<true>)
                .delete(members::remove::<true>),
        )
        .route(
            "/groups/{id}/members/all/{user_id}",
            get(members::show_all::<false>),
        )
        .route(
            "/projects/{id}/members/all/{user_id}",
            get(members::show_all::<true>),
        )
        .route(
            "/groups/{id}/invitations",
            get(invitations::list::<false>).post(invitations::create::<false>),
        )
        .route(
            "/projects/{id}/invitations",
            get(invitations::list::<true>).post(invitations::create::<true>),
        )
        .route(
            "/groups/{id}/invitations/{email}",
            delete(invitations::remove::<false>),
        )
        .route(
            "/projects/{id}/invitations/{email}",
            delete(invitations::remove::<true>),
        )
        .fallback(not_found_route)
        .layer(middleware::from_fn_with_state(
            sim.clone(),
            gitlab_middleware,
        ));
    Router::new()
        .nest("/api/v4", api)
        .nest("/_sim", admin::router())
        .with_state(sim)
}

async fn not_found_route() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"error": "404 Not Found"})),
    )
        .into_response()
}

/// `/api/v4/groups/{id}/members` → `/groups/:id/members`, in one pass.
fn route_template(matched: Option<&MatchedPath>) -> String {
    let raw = matched.map_or("(unmatched)", |m| m.as_str());
    let raw = raw.strip_prefix("/api/v4").unwrap_or(raw);
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '{' => out.push(':'),
            '}' => {}
            c => out.push(c),
        }
    }
    out
}

/// Everything GitLab does around a handler: faults, authentication, throttles, the log.
async fn gitlab_middleware(State(sim): State<Arc<Sim>>, mut req: Request, next: Next) -> Response {
    let _answering = InFlight::start(&sim);
    let method = req.method().clone();
    let template = route_template(req.extensions().get::<MatchedPath>());
    // Concrete kinds make the counters readable: `/groups/:id/members`.
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.as_str().to_string());
    let path = path_and_query
        .strip_prefix("/api/v4")
        .unwrap_or(&path_and_query)
        .to_string();
    let route_label = template;
    let caller = auth::authenticate(&sim, req.headers(), &method, &path);
    let user_id = caller.as_ref().ok().map(|c| c.user_id);

    let response = match pre_handler(&sim, &method, &path, &route_label, caller).await {
        Err(resp) => resp,
        Ok((caller, extra_headers, rules)) => {
            req.extensions_mut().insert(caller);
            let mut resp = next.run(req).await;
            resp.headers_mut().extend(extra_headers);
            rules
                .iter()
                .fold(resp, |resp, rule| rule.apply(&sim, &path, resp))
        }
    };
    hooks::send_queued(&sim);
    sim.log.lock().unwrap().record(LogEntry {
        method: method.to_string(),
        route: format!("{method} {route_label}"),
        path,
        status: response.status().as_u16(),
        user_id,
    });
    response
}

/// Faults, authentication and throttles, in GitLab's order: the throttle (Rack::Attack) sees
/// every authenticated request first, so its `RateLimit-*` headers are on every response after
/// it, server errors included. Returns the response to send instead of the handler's, or the
/// caller, the throttle's headers and the rules that change the handler's response.
async fn pre_handler(
    sim: &Arc<Sim>,
    method: &Method,
    path: &str,
    route: &str,
    caller: Result<Caller, Response>,
) -> Result<(Caller, HeaderMap, Vec<FaultRule>), Response> {
    let faults = {
        let config = sim.config.lock().unwrap();
        if config.faults == Faults::default() {
            None
        } else {
            Some(config.faults.clone())
        }
    };
    let faults = faults.unwrap_or_default();
    if faults.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
    }
    let caller = caller?;
    let bare = path.split('?').next().unwrap_or(path);
    let headers = limits::check(sim, &caller, method, route, bare)?;
    let with_headers = |mut resp: Response| {
        resp.headers_mut().extend(headers.clone());
        resp
    };
    let mut passthrough = Vec::new();
    for rule in faults.rules.into_iter().filter(|r| r.matches(method, bare)) {
        match rule.status {
            Some(status) => {
                return Err(rule.apply(sim, path, with_headers(status_response(status))));
            }
            None => passthrough.push(rule),
        }
    }
    if sim.chance(faults.drop_rate) {
        return Err(with_headers(dropped_connection()));
    }
    if sim.chance(faults.error_rate) {
        let status = [500, 502, 503][sim.rng.lock().unwrap().usize(0..3)];
        return Err(with_headers(status_response(status)));
    }
    if sim.chance(faults.lock_rate) {
        return Err(with_headers(error(
            StatusCode::CONFLICT,
            json!({"message": "409 Conflict: Resource lock"}),
        )));
    }
    Ok((caller, headers, passthrough))
}

fn status_response(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match status {
        403 => error(code, json!({"message": "403 Forbidden"})),
        404 => error(code, json!({"message": "404 Not found"})),
        502 => (
            code,
            [("content-type", "text/html")],
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
        )
            .into_response(),
        503 => (
            code,
            [("content-type", "text/html")],
            "<html><body><h1>503 Service Unavailable</h1></body></html>",
        )
            .into_response(),
        _ => error(
            code,
            json!({"message": format!("{status} {}", code.canonical_reason().unwrap_or("Error"))}),
        ),
    }
}

/// A response whose body breaks off: the client sees the connection drop mid-transfer.
fn dropped_connection() -> Response {
    let stream = futures::stream::iter([
        Ok(bytes::Bytes::from_static(b"[{\"id\":")),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated drop",
        )),
    ]);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("valid response")
}

pub(crate) fn error(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

pub(crate) fn not_found(what: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        json!({"message": format!("404 {what} Not Found")}),
    )
}

pub(crate) fn forbidden() -> Response {
    error(StatusCode::FORBIDDEN, json!({"message": "403 Forbidden"}))
}

pub(crate) fn bad_request(message: impl Into<String>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        json!({"message": format!("400 Bad request - {}", message.into())}),
    )
}

pub(crate) fn field_error(field: &str, message: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        json!({"message": {field: [message]}}),
    )
}

pub(crate) fn json_response(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// A JSON response body serialized into one growing `Vec`. axum's `Json` writes through a
/// `BytesMut` writer in many small `put_slice` calls, which was the largest single cost of
/// rendering a page of members in the benchmark; the bytes and headers are the same.
pub(crate) struct Json<T>(pub T);

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(16 * 1024);
        match serde_json::to_writer(&mut body, &self.0) {
            Ok(()) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                body,
            )
                .into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// Parameters from the query string and a JSON or form body, as Grape merges them.
#[derive(Debug, Default, Clone)]
pub(crate) struct Params(pub Map<String, Value>);

impl Params {
    pub fn parse(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Self, Response> {
        let mut map = Map::new();
        if let Some(q) = query {
            for (k, v) in url_pairs(q) {
                map.insert(k.trim_end_matches("[]").to_string(), Value::String(v));
            }
        }
        if !body.is_empty() {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if ct.contains("json") {
                match serde_json::from_slice::<Value>(body) {
                    Ok(Value::Object(o)) => map.extend(o),
                    _ => return Err(bad_request("the body is not a JSON object")),
                }
            } else if let Ok(s) = std::str::from_utf8(body) {
                for (k, v) in url_pairs(s) {
                    map.insert(k, Value::String(v));
                }
            }
        }
        Ok(Self(map))
    }

    pub fn has(&self, k: &str) -> bool {
        self.0.contains_key(k)
    }

    pub fn str(&self, k: &str) -> Option<String> {
        match self.0.get(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            v => Some(v.to_string()),
        }
    }

    pub fn u64(&self, k: &str) -> Result<Option<u64>, Response> {
        match self.0.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                error(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("{k} is invalid")}),
                )
            }),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("{k} is invalid")}),
                )
            }),
            Some(_) => Err(error(
                StatusCode::BAD_REQUEST,
                json!({"error": format!("{k} is invalid")}),
            )),
        }
    }

    pub fn bool(&self, k: &str) -> bool {
        match self.0.get(k) {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => is_true(s),
            _ => false,
        }
    }

    /// `YYYY-MM-DD` or a timestamp; `Ok(None)` for absent or null.
    pub fn date(&self, k: &str) -> Result<Option<chrono::NaiveDate>, Response> {
        match self.str(k) {
            None => Ok(None),
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) => chrono::NaiveDate::parse_from_str(s.get(..10).unwrap_or(&s), "%Y-%m-%d")
                .map(Some)
                .map_err(|_| {
                    error(
                        StatusCode::BAD_REQUEST,
                        json!({"error": format!("{k} is invalid")}),
                    )
                }),
        }
    }
}

/// Grape's Boolean coercion: `true`, `True`, `1`, `t`, `yes`, `on` …
pub(crate) fn is_true(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "t" | "yes" | "y" | "on"
    )
}

pub(crate) fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub(crate) fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(&s.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

pub(crate) fn header(
    name: &'static str,
    value: impl ToString,
) -> (axum::http::HeaderName, HeaderValue) {
    (
        axum::http::HeaderName::from_static(name),
        HeaderValue::from_str(&value.to_string()).expect("valid header"),
    )
}
