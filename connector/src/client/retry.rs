//! When and how long to wait before sending a request again.

use std::time::{Duration, SystemTime};

use backon::ExponentialBuilder;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::ratelimit::unix_to_duration_from_now;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First exponential backoff delay after a server or connection error (jitter is added). A
    /// 429 without any wait in its headers backs off `RATE_LIMIT_BACKOFF_FACTOR` times slower.
    pub min_delay: Duration,
    /// Cap of the exponential backoff.
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// The longest single wait GitLab may ask for (`Retry-After`, `RateLimit-Reset`) that is
    /// honoured in place. GitLab.com's `/users/:id` window is 10 minutes (docs/gitlab.md, "Rate limits").
    pub max_wait: Duration,
    /// Total time one request may take, waits included.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(60),
            max_retries: 12,
            max_wait: Duration::from_secs(600),
            budget: Duration::from_secs(900),
        }
    }
}

/// A 429 that names no wait (GitLab.com's application limits: windows of a minute or ten)
/// backs off this many times slower than a server error, up to `max_delay`: a transient 5xx is
/// usually gone in a moment, a limit's window is not.
pub const RATE_LIMIT_BACKOFF_FACTOR: u32 = 5;

impl RetryPolicy {
    /// The exponential backoff's next delay for `err`, when GitLab named no wait.
    pub(crate) fn scaled(&self, err: &crate::Error, backoff: Duration) -> Duration {
        if matches!(err, crate::Error::RateLimited { .. }) {
            (backoff * RATE_LIMIT_BACKOFF_FACTOR).min(self.max_delay)
        } else {
            backoff
        }
    }

    /// A policy that never retries.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
    }
}

/// The longest wait read from a header: anything beyond is clamped here, so no later time
/// arithmetic can overflow, whatever a server sends. Waits above the policy's `max_wait` are
/// not honoured in place anyway.
pub(crate) const MAX_HEADER_WAIT: Duration = Duration::from_secs(86_400);

/// The wait of a 429: `Retry-After` (seconds or HTTP date), else `RateLimit-Reset` (Unix
/// seconds). python-gitlab uses the same order.
pub(crate) fn rate_limit_wait(headers: &HeaderMap) -> Option<Duration> {
    retry_after(headers).or_else(|| {
        headers
            .get("ratelimit-reset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(unix_to_duration_from_now)
            .map(|d| d.min(MAX_HEADER_WAIT))
    })
}

/// A 429 body from GitLab's application limiter (`check_rate_limit!`), not Rack::Attack's
/// per-user throttle (`Retry later`): docs/gitlab.md, "Rate limits".
pub(crate) fn is_application_limit(body: &[u8]) -> bool {
    const MARK: &[u8] = b"requested too many times";
    body.len() <= 4_096 && body.windows(MARK.len()).any(|w| w == MARK)
}

/// `Retry-After` alone (seconds or an HTTP date), clamped.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        httpdate::parse_http_date(v)
            .ok()?
            .duration_since(SystemTime::now())
            .unwrap_or_default()
    };
    Some(wait.min(MAX_HEADER_WAIT))
}

#[cfg(test)]
mod scaled_tests {
    use super::*;
    use crate::error::Route;

    #[test]
    fn a_headerless_429_backs_off_slower_than_a_server_error_within_the_cap() {
        let policy = RetryPolicy::default();
        let route = Route::new("GET", "/users/:id");
        let limited = crate::Error::RateLimited {
            route,
            retry_after: None,
            message: "This endpoint has been requested too many times.".into(),
        };
        let server = crate::Error::Server {
            route,
            status: 502,
            message: "Bad Gateway".into(),
            retry_after: None,
        };
        let first = policy.min_delay;
        assert_eq!(policy.scaled(&server, first), Duration::from_millis(100));
        assert_eq!(policy.scaled(&limited, first), Duration::from_millis(500));
        assert_eq!(
            policy.scaled(&limited, Duration::from_secs(30)),
            policy.max_delay
        );
    }
}
