//! The HTTP layer: auth, rate limit, retry, pagination. Endpoints live in `crate::api`.

mod base_url;
mod pages;
pub mod precedence;
mod ratelimit;
mod retry;
mod shared;
mod slots;
mod stats;

use std::future::Future;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use backon::Retryable;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue, USER_AGENT};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use url::Url;

pub use base_url::{BaseUrl, IdOrPath, encode_segment};
pub(crate) use pages::{ListSpec, Resume, items as items_stream};
pub use pages::{PageItem, Strategy};
pub use precedence::{Pacer, Precedence};
pub use ratelimit::{Limit, LimitClass, RateLimitConfig};
pub use retry::RetryPolicy;
pub use shared::{Reservation, SharedBudget};
pub use slots::{Deferral, Slot};
pub use stats::{RouteStats, StatsSnapshot};

use crate::error::{Error, Route, TransportKind, classify};
use crate::secret::Secret;
use ratelimit::RateLimiter;
use stats::Stats;

/// How long the other workers keep off a group's or project's shared limit after GitLab refused
/// it without saying for how long (the application limiter may send no `Retry-After`).
const ENDPOINT_LIMIT_HOLD: Duration = Duration::from_secs(10);

/// Which kind of GitLab the connector talks to; it chooses rate-limit presets and which
/// admin-only endpoints make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceKind {
    GitlabCom,
    SelfManaged,
}

impl InstanceKind {
    pub fn detect(base: &BaseUrl) -> Self {
        if base.is_gitlab_com() {
            InstanceKind::GitlabCom
        } else {
            InstanceKind::SelfManaged
        }
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: BaseUrl,
    pub token: Secret,
    pub instance: InstanceKind,
    pub rate_limit: RateLimitConfig,
    pub retry: RetryPolicy,
    /// Timeout of one HTTP exchange (not counting waits between retries).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Items per page; GitLab caps it at 100.
    pub per_page: u32,
    /// The largest response body read; a larger one is an error, never buffered.
    pub max_response_bytes: u64,
}

impl ClientConfig {
    /// Defaults for the instance kind detected from the URL.
    pub fn new(base_url: BaseUrl, token: Secret) -> Self {
        let instance = InstanceKind::detect(&base_url);
        Self {
            rate_limit: match instance {
                InstanceKind::GitlabCom => RateLimitConfig::gitlab_com(),
                InstanceKind::SelfManaged => RateLimitConfig::self_managed(),
            },
            base_url,
            token,
            instance,
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            per_page: 100,
            max_response_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Installs rustls' ring provider as the process default, once. async-nats and sqlx use ring;
/// with two providers compiled in, rustls cannot pick one and panics at runtime.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// How a request may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Safe to resend (GET): retried on transient errors.
    Idempotent,
    /// Never resent: `POST …/rotate` (a resent rotation of a revoked token revokes the family).
    Never,
}

/// One request to the API.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub route: Route,
    pub method: Method,
    /// Encoded path below `/api/v4`, e.g. `/groups/42/members`.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<serde_json::Value>,
    /// Endpoint limit class and the resource it is keyed on (0 when global).
    pub limit: Option<LimitClass>,
    pub limit_key: u64,
    /// A full URL to use instead of `path` + `query` (a `Link rel="next"`).
    pub url: Option<Url>,
}

impl Request {
    pub fn new(method: Method, template: &'static str, path: impl Into<String>) -> Self {
        Self {
            route: Route::new(method_name(&method), template),
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            limit: None,
            limit_key: 0,
            url: None,
        }
    }

    pub fn get(template: &'static str, path: impl Into<String>) -> Self {
        Self::new(Method::GET, template, path)
    }

    pub fn query(mut self, key: &'static str, value: impl ToString) -> Self {
        self.query.push((key, value.to_string()));
        self
    }

    pub fn json(mut self, body: serde_json::Value) -> Self {
        self.body = Some(body);
        self
    }

