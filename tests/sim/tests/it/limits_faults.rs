//! Rate limits and faults, and what tests can observe and change through `/_sim`.

use std::time::Duration;

use futures::TryStreamExt;
use gitlab_connector::Error;
use gitlab_connector::api::Source;
use gitlab_connector::client::{IdOrPath, RetryPolicy};
use gitlab_sim::{Mode, SimConfig, UserRateLimit};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn the_user_throttle_sends_ratelimit_headers_and_429s() {
    const PERIOD: u64 = 3600;
    let (allowed, throttled, other_user) = in_one_throttle_window(PERIOD, || async {
        let f = fixture(Mode::SelfManaged);
        let mut cfg = SimConfig::for_mode(Mode::SelfManaged);
        cfg.rate_limit = Some(UserRateLimit {
            limit: 3,
            period_secs: PERIOD,
        });
        let sim = start(f.world, cfg).await;
        let url = format!("{}/api/v4/user", sim.url);
        let mut allowed = Vec::new();
        for _ in 0..3 {
            let (status, h, _) = raw_get(&url, &f.owner_token).await;
            allowed.push((status, h));
        }
        let r = get_with_token(&url, &f.owner_token).await;
        let throttled = (
            r.status().as_u16(),
            r.headers().clone(),
            r.text().await.unwrap(),
        );
        // Another user has their own budget.
        let (other_user, _, _) = raw_get(&url, &f.admin_token).await;
        (allowed, throttled, other_user)
    })
    .await;
    for ((status, h), expected_remaining) in allowed.iter().zip([2, 1, 0]) {
        assert_eq!(*status, 200);
        assert_eq!(
            h["ratelimit-remaining"],
            expected_remaining.to_string().as_str()
        );
        assert_eq!(
            h["ratelimit-limit"], "1",
            "normalised per minute: 3/hour rounds up to 1"
        );
        assert!(h.contains_key("ratelimit-reset") && h.contains_key("ratelimit-observed"));
    }
    let (status, h, body) = throttled;
    assert_eq!(status, 429);
    let retry_after: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=PERIOD).contains(&retry_after));
    assert!(h.contains_key("ratelimit-resettime"));
    assert_eq!(body, "Retry later\n");
    assert_eq!(other_user, 200);
}

