//! Client-side rate limiting: never be the reason GitLab answers 429.
//!
//! Three layers, all awaited before a request is sent:
//! 1. a per-connector token bucket (GitLab.com: 2,000/min per user);
//! 2. per-endpoint buckets for GitLab's application limits, which GitLab does *not* report in
//!    `RateLimit-*` headers (docs/gitlab.md, "Rate limits");
//! 3. a pacer driven by `RateLimit-Remaining`/`RateLimit-Reset` when GitLab sends them: the
//!    remaining budget is spread over the time left in the window, keeping a reserve for
//!    requests already in flight, and a 429's `Retry-After` pauses every request.
//!
//! Buckets are sized so that no fixed window of the limit's length can see more than the limit:
//! a burst of 5% and a sustained rate of 95% of the documented figure.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use reqwest::header::HeaderMap;

/// GitLab's endpoint-specific (application) limits that the client knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LimitClass {
    /// `GET /users/:id`
    UserGet,
    /// `GET /users` (list)
    UsersList,
    /// `GET /projects` (list)
    ProjectsList,
    /// `GET /groups` (list)
    GroupsList,
    /// `GET /groups/:id`
    GroupGet,
    /// `GET /groups/:id/projects`
    GroupProjects,
    /// `GET /projects/:id`
    ProjectGet,
    /// `GET /{groups,projects}/:id/members/all[/:user_id]`, per group or project
    MembersAll,
    /// `DELETE /{groups,projects}/:id/members/:user_id`, per group or project
    MemberDelete,
}

/// `limit` requests per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub limit: u32,
    pub period: Duration,
}