    pub fn limited(mut self, class: LimitClass, key: u64) -> Self {
        self.limit = Some(class);
        self.limit_key = key;
        self
    }
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

/// A successful response.
#[derive(Debug)]
pub(crate) struct Response {
    pub headers: HeaderMap,
    pub body: bytes::Bytes,
    pub url: Url,
}

impl Response {
    pub fn json<T: DeserializeOwned>(&self, route: Route) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode {
            route,
            message: e.to_string(),
        })
    }
}

/// The GitLab REST v4 client. Cheap to clone; clones share limits, statistics and connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    /// Replaced after a token rotation; every request reads it.
    token_header: std::sync::RwLock<HeaderValue>,
    limiter: RateLimiter,
    stats: Stats,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.inner.config.base_url)
            .field("instance", &self.inner.config.instance)
            .finish_non_exhaustive()
    }
}

fn token_header(token: &Secret) -> Result<HeaderValue, Error> {
    let mut h = HeaderValue::from_str(token.expose()).map_err(|_| {
        Error::InvalidConfig(
            "the GitLab token contains characters that cannot be sent in a header (a stray newline?)"
                .into(),
        )
    })?;
    h.set_sensitive(true);
    Ok(h)
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        install_crypto_provider();
        if config.token.is_empty() {
            return Err(Error::InvalidConfig(
                "the GitLab token is empty; set GITLAB_TOKEN or GITLAB_TOKEN_FILE".into(),
            ));
        }
        if !(1..=100).contains(&config.per_page) {
            return Err(Error::InvalidConfig(format!(
                "per_page must be between 1 and 100 (GitLab's maximum), got {}",
                config.per_page
            )));
        }
        let token_header = token_header(&config.token)?;
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::InvalidConfig(format!("could not build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                limiter: RateLimiter::new(&config.rate_limit),
                http,
                config,
                token_header: std::sync::RwLock::new(token_header),
                stats: Stats::default(),
            }),
        })
    }

    /// Shares this client's rate limits with every process drawing from `budget` (workers
    /// using one token): see `shared`.
    pub fn share_budget(&self, budget: Arc<dyn SharedBudget>) {
        self.inner.limiter.share(budget);
    }

    /// Uses `token` from the next request on (after a rotation).
    pub fn set_token(&self, token: &Secret) -> Result<(), Error> {
        let header = token_header(token)?;
        *self
            .inner
            .token_header
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = header;
        Ok(())
    }

    /// Whether requests are sent with `token` now.
    pub fn uses_token(&self, token: &Secret) -> bool {
        self.inner
            .token_header
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_bytes()
            == token.expose().as_bytes()
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    pub fn base_url(&self) -> &BaseUrl {
        &self.inner.config.base_url
    }

    pub fn instance(&self) -> InstanceKind {
        self.inner.config.instance
    }

    /// Requests sent so far (cheap; for progress reports).
    pub fn request_count(&self) -> u64 {
        self.inner.stats.requests()
    }

    /// Requests, statuses, waits, 429s and retries per route so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Ahead of a request of `class` on resource `key` (sent as `route`) in a job running in a
    /// [`Deferral`]: reserves its slot, and answers [`Error::SlotLater`] when that slot is
    /// too far away to hold the job for (the job is handed back until it). Does nothing outside
    /// a deferral or when the limit is not shared across processes.
    pub(crate) async fn reserve_slot(
        &self,
        class: LimitClass,
        key: u64,
        route: Route,
    ) -> Result<(), Error> {
        match self.inner.limiter.reserve_slot(class, key).await {
            Some(slot) => Err(Error::SlotLater { route, at: slot.at }),
            None => Ok(()),
        }
    }

    /// Sends once: rate limit, HTTP exchange, classification. No retry.
    async fn send_once(&self, req: &Request) -> Result<Response, Error> {
        let inner = &self.inner;
        let url = match &req.url {
            Some(url) => url.clone(),
            None => {
                let mut url = inner.config.base_url.endpoint(&req.path)?;
                if !req.query.is_empty() {
                    let mut pairs = url.query_pairs_mut();
                    for (k, v) in &req.query {
                        pairs.append_pair(k, v);
                    }
                }
                url
            }
        };
        // A sync's request waits here while provisioning runs, one at a time, before it
        // takes a slot of the rate limit; the turn is held until its body has been read.
        let _turn = precedence::request_turn().await;
        // The slot is taken only once nothing can fail before sending: the pacer counts it as
        // in flight until a response (or a transport error) releases it.
        let waited = inner.limiter.acquire(req.limit, req.limit_key).await;
        inner.stats.waited(req.route, waited.waits, waited.duration);
        let mut builder = inner
            .http
            .request(req.method.clone(), url.clone())
            .header(
                "PRIVATE-TOKEN",
                inner
                    .token_header
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            )
            .header(ACCEPT, "application/json")
            .header(
                USER_AGENT,
                concat!("gitlab-access-connector/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(body) = &req.body {
            builder = builder.json(body);
        }
        let started = Instant::now();
        let result = builder.send().await;
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                inner.limiter.abandon();
                inner.stats.response(req.route, 0);
                return Err(transport_error(req.route, e));
            }
        };
        let status = response.status();
        let mut response = response;
        let headers = std::mem::take(response.headers_mut());
        let body = match read_body(response, inner.config.max_response_bytes, req.route).await {
            Ok(b) => b,
            Err(e) => {
                inner.limiter.abandon();
                inner.stats.response(req.route, 0);
                return Err(e);
            }
        };
        inner.stats.response(req.route, status.as_u16());
        // Only a 429 waits for GitLab's window, and only it pauses every request of the
        // connector; a 5xx honours `Retry-After` alone and is backed off per request (GitLab
        // sends `RateLimit-Reset` on ordinary responses too, up to a minute away).
        // A 429 from one of GitLab's application limits (per endpoint, often per group or
        // project) refuses that endpoint only: the connector's other requests go on, and its
        // `RateLimit-*` headers describe the user's throttle, not this limit.
        let endpoint_limited = status == StatusCode::TOO_MANY_REQUESTS
            && req.limit.is_some()
            && retry::is_application_limit(&body);
        let wait = if endpoint_limited {
            retry::retry_after(&headers)
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            retry::rate_limit_wait(&headers)
        } else if status.is_server_error() {
            retry::retry_after(&headers)
        } else {
            None
        };
        let pause = wait.filter(|w| {
            status == StatusCode::TOO_MANY_REQUESTS
                && !endpoint_limited
                && *w <= inner.config.retry.max_wait
        });
        inner.limiter.observe(&headers, pause);
        if endpoint_limited && let Some(class) = req.limit {
            inner
                .limiter
                .hold_back(class, req.limit_key, wait.unwrap_or(ENDPOINT_LIMIT_HOLD))
                .await;
        }
        tracing::debug!(
            route = %req.route,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "gitlab request"
        );
        if status.is_success() {
            return Ok(Response { headers, body, url });
        }
        // A proxy or GitLab may echo the request's token in an error body: it never reaches a
        // message, a result or a log.
        let token = self
            .inner
            .token_header
            .read()
            .ok()
            .and_then(|h| h.to_str().ok().map(str::to_string));
        let body = match token {
            Some(t) if body.windows(t.len().max(1)).any(|w| w == t.as_bytes()) => {
                bytes::Bytes::from(crate::secret::scrub(
                    &String::from_utf8_lossy(&body),
                    Some(&t),
                ))
            }
            _ => body,
        };
        Err(classify(req.route, status, &body, wait))
    }

    /// Sends a request, retrying idempotent ones on transient errors within the time budget.
    pub(crate) async fn execute(&self, req: Request, repeat: Repeat) -> Result<Response, Error> {
        let policy = self.inner.config.retry;
        if repeat == Repeat::Never || policy.max_retries == 0 {
            return self.send_once(&req).await;
        }
        let started = Instant::now();
        let route = req.route;
        let budget_spent = std::sync::atomic::AtomicBool::new(false);
        let result = (|| self.send_once(&req))
            .retry(policy.backoff())
            .when(|e: &Error| e.is_transient())
            .adjust(|e: &Error, backoff: Option<Duration>| {
                match retry_delay(&policy, started, e, backoff) {
                    Ok(wait) => Some(wait),
                    Err(stop) => {
                        if stop == Stop::Budget {
                            budget_spent.store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        None
                    }
                }
            })
            .notify(|e: &Error, wait: Duration| {
                self.inner.stats.retry(route);
                tracing::warn!(route = %route, error = %e, wait_ms = wait.as_millis() as u64, "retrying GitLab request");
            })
            .await;
        result.map_err(|e| {
            if budget_spent.load(std::sync::atomic::Ordering::Relaxed) {
                over_budget(route, &policy, e)
            } else {
                e
            }
        })
    }

    pub(crate) async fn get_json<T: DeserializeOwned>(&self, req: Request) -> Result<T, Error> {
        let route = req.route;
        self.execute(req, Repeat::Idempotent).await?.json(route)
    }

    /// A write that is never blindly resent. When it fails transiently (a timeout, a 5xx, a
    /// dropped connection: it may or may not have been applied), `reread` reads GitLab's state
    /// first: `Some(v)` means the write is in effect and `v` is returned; `None` means it is not,
    /// and the write is sent again, within the retry policy.
    pub(crate) async fn write_with_reread<T, F, Fut>(
        &self,
        req: Request,
        parse: impl Fn(&Response) -> Result<T, Error>,
        reread: F,
    ) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<T>, Error>>,
    {
        let policy = self.inner.config.retry;
        let started = Instant::now();
        let mut backoff = backon::BackoffBuilder::build(policy.backoff());
        loop {
            let err = match self.send_once(&req).await {
                Ok(resp) => return parse(&resp),
                Err(e) if e.is_transient() => e,
                Err(e) => return Err(e),
            };
            let wait = match retry_delay(&policy, started, &err, backoff.next()) {
                Ok(wait) => wait,
                Err(Stop::Budget) => return Err(over_budget(req.route, &policy, err)),
                Err(_) => return Err(err),
            };
            self.inner.stats.retry(req.route);
            tracing::warn!(route = %req.route, error = %err, wait_ms = wait.as_millis() as u64, "write failed transiently; re-reading state before retrying");
            tokio::time::sleep(wait).await;
            if let Some(done) = reread().await? {
                tracing::info!(route = %req.route, "the earlier attempt took effect; not resending");
                return Ok(done);
            }
        }
    }
}

