//! One GitLab budget across processes: GitLab counts requests per user (token), not per
//! process, so workers sharing a connector's token must share its limits.
//!
//! The budget is a single timeline per limit, kept by a [`SharedBudget`] (the worker keeps it
//! in NATS KV): each process reserves a few requests at a time (1% of the limit), each
//! reservation owning a slot of the timeline in which it may send them. Slots never overlap,
//! so however many processes draw from it, no window of the limit's length sees more than the
//! limit. A process spends its own reservation locally: one round trip per reservation, none
//! per request. The local buckets still apply on top, so a process alone is paced exactly as
//! without sharing.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::ratelimit::{Limit, LimitClass, RateLimitConfig};

/// What a shared budget answers a reservation with.
pub type Reservation<'a> = Pin<Box<dyn Future<Output = Result<SystemTime, String>> + Send + 'a>>;

/// A budget several processes draw from.
pub trait SharedBudget: Send + Sync {
    /// Reserves the next `requests` of the budget named `lane`, which refills one request per
    /// `interval`: returns when the reservation's slot begins (it lasts `requests * interval`).
    fn reserve<'a>(&'a self, lane: &'a str, requests: u32, interval: Duration) -> Reservation<'a>;
}

/// The classes whose limit is per group or project. They are not lanes of their own: a
/// resource's requests are few and spread over many keys.
fn per_resource(class: LimitClass) -> bool {
    matches!(class, LimitClass::MembersAll | LimitClass::MemberDelete)
}

/// The per-resource classes shared per resource too, one request per reservation: member
/// deletion (60/min per group or project), where hundreds of revokes on one group queue for
/// minutes. `members/all` (200/min) stays per process: the sync does not read it and each revoke
/// reads it once, after its deletion, so the deletion's shared limit bounds it.
fn shared_per_resource(class: LimitClass) -> bool {
    matches!(class, LimitClass::MemberDelete)
}

/// One shared limit as this process sees it: the reservation it is spending.
struct Lane {
    name: String,
    per_claim: u32,
    interval: Duration,
    claim: tokio::sync::Mutex<Claim>,
}

#[derive(Default)]
struct Claim {
    left: u32,
    until: Option<SystemTime>,
    /// Requests this process sent before it shared the budget (its start-up token check):
    /// GitLab counted them, so the next reservation takes them too.
    debt: u32,
}

impl Lane {
    /// Requests reserved at a time: 1% of the limit. The slot's sustained rate leaves two
    /// reservations of headroom, for the two slots a window can cut at its edges.
    fn new(name: String, limit: Limit) -> Self {
        let per_claim = (limit.limit / 100).max(1);
        let sustained = limit.limit.saturating_sub(2 * per_claim).max(1);
        Self {
            name,
            per_claim,
            interval: limit.period / sustained,
            claim: tokio::sync::Mutex::new(Claim::default()),
        }
    }

    fn with_debt(self, requests: u32) -> Self {
        Self {
            claim: tokio::sync::Mutex::new(Claim {
                debt: requests,
                ..Claim::default()
            }),
            ..self
        }
    }

    /// Takes one request of the lane, reserving more when this process's reservation is spent
    /// or its slot has passed. Returns how long it waited.
    async fn take(&self, budget: &dyn SharedBudget) -> Duration {
        let mut claim = self.claim.lock().await;
        let now = SystemTime::now();
        if claim.left > 0 && claim.until.is_some_and(|u| now < u) {
            claim.left -= 1;
            return Duration::ZERO;
        }
        let reserved = self.per_claim.saturating_add(claim.debt);
        match budget.reserve(&self.name, reserved, self.interval).await {
            Ok(start) => {
                claim.debt = 0;
                let wait = start.duration_since(now).unwrap_or_default();
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                claim.left = self.per_claim - 1;
                claim.until = start.checked_add(self.interval * reserved);
                wait
            }
            Err(e) => {
                // The shared store is away: the local limits still hold, and this process
                // goes on alone rather than stopping every request.
                tracing::warn!(lane = %self.name, "the shared GitLab budget is unreachable ({e}); this worker paces itself alone until it is back");
                claim.left = 0;
                Duration::ZERO
            }
        }
    }
}

/// The shared lanes of one connector: its overall limit, each endpoint limit that is not
/// per resource, and a lane per resource for member deletion.
pub(crate) struct SharedLanes {
    budget: Arc<dyn SharedBudget>,
    global: Option<Lane>,
    endpoints: HashMap<LimitClass, Lane>,
    /// The spacing of each per-resource lane's timeline.
    keyed: HashMap<LimitClass, Duration>,
}

impl SharedLanes {
    /// `already_sent`: the requests this process sent before sharing (they count against
    /// GitLab's per-user limit): the overall lane reserves them with its first reservation.
    pub(crate) fn new(
        budget: Arc<dyn SharedBudget>,
        config: &RateLimitConfig,
        already_sent: u32,
    ) -> Self {
        Self {
            budget,
            global: config
                .per_minute
                .map(|n| Lane::new("all".into(), Limit::per_minute(n)).with_debt(already_sent)),
            endpoints: config
                .endpoints
                .iter()
                .filter(|(class, _)| !per_resource(**class))
                .map(|(class, limit)| (*class, Lane::new(format!("{class:?}"), *limit)))
                .collect(),
            keyed: config
                .endpoints
                .iter()
                .filter(|(class, _)| shared_per_resource(**class))
                .map(|(class, limit)| (*class, limit.period / limit.limit.saturating_sub(2).max(1)))
                .collect(),
        }
    }