impl Limit {
    pub const fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            period: Duration::from_secs(60),
        }
    }

    pub const fn per(limit: u32, period: Duration) -> Self {
        Self { limit, period }
    }

    /// A GCRA quota that never exceeds `limit` within any window of `period`.
    fn quota(&self) -> Quota {
        let limit = self.limit.max(1);
        let burst = (limit / 20).max(1);
        let sustained = (limit - burst).max(1);
        let per_cell = self.period / sustained;
        Quota::with_period(per_cell.max(Duration::from_nanos(1)))
            .expect("period is non-zero")
            .allow_burst(NonZeroU32::new(burst).expect("burst >= 1"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Requests per minute for the whole connector; `None` = no client-side cap.
    pub per_minute: Option<u32>,
    pub endpoints: HashMap<LimitClass, Limit>,
    /// Requests kept back from `RateLimit-Remaining` on top of those in flight (safety margin).
    pub header_reserve: u32,
}

impl RateLimitConfig {
    /// GitLab.com: 2,000 requests/min per user plus its documented endpoint limits
    /// (docs/gitlab.md, "Rate limits"; the `GET /groups` list uses the newest, lowest figure).
    pub fn gitlab_com() -> Self {
        use LimitClass::*;
        let endpoints = HashMap::from([
            (UserGet, Limit::per(300, Duration::from_secs(600))),
            (ProjectsList, Limit::per(2000, Duration::from_secs(600))),
            (GroupsList, Limit::per_minute(50)),
            (GroupGet, Limit::per_minute(400)),
            (GroupProjects, Limit::per_minute(600)),
            (ProjectGet, Limit::per_minute(400)),
            (MembersAll, Limit::per_minute(200)),
            (MemberDelete, Limit::per_minute(60)),
        ]);
        Self {
            per_minute: Some(2000),
            endpoints,
            header_reserve: 1,
        }
    }

    /// Self-managed: no user throttle by default (admins enable it; the `RateLimit-*` headers
    /// then drive the pacer), but the member limits are on by default (docs/gitlab.md, "Rate limits") and
    /// were not reset by the 18.0 upgrade, unlike the Projects/Groups/Users API limits.
    pub fn self_managed() -> Self {
        use LimitClass::*;
        Self {
            per_minute: None,
            endpoints: HashMap::from([
                (MembersAll, Limit::per_minute(200)),
                (MemberDelete, Limit::per_minute(60)),
            ]),
            header_reserve: 1,
        }
    }

    /// No client-side limit at all (tests, or an allow-listed service account).
    pub fn unlimited() -> Self {
        Self {
            per_minute: None,
            endpoints: HashMap::new(),
            header_reserve: 1,
        }
    }

    pub fn with_per_minute(mut self, per_minute: Option<u32>) -> Self {
        self.per_minute = per_minute;
        self
    }
}

/// What waiting for a slot cost: at most one wait is counted per request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Waited {
    pub waits: u32,
    pub duration: Duration,
}

impl Waited {
    fn add(&mut self, d: Duration) {
        if !d.is_zero() {
            self.waits = 1;
            self.duration += d;
        }
    }
}

pub struct RateLimiter {
    config: RateLimitConfig,
    /// The lanes other processes using the same token draw from too (set once, by a worker).
    shared: std::sync::OnceLock<super::shared::SharedLanes>,
    global: Option<DefaultDirectRateLimiter>,
    endpoints: HashMap<LimitClass, DefaultKeyedRateLimiter<u64>>,
    pacer: Mutex<Pacer>,
    acquired: AtomicU64,
}

impl RateLimiter {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self {
            config: config.clone(),
            shared: std::sync::OnceLock::new(),
            global: config
                .per_minute
                .map(|n| governor::RateLimiter::direct(Limit::per_minute(n).quota())),
            endpoints: config
                .endpoints
                .iter()
                .map(|(class, limit)| (*class, governor::RateLimiter::keyed(limit.quota())))
                .collect(),
            pacer: Mutex::new(Pacer {
                reserve: config.header_reserve,
                ..Pacer::default()
            }),
            acquired: AtomicU64::new(0),
        }
    }

    /// Draws the connector's limits from `budget` too, shared with every process using it
    /// (the first call wins). The requests sent before it are reserved in the shared budget
    /// too (a worker checks its token before it reaches NATS).
    pub fn share(&self, budget: std::sync::Arc<dyn super::shared::SharedBudget>) {
        let _ = self.shared.set(super::shared::SharedLanes::new(
            budget,
            &self.config,
            u32::try_from(self.acquired.load(Ordering::Relaxed)).unwrap_or(u32::MAX),
        ));
    }

    /// Waits until a request of `class` on resource `key` (0 when the limit is not per
    /// resource) may be sent.
    pub async fn acquire(&self, class: Option<LimitClass>, key: u64) -> Waited {
        let mut waited = Waited::default();
        // A per-resource limit shared across processes replaces the local bucket of that
        // resource (its slots are the limit), unless the shared budget is away.
        let mut resource_shared = false;
        if let Some(shared) = self.shared.get() {
            if let Some((lane, interval)) = class.and_then(|c| shared.keyed_lane(c, key)) {
                let at = match super::slots::take_held(&lane, interval) {
                    Some(at) => Some(at),
                    None => match shared.reserve_keyed(&lane, interval).await {
                        Ok(at) => Some(at),
                        Err(e) => {
                            tracing::warn!(%lane, "the shared GitLab budget is unreachable ({e}); this worker paces the resource alone");
                            None
                        }
                    },
                };
                if let Some(at) = at {
                    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(wait).await;
                    waited.add(wait);
                    resource_shared = true;
                }
            }
            waited.add(shared.take(class).await);
        }
        if let Some(limiter) = class
            .filter(|_| !resource_shared)
            .and_then(|c| self.endpoints.get(&c))
            && limiter.check_key(&key).is_err()
        {
            let t = Instant::now();
            limiter.until_key_ready(&key).await;
            waited.add(t.elapsed());
        }
        if let Some(global) = &self.global
            && global.check().is_err()
        {
            let t = Instant::now();
            global.until_ready().await;
            waited.add(t.elapsed());
        }
        loop {
            let slot = self.pacer().next_slot(Instant::now());
            match slot {
                None => break,
                Some(at) => {
                    let t = Instant::now();
                    tokio::time::sleep_until(at.into()).await;
                    waited.add(t.elapsed());
                }
            }
        }
        // Keyed state grows with every group or project seen; trim it now and then.
        if self.acquired.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            for limiter in self.endpoints.values() {
                limiter.retain_recent();
            }
        }
        waited
    }

    /// In a job that may be deferred ([`super::slots`]): reserves the slot of a request of
    /// `class` on resource `key` ahead of it. `Some(slot)` when the slot is too far away to
    /// wait for and the job is to be handed back until it.
    pub async fn reserve_slot(&self, class: LimitClass, key: u64) -> Option<super::slots::Slot> {
        let shared = self.shared.get()?;
        let (lane, interval) = shared.keyed_lane(class, key)?;
        match super::slots::reserve(&lane, interval, || shared.reserve_keyed(&lane, interval)).await
        {
            super::slots::Decision::Later(slot) => Some(slot),
            super::slots::Decision::Held | super::slots::Decision::Unmanaged => None,
        }
    }

    /// GitLab refused a request of `class` on resource `key` for `wait`: when that limit is
    /// shared per resource, its timeline moves past the wait, so no worker sends into it.
    pub async fn hold_back(&self, class: LimitClass, key: u64, wait: Duration) {
        let Some((shared, lane, interval)) = self
            .shared
            .get()
            .and_then(|s| s.keyed_lane(class, key).map(|(l, i)| (s, l, i)))
        else {
            return;
        };
        let wait = wait.min(Duration::from_secs(600));
        let slots = u32::try_from(wait.as_nanos() / interval.as_nanos().max(1))
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        if let Err(e) = shared.reserve_many(&lane, slots, interval).await {
            tracing::warn!(%lane, "the shared GitLab budget is unreachable ({e}); only this request waits");
        }
    }

    /// Feeds GitLab's `RateLimit-*` headers (and, on 429, its requested wait) to the pacer.
    pub fn observe(&self, headers: &HeaderMap, retry_after: Option<Duration>) {
        let now = Instant::now();
        let mut pacer = self.pacer();
        pacer.in_flight = pacer.in_flight.saturating_sub(1);
        if let Some(until) = retry_after.and_then(|w| now.checked_add(w)) {
            pacer.pause_until(until);
        }
        let remaining = header_u64(headers, "ratelimit-remaining");
        let reset = header_u64(headers, "ratelimit-reset");
        if let (Some(remaining), Some(reset)) = (remaining, reset) {
            // Requests still in flight may not be counted in `remaining` yet.
            let unaccounted = pacer.in_flight;
            // GitLab's throttle windows last at most an hour; a reset further away is not
            // GitLab's and is ignored rather than waited for.
            let wait = unix_to_duration_from_now(reset);
            if wait <= MAX_WINDOW
                && let Some(reset_at) = now.checked_add(wait)
            {
                pacer.window = Some(Window {
                    remaining,
                    issued: unaccounted,
                    reset_at,
                });
            }
        }
    }

    /// The pacer's state. A panic elsewhere while it was held must not stop every later request
    /// of the connector: a poisoned lock is taken over (its state is plain counters and times).
    fn pacer(&self) -> std::sync::MutexGuard<'_, Pacer> {
        self.pacer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A request ended without a response (transport error): it no longer counts as in flight.
    pub fn abandon(&self) {
        let mut pacer = self.pacer();
        pacer.in_flight = pacer.in_flight.saturating_sub(1);
    }
}