#[tokio::test]
async fn gitlab_com_endpoint_limits_answer_429_without_headers() {
    // `GET /users/:id`: 300 requests per 10 minutes.
    let (statuses, last_headers, last_body, counted_429s) = in_one_throttle_window(600, || async {
        let f = fixture(Mode::GitlabCom);
        let sim = start(f.world, SimConfig::for_mode(Mode::GitlabCom)).await;
        let url = format!("{}/api/v4/users/{}", sim.url, f.ids.alice);
        let mut statuses = Vec::new();
        let mut last = None;
        for _ in 0..301 {
            let r = get_with_token(&url, &f.owner_token).await;
            statuses.push(r.status().as_u16());
            last = Some(r);
        }
        let r = last.unwrap();
        let headers = r.headers().clone();
        let body: serde_json::Value = r.json().await.unwrap();
        let counted = sim.sim.counts()["GET /users/:id"]
            .statuses
            .get(&429)
            .copied();
        (statuses, headers, body, counted)
    })
    .await;
    assert!(statuses[..300].iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(statuses[300], 429);
    assert!(
        last_headers.get("ratelimit-remaining").is_none()
            && last_headers.get("retry-after").is_none()
    );
    assert_eq!(
        last_body["message"]["error"],
        "This endpoint has been requested too many times. Try again later."
    );
    assert_eq!(counted_429s, Some(1));
}

#[tokio::test]
async fn member_deletion_is_limited_per_group() {
    // 60 deletions per minute per group or project.
    let (statuses, other_group) = in_one_throttle_window(60, || async {
        let f = fixture(Mode::SelfManaged);
        let sim = start(f.world, SimConfig::for_mode(Mode::SelfManaged)).await;
        let delete = |group: u64| {
            let url = format!("{}/api/v4/groups/{group}/members/999999", sim.url);
            let token = f.owner_token.clone();
            async move {
                http()
                    .delete(&url)
                    .header("PRIVATE-TOKEN", &token)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        let mut statuses = Vec::new();
        for _ in 0..61 {
            statuses.push(delete(f.ids.eng).await);
        }
        (statuses, delete(f.ids.ops).await)
    })
    .await;
    assert!(statuses[..60].iter().all(|s| *s == 404), "{statuses:?}");
    assert_eq!(statuses[60], 429);
    assert_eq!(other_group, 404, "another group is not affected");
}

#[tokio::test]
async fn our_client_stays_under_the_throttle() {
    let f = fixture(Mode::SelfManaged);
    let mut cfg = SimConfig::for_mode(Mode::SelfManaged);
    cfg.rate_limit = Some(UserRateLimit {
        limit: 20,
        period_secs: 2,
    });
    let sim = start(f.world, cfg).await;
    let c = client(&sim.url, &f.owner_token);
    for _ in 0..50 {
        c.current_user().await.unwrap();
    }
    let s = c.stats();
    assert_eq!(s.total_429s(), 0, "{s:?}");
    assert!(s.total_rate_limit_waits() > 0);
}

#[tokio::test]
async fn injected_faults_at_start_and_at_run_time() {
    let f = fixture(Mode::SelfManaged);
    let mut cfg = SimConfig::for_mode(Mode::SelfManaged);
    cfg.faults.error_rate = 1.0;
    let sim = start(f.world, cfg).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let (status, _, _) = raw_get(&format!("{}/api/v4/user", sim.url), &f.owner_token).await;
        seen.insert(status);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![500, 502, 503]);

    // At run time: one project always 403, everything else fine.
    sim_put(
        &sim.url,
        "/faults",
        json!({"rules": [{"path": format!("/projects/{}", f.ids.api), "status": 403}]}),
    )
    .await;
    let c = client(&sim.url, &f.owner_token);
    let e = c
        .members(&Source::project(f.ids.api))
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
    assert!(c.project(&IdOrPath::Id(f.ids.deploy)).await.is_ok());

    // A resource that always answers 500: the client retries, then gives up.
    sim_put(
        &sim.url,
        "/faults",
        json!({"rules": [{"path": format!("/groups/{}", f.ids.eng), "status": 500}]}),
    )
    .await;
    let e = c.group(&IdOrPath::Id(f.ids.eng)).await.unwrap_err();
    assert!(matches!(e, Error::Server { status: 500, .. }), "{e:?}");
    assert_eq!(count(&sim, "GET /groups/:id"), 4);

    // Dropped connections and resource locks are transient.
    sim_put(&sim.url, "/faults", json!({"drop_rate": 1.0})).await;
    let e = c.current_user().await.unwrap_err();
    assert!(matches!(e, Error::Transport { .. }), "{e:?}");
    sim_put(&sim.url, "/faults", json!({"lock_rate": 1.0})).await;
    let e = c.current_user().await.unwrap_err();
    assert!(matches!(e, Error::ResourceLock { .. }), "{e:?}");

    // Latency.
    sim_put(&sim.url, "/faults", json!({"latency_ms": 300})).await;
    let t = std::time::Instant::now();
    c.current_user().await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn transient_faults_are_survived_by_the_client() {
    let f = fixture(Mode::SelfManaged);
    let mut cfg = SimConfig::for_mode(Mode::SelfManaged);
    cfg.faults.error_rate = 0.2;
    cfg.faults.drop_rate = 0.05;
    cfg.faults.lock_rate = 0.05;
    let sim = start(f.world, cfg).await;
    let mut c = gitlab_connector::ClientConfig::new(
        gitlab_connector::client::BaseUrl::parse(&sim.url).unwrap(),
        gitlab_connector::Secret::new(f.owner_token.clone()),
    );
    c.rate_limit = gitlab_connector::client::RateLimitConfig::unlimited();
    c.retry = RetryPolicy {
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(5),
        max_retries: 12,
        ..RetryPolicy::default()
    };
    let c = gitlab_connector::Client::new(c).unwrap();
    for _ in 0..40 {
        c.group(&IdOrPath::Id(f.ids.org)).await.unwrap();
    }
    assert!(c.stats().total_retries() > 0);
}

#[tokio::test]
async fn request_log_clock_and_state_changes_behind_the_back() {
    let (sim, f) = start_fixture(Mode::SelfManaged).await;
    let c = client(&sim.url, &f.owner_token);
    // A member added behind the worker's back is visible through the API.
    sim_post(&sim.url, "/members", json!({"resource": {"type": "group", "id": f.ids.eng}, "user_id": f.ids.erin, "access_level": 20, "expires_at": (chrono::Utc::now().date_naive() + chrono::Duration::days(1)).to_string()})).await;
    let m = c
        .direct_member(&Source::group(f.ids.eng), f.ids.erin)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.access_level.0, 20);
    // Two days later the membership has expired: no effective access, and the daily cron removes it.
    let clock = sim_post(&sim.url, "/clock", json!({"advance_days": 2})).await;
    assert!(clock["today"].is_string());
    assert!(
        c.effective_member(&Source::group(f.ids.eng), f.ids.erin)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        c.direct_member(&Source::group(f.ids.eng), f.ids.erin)
            .await
            .unwrap()
            .is_some()
    );
    let clock = sim_post(&sim.url, "/clock", json!({"run_expiry_cron": true})).await;
    assert_eq!(clock["removed"], 1);
    assert!(
        c.direct_member(&Source::group(f.ids.eng), f.ids.erin)
            .await
            .unwrap()
            .is_none()
    );
    // The request log and per-route counters.
    let counts: serde_json::Value = http()
        .get(format!("{}/_sim/counts", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts["GET /groups/:id/members/:user_id"]["requests"], 3);
    assert_eq!(
        counts["GET /groups/:id/members/all/:user_id"]["statuses"]["404"],
        1
    );
    let log: serde_json::Value = http()
        .get(format!("{}/_sim/requests", sim.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Three direct-member reads and one members/all read.
    assert_eq!(log.as_array().unwrap().len(), 4);
    assert!(
        log.as_array()
            .unwrap()
            .iter()
            .all(|e| e["user_id"] == f.ids.owner)
    );
    http()
        .delete(format!("{}/_sim/requests", sim.url))
        .send()
        .await
        .unwrap();
    assert!(sim.sim.requests().is_empty());
}
