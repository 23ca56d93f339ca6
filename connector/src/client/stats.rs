//! Per-route counters: requests, statuses, rate-limit waits, 429s and retries. They feed the
//! snapshot summary and the worker's metrics.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::error::Route;

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct RouteStats {
    pub requests: u64,
    /// Responses by status code; transport failures are counted under 0.
    pub statuses: BTreeMap<u16, u64>,
    pub rate_limit_waits: u64,
    pub rate_limit_wait_ms: u64,
    pub too_many_requests: u64,
    pub retries: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Keyed by `METHOD /route/:template`.
    pub routes: BTreeMap<String, RouteStats>,
}

impl StatsSnapshot {
    pub fn total_requests(&self) -> u64 {
        self.routes.values().map(|r| r.requests).sum()
    }
    pub fn total_rate_limit_waits(&self) -> u64 {
        self.routes.values().map(|r| r.rate_limit_waits).sum()
    }
    pub fn total_429s(&self) -> u64 {
        self.routes.values().map(|r| r.too_many_requests).sum()
    }
    pub fn total_retries(&self) -> u64 {
        self.routes.values().map(|r| r.retries).sum()
    }
    pub fn route(&self, route: &str) -> RouteStats {
        self.routes.get(route).cloned().unwrap_or_default()
    }
}

#[derive(Default)]
pub(crate) struct Stats {
    routes: Mutex<BTreeMap<Route, RouteStats>>,
    requests: std::sync::atomic::AtomicU64,
}

impl Stats {
    fn with(&self, route: Route, f: impl FnOnce(&mut RouteStats)) {
        f(self.routes.lock().unwrap().entry(route).or_default())
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn response(&self, route: Route, status: u16) {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.with(route, |r| {
            r.requests += 1;
            *r.statuses.entry(status).or_default() += 1;
            if status == 429 {
                r.too_many_requests += 1;
            }
        })
    }

    pub fn waited(&self, route: Route, waits: u32, d: Duration) {
        if waits > 0 {
            self.with(route, |r| {
                r.rate_limit_waits += waits as u64;
                r.rate_limit_wait_ms += d.as_millis() as u64;
            })
        }
    }

    pub fn retry(&self, route: Route) {
        self.with(route, |r| r.retries += 1)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            routes: self
                .routes
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }
}