/// The longest throttle window GitLab uses (self-managed: 7,200 requests per 3,600 s), with a
/// margin for clock skew.
const MAX_WINDOW: Duration = Duration::from_secs(3_700);

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
}

/// Time from now until the Unix second `reset` (zero when it has passed).
pub(crate) fn unix_to_duration_from_now(reset: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Duration::from_secs(reset).saturating_sub(now)
}

#[derive(Default)]
struct Pacer {
    /// Kept back from `RateLimit-Remaining` as a safety margin.
    reserve: u32,
    /// Requests released and not yet answered.
    in_flight: u64,
    window: Option<Window>,
    paused_until: Option<Instant>,
    next: Option<Instant>,
}

struct Window {
    /// `RateLimit-Remaining` at the last response.
    remaining: u64,
    /// Requests released since that response, plus those in flight when it arrived.
    issued: u64,
    reset_at: Instant,
}

impl Pacer {
    fn pause_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// `None`: send now. `Some(t)`: sleep until `t` and ask again.
    fn next_slot(&mut self, now: Instant) -> Option<Instant> {
        if let Some(p) = self.paused_until {
            if now < p {
                return Some(p);
            }
            self.paused_until = None;
        }

        let Some(window) = self.window.as_mut() else {
            self.in_flight += 1;
            return None;
        };
        if now >= window.reset_at {
            // A new window: the next response tells us its budget.
            self.window = None;
            self.next = None;
            self.in_flight += 1;
            return None;
        }
        let usable = window
            .remaining
            .saturating_sub(window.issued)
            .saturating_sub(self.reserve as u64);
        if usable == 0 {
            // Slow down before reaching zero: wait for the window to reset, plus a little for
            // clock skew between us and GitLab's one-second resolution.
            return Some(window.reset_at + Duration::from_millis(100));
        }
        let spacing = (window.reset_at - now) / (usable as u32).max(1);
        // Slots keep a little credit (20 ms) when wake-ups come late, so spacings below the
        // timer's 1 ms resolution still reach the intended rate; the window budget above still
        // bounds the total.
        let floor = now.checked_sub(Duration::from_millis(20)).unwrap_or(now);
        let slot = self.next.map_or(now, |n| n.max(floor));
        if slot > now {
            return Some(slot);
        }
        window.issued += 1;
        self.next = Some(slot + spacing);
        self.in_flight += 1;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_never_exceed_the_limit_in_one_window() {
        for limit in [
            Limit::per_minute(60),
            Limit::per_minute(2000),
            Limit::per(300, Duration::from_secs(600)),
        ] {
            let q = limit.quota();
            let burst = q.burst_size().get() as u64;
            let sustained = limit.period.as_nanos() / q.replenish_interval().as_nanos();
            assert!(burst + sustained as u64 <= limit.limit as u64, "{limit:?}");
            assert!(
                burst + sustained as u64 >= (limit.limit as u64 * 95) / 100,
                "{limit:?}"
            );
        }
    }

    #[test]
    fn pacer_stops_before_zero_and_resumes_after_reset() {
        let mut p = Pacer {
            reserve: 2,
            ..Pacer::default()
        };
        let now = Instant::now();
        p.window = Some(Window {
            remaining: 4,
            issued: 0,
            reset_at: now + Duration::from_secs(10),
        });
        // 4 remaining, 2 reserved: two requests are released, spaced over the window.
        assert_eq!(p.next_slot(now), None);
        let second = p.next_slot(now).expect("second request is spaced");
        assert!(second > now);
        assert_eq!(p.next_slot(second), None);
        let blocked = p.next_slot(second).expect("blocked until reset");
        assert!(blocked >= now + Duration::from_secs(10));
        assert_eq!(p.next_slot(now + Duration::from_secs(11)), None);
    }

    #[test]
    fn retry_after_pauses_everything() {
        let mut p = Pacer::default();
        let now = Instant::now();
        p.pause_until(now + Duration::from_secs(3));
        assert_eq!(p.next_slot(now), Some(now + Duration::from_secs(3)));
        assert_eq!(p.next_slot(now + Duration::from_secs(3)), None);
    }
}
