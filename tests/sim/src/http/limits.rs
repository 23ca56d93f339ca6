//! Throttles: Rack::Attack's per-user limit (with `RateLimit-*` headers, 429 + `Retry-After`)
//! and GitLab.com's per-endpoint application limits (429 without those headers).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Caller, Sim, header};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRateLimit {
    pub limit: u64,
    pub period_secs: u64,
}

#[derive(Default)]
pub(crate) struct LimitState {
    /// (throttle name, user, key) → (window start, count)
    windows: HashMap<(&'static str, u64, String), (u64, u64)>,
}

impl LimitState {
    /// Counts a request in the fixed window of `period` and returns the count so far.
    fn hit(
        &mut self,
        name: &'static str,
        user: u64,
        key: String,
        period: u64,
        now: u64,
    ) -> (u64, u64) {
        let start = now - now % period;
        let entry = self.windows.entry((name, user, key)).or_insert((start, 0));
        if entry.0 != start {
            *entry = (start, 0);
        }
        entry.1 += 1;
        (entry.1, start + period)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// GitLab.com's endpoint limits by route: (name, limit, period, per-resource key).
fn endpoint_limit(
    method: &Method,
    route: &str,
    path: &str,
    gitlab_com: bool,
) -> Option<(&'static str, u64, u64, String)> {
    let resource = || path.split('/').take(3).collect::<Vec<_>>().join("/");
    let m = method.as_str();
    let limit = match (m, route) {
        ("DELETE", "/groups/:id/members/:user_id")
        | ("DELETE", "/projects/:id/members/:user_id") => {
            return Some(("members_delete", 60, 60, resource()));
        }
        _ if !gitlab_com => return None,
        ("GET", "/users/:id") => ("users_get", 300, 600, String::new()),
        ("GET", "/projects") => ("projects_list", 2000, 600, String::new()),
        ("GET", "/groups") => ("groups_list", 50, 60, String::new()),
        ("GET", "/groups/:id") => ("group_get", 400, 60, String::new()),
        ("GET", "/groups/:id/projects") => ("group_projects", 600, 60, String::new()),
        ("GET", "/projects/:id") => ("project_get", 400, 60, String::new()),
        ("GET", "/groups/:id/members/all/:user_id")
        | ("GET", "/projects/:id/members/all/:user_id") => ("members_all", 200, 60, resource()),
        _ => return None,
    };
    Some(limit)
}

pub(crate) fn check(
    sim: &Arc<Sim>,
    caller: &Caller,
    method: &Method,
    route: &str,
    path: &str,
) -> Result<HeaderMap, Response> {
    let (rate_limit, endpoint_limits) = {
        let c = sim.config.lock().unwrap();
        (c.rate_limit, c.endpoint_limits)
    };
    let now = unix_now();
    let mut headers = HeaderMap::new();
    let mut state = sim.limits.lock().unwrap();
    if let Some(rl) = rate_limit {
        let (observed, reset) = state.hit(
            "throttle_authenticated_api",
            caller.user_id,
            String::new(),
            rl.period_secs,
            now,
        );
        // RateLimit-Limit is normalised to a per-minute figure.
        let per_minute = (rl.limit * 60).div_ceil(rl.period_secs);
        headers.extend([
            header("ratelimit-name", "throttle_authenticated_api"),
            header("ratelimit-limit", per_minute),
            header("ratelimit-observed", observed),
            header("ratelimit-remaining", rl.limit.saturating_sub(observed)),
            header("ratelimit-reset", reset),
        ]);
        if observed > rl.limit {
            let retry_after = reset.saturating_sub(now).max(1);
            let mut resp = (StatusCode::TOO_MANY_REQUESTS, "Retry later\n").into_response();
            resp.headers_mut().extend(headers);
            resp.headers_mut().extend([
                header("retry-after", retry_after),
                header("ratelimit-resettime", httpdate(reset)),
            ]);
            return Err(resp);
        }
    }
    let gitlab_com = sim.world.read().unwrap().mode == crate::model::Mode::GitlabCom;
    if endpoint_limits
        && let Some((name, limit, period, key)) = endpoint_limit(method, route, path, gitlab_com)
    {
        let (count, _) = state.hit(name, caller.user_id, key, period, now);
        if count > limit {
            return Err((
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"message": {"error": "This endpoint has been requested too many times. Try again later."}})),
            )
                .into_response());
        }
    }
    Ok(headers)
}

fn httpdate(unix: u64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}