/// Why no further attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The retry count is used up.
    Retries,
    /// GitLab asked for a longer wait than `max_wait`; the caller schedules it.
    WaitTooLong,
    /// The wait would overrun the request's total budget.
    Budget,
}

/// The delay before the next attempt: GitLab's requested wait wins over the exponential
/// backoff (and keeps retrying past `max_retries`, within the budget).
fn retry_delay(
    policy: &RetryPolicy,
    started: Instant,
    err: &Error,
    backoff: Option<Duration>,
) -> Result<Duration, Stop> {
    let wait = match err.retry_after() {
        Some(w) => w + Duration::from_millis(100),
        None => policy.scaled(err, backoff.ok_or(Stop::Retries)?),
    };
    if wait > policy.max_wait {
        return Err(Stop::WaitTooLong);
    }
    if started.elapsed() + wait > policy.budget {
        return Err(Stop::Budget);
    }
    Ok(wait)
}

/// Reads a response body of at most `limit` bytes, refusing a larger one by its declared length
/// or as it arrives, so a hostile or broken server cannot fill memory.
async fn read_body(
    mut response: reqwest::Response,
    limit: u64,
    route: Route,
) -> Result<bytes::Bytes, Error> {
    if response.content_length().is_some_and(|n| n > limit) {
        return Err(Error::ResponseTooLarge { route, limit });
    }
    let mut body = bytes::BytesMut::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(Error::ResponseTooLarge { route, limit });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => return Err(transport_error(route, e)),
        }
    }
}

fn over_budget(route: Route, policy: &RetryPolicy, last: Error) -> Error {
    Error::BudgetExhausted {
        route,
        budget: policy.budget,
        last: Box::new(last),
    }
}

fn transport_error(route: Route, e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else if e.is_body() || e.is_request() || e.is_decode() {
        TransportKind::Interrupted
    } else {
        TransportKind::Other
    };
    // Drop the URL from the message: only route templates leave the client.
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    Error::Transport {
        route,
        kind,
        message,
    }
}