    /// The lane of `class` on resource `key` and its spacing, when that limit is shared per
    /// resource.
    pub(crate) fn keyed_lane(&self, class: LimitClass, key: u64) -> Option<(String, Duration)> {
        self.keyed
            .get(&class)
            .map(|interval| (format!("{class:?}.{key}"), *interval))
    }

    /// Reserves the next slot of a per-resource lane: when the one request it admits may be
    /// sent.
    pub(crate) async fn reserve_keyed(
        &self,
        lane: &str,
        interval: Duration,
    ) -> Result<SystemTime, String> {
        self.reserve_many(lane, 1, interval).await
    }

    /// Reserves `slots` slots of a per-resource lane at once (to keep everyone off it).
    pub(crate) async fn reserve_many(
        &self,
        lane: &str,
        slots: u32,
        interval: Duration,
    ) -> Result<SystemTime, String> {
        self.budget.reserve(lane, slots, interval).await
    }

    /// Takes one request of every shared lane that applies; how long that waited.
    pub(crate) async fn take(&self, class: Option<LimitClass>) -> Duration {
        let mut waited = Duration::ZERO;
        if let Some(lane) = class.and_then(|c| self.endpoints.get(&c)) {
            waited += lane.take(self.budget.as_ref()).await;
        }
        if let Some(lane) = &self.global {
            waited += lane.take(self.budget.as_ref()).await;
        }
        waited
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// The budget's timeline in memory, as the NATS KV one keeps it.
    #[derive(Default)]
    struct Timeline(Mutex<HashMap<String, SystemTime>>);

    impl SharedBudget for Timeline {
        fn reserve<'a>(
            &'a self,
            lane: &'a str,
            requests: u32,
            interval: Duration,
        ) -> Reservation<'a> {
            Box::pin(async move {
                let mut t = self.0.lock().unwrap();
                let now = SystemTime::now();
                let next = t.entry(lane.to_string()).or_insert(now);
                let start = (*next).max(now);
                *next = start + interval * requests;
                Ok(start)
            })
        }
    }

    #[tokio::test]
    async fn a_groups_refused_deletion_keeps_every_worker_off_that_group_only() {
        let timeline = Arc::new(Timeline::default());
        let limiter = super::super::ratelimit::RateLimiter::new(&RateLimitConfig::self_managed());
        limiter.share(timeline.clone());
        let before = SystemTime::now();
        limiter
            .hold_back(LimitClass::MemberDelete, 7, Duration::from_secs(10))
            .await;
        // Not shared per resource: nothing to hold back.
        limiter
            .hold_back(LimitClass::MembersAll, 7, Duration::from_secs(10))
            .await;
        let lanes = timeline.0.lock().unwrap();
        let next = lanes["MemberDelete.7"];
        assert!(next >= before + Duration::from_secs(10), "{next:?}");
        assert_eq!(lanes.len(), 1, "{:?}", lanes.keys().collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn requests_sent_before_sharing_are_reserved_with_the_first_reservation() {
        // 100 a minute: a reservation is one request, a slot 60 s / 98 long.
        let config = RateLimitConfig {
            per_minute: Some(100),
            endpoints: HashMap::new(),
            header_reserve: 1,
        };
        let timeline = Arc::new(Timeline::default());
        let lanes = SharedLanes::new(timeline.clone(), &config, 5);
        let before = SystemTime::now();
        lanes.take(None).await;
        let next = timeline.0.lock().unwrap()["all"];
        let slot = Duration::from_secs(60) / 98;
        let ahead = next.duration_since(before).unwrap();
        // The start-up's 5 requests and this one: 6 slots of the timeline, not 1.
        assert!(ahead >= slot * 6 - Duration::from_millis(50), "{ahead:?}");
        assert!(ahead < slot * 7, "{ahead:?}");
        // Only once: the next reservation is one request again.
        lanes.take(None).await;
        let after = timeline.0.lock().unwrap()["all"];
        assert_eq!(after.duration_since(next).unwrap(), slot);
    }

    #[tokio::test]
    async fn processes_sharing_a_budget_never_exceed_it_in_any_window() {
        // 600 per second: three "processes" take requests as fast as the budget allows.
        let limit = Limit::per(600, Duration::from_secs(1));
        let config = RateLimitConfig {
            per_minute: None,
            endpoints: HashMap::from([(LimitClass::GroupsList, limit)]),
            header_reserve: 1,
        };
        let budget: Arc<dyn SharedBudget> = Arc::new(Timeline::default());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let start = std::time::Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..3 {
            let lanes = SharedLanes::new(budget.clone(), &config, 0);
            let sent = sent.clone();
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < Duration::from_millis(2_500) {
                    lanes.take(Some(LimitClass::GroupsList)).await;
                    sent.lock().unwrap().push(start.elapsed());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut sent = sent.lock().unwrap().clone();
        sent.sort();
        let worst = sent
            .iter()
            .enumerate()
            .map(|(i, t)| {
                sent[i..]
                    .iter()
                    .take_while(|u| **u < *t + limit.period)
                    .count()
            })
            .max()
            .unwrap();
        assert!(worst <= 600, "{worst} requests within one 1 s window");
        // And the budget is used, not starved: over 2.5 s, more than two windows' worth.
        assert!(sent.len() > 1_200, "only {} requests in 2.5 s", sent.len());
    }
}
