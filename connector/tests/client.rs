//! Behaviour of the GitLab client against wiremock doubles shaped like GitLab's documented
//! responses (docs/gitlab.md): pagination, rate limits, retries, error classification, secrets.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use gitlab_connector::api::{
    AccessLevel, AddMember, CreateInvitation, EditMember, Member, ProjectsQuery, RemoveMember,
    Source, UsersQuery,
};
use gitlab_connector::client::{
    BaseUrl, IdOrPath, Limit, LimitClass, RateLimitConfig, RetryPolicy,
};
use gitlab_connector::{Client, ClientConfig, Error, Secret};
use serde_json::{Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "test-token-value-0123456789";

fn config(base: &str) -> ClientConfig {
    let mut c = ClientConfig::new(BaseUrl::parse(base).unwrap(), Secret::new(TOKEN));
    c.rate_limit = RateLimitConfig::unlimited();
    c.retry = RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retries: 3,
        max_wait: Duration::from_secs(5),
        budget: Duration::from_secs(20),
    };
    c
}

fn client(server: &MockServer) -> Client {
    Client::new(config(&server.uri())).unwrap()
}

fn member_json(id: u64) -> Value {
    json!({
        "id": id, "username": format!("user{id}"), "name": format!("User {id}"), "state": "active",
        "avatar_url": null, "web_url": format!("https://gitlab.example.com/user{id}"),
        "access_level": 30, "created_at": "2024-01-01T00:00:00.000Z",
        "created_by": {"id": 1, "username": "root", "name": "Administrator", "state": "active"},
        "expires_at": null, "membership_state": "active", "locked": false
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Serves `total` members with offset pagination like GitLab: `X-Next-Page`, `X-Page`,
/// `X-Per-Page`, `Link`, and the totals only up to 10,000 records.
struct OffsetMembers {
    total: u64,
    base: String,
}

impl Respond for OffsetMembers {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let q: std::collections::HashMap<_, _> = req.url.query_pairs().into_owned().collect();
        let per_page: u64 = q
            .get("per_page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(20)
            .min(100);
        let page: u64 = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
        let start = (page - 1) * per_page;
        let end = (start + per_page).min(self.total);
        let items: Vec<Value> = (start..end).map(|i| member_json(i + 1)).collect();
        let last = end >= self.total;
        let mut t = ResponseTemplate::new(200)
            .set_body_json(items)
            .insert_header("x-page", page.to_string())
            .insert_header("x-per-page", per_page.to_string())
            .insert_header(
                "x-next-page",
                if last {
                    String::new()
                } else {
                    (page + 1).to_string()
                },
            )
            .insert_header(
                "x-prev-page",
                if page > 1 {
                    (page - 1).to_string()
                } else {
                    String::new()
                },
            );
        if self.total <= 10_000 {
            let pages = self.total.div_ceil(per_page);
            t = t
                .insert_header("x-total", self.total.to_string())
                .insert_header("x-total-pages", pages.to_string());
        }
        if !last {
            t = t.insert_header(
                "link",
                format!(
                    r#"<{}{}?page={}&per_page={per_page}>; rel="next", <{}{}?page=1&per_page={per_page}>; rel="first""#,
                    self.base,
                    req.url.path(),
                    page + 1,
                    self.base,
                    req.url.path()
                ),
            );
        }
        t
    }
}

#[tokio::test]
async fn sends_the_token_in_private_token_header_and_parses_the_user() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/user"))
        .and(header("PRIVATE-TOKEN", TOKEN))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 7, "username": "svc", "name": "Service", "state": "active", "locked": false,
            "is_admin": true, "two_factor_enabled": false, "last_activity_on": "2026-11-01",
            "some_future_field": {"nested": [1, 2]}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let u = client(&server).current_user().await.unwrap();
    assert_eq!(
        (u.id, u.username.as_str(), u.is_admin),
        (7, "svc", Some(true))
    );
    assert_eq!(
        u.last_activity_on,
        chrono::NaiveDate::from_ymd_opt(2026, 11, 1)
    );
}

#[tokio::test]
async fn base_url_with_a_path_prefix_and_encoded_paths() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/gitlab/api/v4/projects/org%2Fsub%2Fmy%2Eapp"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 12, "name": "my.app", "path": "my.app", "path_with_namespace": "org/sub/my.app",
            "namespace": {"id": 3, "kind": "group", "full_path": "org/sub", "parent_id": 2},
            "archived": false, "shared_with_groups": [
                {"group_id": 9, "group_name": "auditors", "group_full_path": "auditors",
                 "group_access_level": 25, "expires_at": "2027-01-31"}
            ]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let c = Client::new(config(&format!("{}/gitlab/api/v4/", server.uri()))).unwrap();
    let p = c.project(&IdOrPath::parse("org/sub/my.app")).await.unwrap();
    assert_eq!(p.namespace.id, 3);
    assert_eq!(
        p.shared_with_groups[0].group_access_level,
        AccessLevel::SECURITY_MANAGER
    );
}

#[tokio::test]
async fn offset_pagination_follows_link_headers_across_pages() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/5/members"))
        .and(query_param("per_page", "100"))
        .respond_with(OffsetMembers {
            total: 250,
            base: server.uri(),
        })
        .expect(3)
        .mount(&server)
        .await;
    let members: Vec<Member> = client(&server)
        .members(&Source::group(5))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(members.len(), 250);
    assert_eq!(members.last().unwrap().id, 250);
}

#[tokio::test]
async fn offset_pagination_uses_x_next_page_without_link() {
    let server = MockServer::start().await;
    for (page, ids, next) in [(None, 1..=100u64, "2"), (Some("2"), 101..=150, "")] {
        let mut m = Mock::given(method("GET")).and(path("/api/v4/projects/8/invitations"));
        m = match page {
            Some(p) => m.and(query_param("page", p)),
            None => m.and(query_param_is_missing("page")),
        };
        let body: Vec<Value> = ids
            .map(|i| json!({"id": i, "invite_email": format!("u{i}@example.com"), "access_level": 10, "expires_at": null}))
            .collect();
        m.respond_with(
            ResponseTemplate::new(200)
                .set_body_json(body)
                .insert_header("x-next-page", next)
                .insert_header("x-page", page.unwrap_or("1")),
        )
        .expect(1)
        .mount(&server)
        .await;
    }
    let inv: Vec<_> = client(&server)
        .invitations(&Source::project(8), None)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(inv.len(), 150);
}

#[tokio::test]
async fn twenty_five_thousand_records_without_totals_are_all_read() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/1/members"))
        .respond_with(OffsetMembers {
            total: 25_000,
            base: server.uri(),
        })
        .mount(&server)
        .await;
    let c = client(&server);
    let mut ids = std::collections::HashSet::new();
    let mut stream = c.members(&Source::group(1));
    while let Some(m) = stream.try_next().await.unwrap() {
        assert!(ids.insert(m.id), "duplicate {}", m.id);
    }
    assert_eq!(ids.len(), 25_000);
    assert_eq!(c.stats().route("GET /groups/:id/members").requests, 250);
}

/// Keyset pages for `/projects`: `Link rel="next"` carries `id_after`, nothing else.
struct KeysetProjects {
    total: u64,
    base: String,
}

fn project_json(id: u64) -> Value {
    json!({"id": id, "name": format!("p{id}"), "path": format!("p{id}"),
           "path_with_namespace": format!("org/p{id}"),
           "namespace": {"id": 1, "kind": "group", "full_path": "org"}, "archived": false})
}

impl Respond for KeysetProjects {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let q: std::collections::HashMap<_, _> = req.url.query_pairs().into_owned().collect();
        assert_eq!(q.get("pagination").map(String::as_str), Some("keyset"));
        assert_eq!(q.get("order_by").map(String::as_str), Some("id"));
        assert_eq!(q.get("sort").map(String::as_str), Some("asc"));
        assert!(!q.contains_key("page"), "keyset requests carry no page");
        let after: u64 = q.get("id_after").and_then(|v| v.parse().ok()).unwrap_or(0);
        let items: Vec<Value> = (after + 1..=(after + 100).min(self.total))
            .map(project_json)
            .collect();
        let mut t = ResponseTemplate::new(200).set_body_json(&items);
        if after + 100 < self.total {
            t = t.insert_header(
                "link",
                format!(
                    r#"<{}/api/v4/projects?id_after={}&order_by=id&pagination=keyset&per_page=100&sort=asc&verbatim=yes>; rel="next""#,
                    self.base,
                    after + 100
                ),
            );
        }
        t
    }
}

#[tokio::test]
async fn keyset_pagination_follows_link_verbatim() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/projects"))
        .and(query_param_is_missing("verbatim"))
        .respond_with(KeysetProjects {
            total: 230,
            base: server.uri(),
        })
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/projects"))
        .and(query_param("verbatim", "yes"))
        .respond_with(KeysetProjects {
            total: 230,
            base: server.uri(),
        })
        .expect(2)
        .mount(&server)
        .await;
    let projects: Vec<_> = client(&server)
        .projects(&ProjectsQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(projects.len(), 230);
    assert!(projects.windows(2).all(|w| w[0].id < w[1].id));
}

#[tokio::test]
async fn users_keyset_follows_an_opaque_cursor() {
    let server = MockServer::start().await;
    let user =
        |id: u64| json!({"id": id, "username": format!("u{id}"), "name": "U", "state": "active"});
    Mock::given(method("GET"))
        .and(path("/api/v4/users"))
        .and(query_param("pagination", "keyset"))
        .and(query_param_is_missing("cursor"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(vec![user(1), user(2)])
                .insert_header("link", format!(r#"<{}/api/v4/users?cursor=eyJpZCI6IjIiLCJfa2QiOiJuIn0%3D&order_by=id&pagination=keyset&per_page=100&sort=asc>; rel="next""#, server.uri())),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/users"))
        .and(query_param("cursor", "eyJpZCI6IjIiLCJfa2QiOiJuIn0="))
        .respond_with(ResponseTemplate::new(200).set_body_json(vec![user(3)]))
        .expect(1)
        .mount(&server)
        .await;
    let users: Vec<_> = client(&server)
        .users(&UsersQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(
        users.iter().map(|u| u.id).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[tokio::test]
async fn offset_cap_switches_to_keyset_where_supported() {
    let server = MockServer::start().await;
    let offset_page = |page: u64| {
        let items: Vec<Value> = ((page - 1) * 100 + 1..=page * 100)
            .map(project_json)
            .collect();
        ResponseTemplate::new(200)
            .set_body_json(items)
            .insert_header("x-next-page", (page + 1).to_string())
    };
    Mock::given(method("GET"))
        .and(path("/api/v4/projects"))
        .and(query_param_is_missing("page"))
        .and(query_param_is_missing("pagination"))
        .respond_with(offset_page(1))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/projects"))
        .and(query_param("page", "2"))
        .respond_with(offset_page(2))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET")).and(path("/api/v4/projects")).and(query_param("page", "3"))
        .respond_with(ResponseTemplate::new(405).set_body_json(json!({"error": "Offset pagination has a maximum allowed offset of 200 for requests that return objects of type Project. Remaining records can be retrieved using keyset pagination."})))
        .expect(1).mount(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/v4/projects"))
        .and(query_param("pagination", "keyset"))
        .and(query_param("id_after", "200"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json((201..=250).map(project_json).collect::<Vec<_>>()),
        )
        .expect(1)
        .mount(&server)
        .await;
    let projects: Vec<_> = client(&server)
        .projects_offset(&ProjectsQuery::default())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(projects.len(), 250);
    let unique: std::collections::BTreeSet<_> = projects.iter().map(|p| p.id).collect();
    assert_eq!(unique.len(), 250);
}

#[tokio::test]
async fn offset_cap_is_an_error_where_keyset_is_not_supported() {
    let server = MockServer::start().await;
    Mock::given(method("GET")).and(path("/api/v4/groups/1/descendant_groups"))
        .respond_with(ResponseTemplate::new(405).set_body_json(json!({"error": "Offset pagination has a maximum allowed offset of 50000 for requests that return objects of type Group. Remaining records can be retrieved using keyset pagination."})))
        .expect(1).mount(&server).await;
    let err = client(&server)
        .descendant_groups(&IdOrPath::Id(1))
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::OffsetLimit { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("GET /groups/:id/descendant_groups")
    );
}

#[tokio::test]
async fn too_many_requests_waits_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/3"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_string("Retry later\n"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/3"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": 3, "full_path": "org", "parent_id": null})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let t = Instant::now();
    let g = c.group(&IdOrPath::Id(3)).await.unwrap();
    assert_eq!(g.full_path, "org");
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    let s = c.stats().route("GET /groups/:id");
    assert_eq!((s.requests, s.too_many_requests, s.retries), (2, 1, 1));
}

#[tokio::test]
async fn too_many_requests_without_retry_after_waits_for_ratelimit_reset() {
    let server = MockServer::start().await;
    let reset = unix_now() + 2;
    Mock::given(method("GET"))
        .and(path("/api/v4/user"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("ratelimit-limit", "60")
                .insert_header("ratelimit-observed", "61")
                .insert_header("ratelimit-remaining", "0")
                .insert_header("ratelimit-reset", reset.to_string())
                .set_body_string("Retry later"),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/user"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 1, "username": "a"})))
        .expect(1)
        .mount(&server)
        .await;
    client(&server).current_user().await.unwrap();
    assert!(unix_now() >= reset, "retried before RateLimit-Reset");
}

#[tokio::test]
async fn too_many_requests_without_any_header_backs_off_exponentially() {
    let server = MockServer::start().await;
    // GitLab.com's per-endpoint limits answer 429 without RateLimit headers.
    Mock::given(method("GET")).and(path("/api/v4/users/9"))
        .respond_with(ResponseTemplate::new(429).set_body_json(json!({"message": {"error": "This endpoint has been requested too many times. Try again later."}})))
        .up_to_n_times(2).with_priority(1).mount(&server).await;
    Mock::given(method("GET"))
        .and(path("/api/v4/users/9"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": 9, "username": "nine"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(c.user(9).await.unwrap().id, 9);
    assert_eq!(c.stats().route("GET /users/:id").too_many_requests, 2);
}

#[tokio::test]
async fn a_wait_longer_than_allowed_is_returned_not_slept() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/user"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "3600"))
        .expect(1)
        .mount(&server)
        .await;
    let t = Instant::now();
    let err = client(&server).current_user().await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert!(err.is_transient());
}

#[tokio::test]
async fn ratelimit_headers_slow_the_client_before_zero() {
    let server = MockServer::start().await;
    let reset = unix_now() + 2;
    let calls = Arc::new(AtomicUsize::new(0));
    struct Budget {
        calls: Arc<AtomicUsize>,
        reset: u64,
    }
    impl Respond for Budget {
        fn respond(&self, _: &Request) -> ResponseTemplate {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) as u64;
            let now = unix_now();
            // A window of 6 requests ending at `reset`; any request beyond that is a 429.
            if now < self.reset && n >= 6 {
                return ResponseTemplate::new(429).insert_header("retry-after", "1");
            }
            let remaining = if now < self.reset { 5 - n } else { 59 };
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": 1, "username": "a"}))
                .insert_header("ratelimit-limit", "6")
                .insert_header("ratelimit-remaining", remaining.to_string())
                .insert_header(
                    "ratelimit-reset",
                    if now < self.reset {
                        self.reset
                    } else {
                        now + 60
                    }
                    .to_string(),
                )
        }
    }
    Mock::given(method("GET"))
        .and(path("/api/v4/user"))
        .respond_with(Budget {
            calls: calls.clone(),
            reset,
        })
        .mount(&server)
        .await;
    let c = client(&server);
    // Eight requests into a window of six: an unpaced client gets two 429s.
    for _ in 0..8 {
        c.current_user().await.unwrap();
    }
    let s = c.stats().route("GET /user");
    assert_eq!(s.too_many_requests, 0, "the client burst into a 429");
    assert!(
        s.rate_limit_waits >= 1,
        "the client never slowed down: {s:?}"
    );
    assert!(
        unix_now() >= reset,
        "requests beyond the reserve were sent before the reset"
    );
}

#[tokio::test]
async fn endpoint_limits_throttle_member_deletion_per_group() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path_regex_members())
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri());
    cfg.rate_limit.endpoints.insert(
        LimitClass::MemberDelete,
        Limit::per(2, Duration::from_secs(1)),
    );
    let c = Client::new(cfg).unwrap();
    let g = Source::group(4);
    for user in 1..=3 {
        c.remove_member(
            &g,
            user,
            RemoveMember {
                skip_subresources: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let s = c.stats().route("DELETE /groups/:id/members/:user_id");
    assert_eq!(s.requests, 3);
    assert!(s.rate_limit_waits >= 1, "{s:?}");
    let received = server.received_requests().await.unwrap();
    assert!(
        received
            .iter()
            .all(|r| r.url.query().unwrap().contains("skip_subresources=true"))
    );
}

fn path_regex_members() -> wiremock::matchers::PathRegexMatcher {
    wiremock::matchers::path_regex(r"^/api/v4/groups/4/members/\d+$")
}

#[tokio::test]
async fn server_errors_are_retried_for_reads() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/3"))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>502 Bad Gateway</html>"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/3"))
        .respond_with(
            ResponseTemplate::new(500)
                .set_body_json(json!({"message": "500 Internal Server Error"})),
        )
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/3"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"id": 3, "full_path": "org"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    c.group(&IdOrPath::Id(3)).await.unwrap();
    assert_eq!(c.stats().route("GET /groups/:id").requests, 3);
}

#[tokio::test]
async fn persistent_server_errors_end_with_a_server_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/3"))
        .respond_with(ResponseTemplate::new(503))
        .expect(4)
        .mount(&server)
        .await;
    let err = client(&server).group(&IdOrPath::Id(3)).await.unwrap_err();
    assert!(matches!(err, Error::Server { status: 503, .. }), "{err:?}");
}

#[tokio::test]
async fn connection_errors_are_retried_then_reported_without_url_or_token() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let c = Client::new(config(&format!("http://127.0.0.1:{port}"))).unwrap();
    let err = c
        .project(&IdOrPath::parse("secret-group/x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");
    assert_eq!(c.stats().route("GET /projects/:id").retries, 3);
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(TOKEN) && !text.contains("secret-group"),
        "{text}"
    );
}

#[tokio::test]
async fn resource_lock_is_retried_after_rereading_but_member_exists_is_not() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v4/projects/6/members"))
        .respond_with(
            ResponseTemplate::new(409)
                .set_body_json(json!({"message": "409 Conflict: Resource lock"})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/v4/projects/6/members"))
        .and(body_json(
            json!({"user_id": 11, "access_level": 30, "expires_at": "2026-12-01"}),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(member_json(11)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/projects/6/members/11"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": "404 Not found"})))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let add = AddMember {
        user_id: 11,
        access_level: AccessLevel::DEVELOPER,
        expires_at: chrono::NaiveDate::from_ymd_opt(2026, 12, 1),
        member_role_id: None,
    };
    let m = c.add_member(&Source::project(6), &add).await.unwrap();
    assert_eq!(m.id, 11);

    let server2 = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v4/projects/6/members"))
        .respond_with(
            ResponseTemplate::new(409).set_body_json(json!({"message": "Member already exists"})),
        )
        .expect(1)
        .mount(&server2)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server2)
        .await;
    let err = client(&server2)
        .add_member(&Source::project(6), &add)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyMember { .. }), "{err:?}");
}

#[tokio::test]
async fn a_write_that_landed_despite_an_error_is_not_sent_again() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v4/groups/2/members"))
        .respond_with(ResponseTemplate::new(502))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/2/members/11"))
        .respond_with(ResponseTemplate::new(200).set_body_json(member_json(11)))
        .expect(1)
        .mount(&server)
        .await;
    let add = AddMember {
        user_id: 11,
        access_level: AccessLevel::DEVELOPER,
        expires_at: None,
        member_role_id: None,
    };
    let m = client(&server)
        .add_member(&Source::group(2), &add)
        .await
        .unwrap();
    assert_eq!(m.access_level, AccessLevel::DEVELOPER);
}

#[tokio::test]
async fn edit_member_sends_the_full_intended_state() {
    let server = MockServer::start().await;
    Mock::given(method("PUT"))
        .and(path("/api/v4/groups/2/members/11"))
        .and(body_json(
            json!({"access_level": 40, "expires_at": null, "member_role_id": 7}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(member_json(11)))
        .expect(1)
        .mount(&server)
        .await;
    let edit = EditMember {
        access_level: AccessLevel::MAINTAINER,
        expires_at: None,
        member_role_id: Some(7),
    };
    client(&server)
        .edit_member(&Source::group(2), 11, &edit)
        .await
        .unwrap();
}

#[tokio::test]
async fn token_rotation_is_never_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v4/personal_access_tokens/self/rotate"))
        .respond_with(ResponseTemplate::new(500))
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server)
        .rotate_token_self(chrono::NaiveDate::from_ymd_opt(2027, 11, 1).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Server { .. }));

    let ok = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v4/personal_access_tokens/self/rotate"))
        .and(body_json(json!({"expires_at": "2027-11-01"})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": 43, "name": "svc", "revoked": false, "active": true, "scopes": ["api"],
            "user_id": 7, "expires_at": "2027-11-01", "token": "new-token-value-9876543210"
        })))
        .expect(1)
        .mount(&ok)
        .await;
    let rotated = client(&ok)
        .rotate_token_self(chrono::NaiveDate::from_ymd_opt(2027, 11, 1).unwrap())
        .await
        .unwrap();
    assert_eq!(rotated.token.expose(), "new-token-value-9876543210");
    assert!(!format!("{rotated:?}").contains("new-token-value"));
}

#[tokio::test]
async fn unauthorized_expired_and_revoked_tokens_are_told_apart() {
    let server = MockServer::start().await;
    let oauth = |desc: &str| {
        ResponseTemplate::new(401)
            .insert_header(
                "www-authenticate",
                "Bearer realm=\"Protected by OAuth 2.0\", error=\"invalid_token\"",
            )
            .set_body_json(json!({"error": "invalid_token", "error_description": desc}))
    };
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/1"))
        .respond_with(oauth(
            "Token is expired. You can either do re-authorization or token refresh.",
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/2"))
        .respond_with(oauth(
            "Token was revoked. You have to re-authorize from the user.",
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/3"))
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"message": "401 Unauthorized"})),
        )
        .mount(&server)
        .await;
    let c = client(&server);
    let e1 = c.group(&IdOrPath::Id(1)).await.unwrap_err();
    let e2 = c.group(&IdOrPath::Id(2)).await.unwrap_err();
    let e3 = c.group(&IdOrPath::Id(3)).await.unwrap_err();
    assert!(matches!(e1, Error::TokenExpired { .. }), "{e1:?}");
    assert!(matches!(e2, Error::TokenRevoked { .. }), "{e2:?}");
    assert!(matches!(e3, Error::Unauthorized { .. }), "{e3:?}");
    for e in [&e1, &e2, &e3] {
        assert!(!e.is_transient());
        let text = format!("{e} {e:?}");
        assert!(!text.contains(TOKEN), "{text}");
        assert!(
            text.contains("GITLAB_TOKEN"),
            "the message says what to do: {text}"
        );
    }
    // 401s are not retried.
    assert_eq!(c.stats().total_requests(), 3);
}

#[tokio::test]
async fn insufficient_scope_and_plain_forbidden() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE")).and(path("/api/v4/groups/1/members/5"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({
            "error": "insufficient_scope",
            "error_description": "The request requires higher privileges than provided by the access token.",
            "scope": "api"})))
        .expect(1).mount(&server).await;
    Mock::given(method("POST"))
        .and(path("/api/v4/users/5/block"))
        .respond_with(ResponseTemplate::new(403).set_body_json(json!({"message": "403 Forbidden"})))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let e = c
        .remove_member(&Source::group(1), 5, RemoveMember::default())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InsufficientScope { .. }), "{e:?}");
    assert!(e.to_string().contains("api"));
    let e = c
        .user_action(5, gitlab_connector::api::UserAction::Block)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Forbidden { .. }), "{e:?}");
}

#[tokio::test]
async fn invitation_201_with_errors_is_an_error_per_address() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/v4/groups/1/invitations"))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "status": "error",
            "message": {"new@example.com": "Invite email has already been taken"}})))
        .expect(1)
        .mount(&server)
        .await;
    let err = client(&server)
        .invite(
            &Source::group(1),
            &CreateInvitation {
                email: "new@example.com".into(),
                access_level: AccessLevel::DEVELOPER,
                expires_at: None,
                member_role_id: None,
            },
        )
        .await
        .unwrap_err();
    match &err {
        Error::InvitationErrors { errors, .. } => {
            assert_eq!(
                errors["new@example.com"],
                "Invite email has already been taken"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("new@example.com: Invite email has already been taken")
    );
}

#[tokio::test]
async fn validation_errors_keep_gitlabs_field_messages() {
    let server = MockServer::start().await;
    Mock::given(method("POST")).and(path("/api/v4/projects/6/members"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"message": {"access_level": ["should be greater than or equal to Developer inherited membership from group Org"]}})))
        .expect(1).mount(&server).await;
    let add = AddMember {
        user_id: 2,
        access_level: AccessLevel::GUEST,
        expires_at: None,
        member_role_id: None,
    };
    let err = client(&server)
        .add_member(&Source::project(6), &add)
        .await
        .unwrap_err();
    match err {
        Error::Validation { fields, .. } => {
            assert!(fields["access_level"][0].contains("inherited"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn members_parse_future_levels_timestamps_and_custom_roles() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/1/members"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([
            {"id": 1, "username": "a", "name": "A", "state": "active", "access_level": 25,
             "expires_at": "2026-12-24T00:00:00.000Z", "membership_state": "awaiting",
             "member_role": {"id": 3, "name": "Auditor", "base_access_level": 10, "extra": true},
             "group_saml_identity": {"extern_uid": "x", "provider": "group_saml"}},
            {"id": 2, "username": "b", "name": "B", "state": "blocked", "access_level": 70}
        ])))
        .mount(&server)
        .await;
    let m: Vec<Member> = client(&server)
        .members(&Source::group(1))
        .try_collect()
        .await
        .unwrap();
    assert_eq!(m[0].access_level, AccessLevel::SECURITY_MANAGER);
    assert_eq!(
        m[0].expires_at,
        chrono::NaiveDate::from_ymd_opt(2026, 12, 24)
    );
    assert!(m[0].is_awaiting());
    assert_eq!(m[0].member_role_id(), Some(3));
    assert_eq!(m[1].access_level, AccessLevel(70));
    assert_eq!(m[1].member_role_id(), None);
}

#[tokio::test]
async fn the_token_never_appears_in_errors_or_debug_output() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(404).set_body_json(json!({"message": "404 Group Not Found"})),
        )
        .mount(&server)
        .await;
    let c = client(&server);
    let err = c.group(&IdOrPath::parse("hidden")).await.unwrap_err();
    assert!(err.is_not_found());
    for text in [
        format!("{err}"),
        format!("{err:?}"),
        format!("{c:?}"),
        format!("{:?}", c.config()),
    ] {
        assert!(!text.contains(TOKEN), "{text}");
    }
    assert!(format!("{:?}", c.config()).contains("[redacted]"));
}

#[tokio::test]
async fn the_connector_bucket_spaces_requests() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/user"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": 1, "username": "a"})))
        .expect(10)
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri());
    // 120/min: a burst of 6, then one request every ~0.53 s.
    cfg.rate_limit = RateLimitConfig::unlimited().with_per_minute(Some(120));
    let c = Client::new(cfg).unwrap();
    for _ in 0..10 {
        c.current_user().await.unwrap();
    }
    let s = c.stats().route("GET /user");
    assert!(s.rate_limit_waits >= 3, "{s:?}");
    assert!(s.rate_limit_wait_ms >= 1000, "{s:?}");
}

#[tokio::test]
async fn retries_stop_at_the_request_budget() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/3"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "1"))
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri());
    cfg.retry.max_retries = 100;
    cfg.retry.budget = Duration::from_millis(2500);
    let c = Client::new(cfg).unwrap();
    let err = c.group(&IdOrPath::Id(3)).await.unwrap_err();
    // 1 s waits within 2.5 s: the first attempt and two retries, then the budget is spent.
    assert_eq!(c.stats().route("GET /groups/:id").requests, 3);
    assert!(matches!(err, Error::BudgetExhausted { .. }), "{err:?}");
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_proxy_echoing_the_token_in_an_error_body_never_puts_it_in_the_error() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/user"))
        .respond_with(ResponseTemplate::new(403).set_body_string(format!(
            "<html>denied request with PRIVATE-TOKEN: {TOKEN}; also saw glpat-FAKE0123456</html>"
        )))
        .mount(&server)
        .await;
    let e = client(&server).current_user().await.unwrap_err();
    let text = format!("{e} {e:?}");
    assert!(!text.contains(TOKEN), "{text}");
    assert!(!text.contains("glpat-FAKE0123"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
}

// GitLab's headers and bodies cannot break the client: odd values are clamped or ignored, a
// wait beyond `max_wait` is a `RateLimited` error instead of a pause, bodies are bounded, and a
// pagination that loops ends.

#[tokio::test]
async fn a_huge_retry_after_is_rate_limited_without_pausing_other_requests() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/1"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "99999999999")
                .insert_header("RateLimit-Reset", "99999999999")
                .insert_header("RateLimit-Remaining", "0")
                .set_body_string("Retry later"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/user"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"id": 1, "username": "svc", "name": "svc", "state": "active"}),
            ),
        )
        .mount(&server)
        .await;
    let c = client(&server);
    let e = c.group(&IdOrPath::Id(1)).await.unwrap_err();
    assert!(matches!(e, Error::RateLimited { .. }), "{e:?}");
    let started = Instant::now();
    c.current_user().await.expect("the next request is served");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the connector was paused for {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn odd_rate_limit_resets_are_ignored() {
    let server = MockServer::start().await;
    for (i, reset) in ["-1", "99999999999", "soon"].into_iter().enumerate() {
        Mock::given(method("GET"))
            .and(path(format!("/api/v4/groups/{}", i + 1)))
            .respond_with(
                ResponseTemplate::new(200)
                    .insert_header("RateLimit-Remaining", "0")
                    .insert_header("RateLimit-Limit", "600")
                    .insert_header("RateLimit-Reset", reset)
                    .set_body_json(json!({"id": i + 1, "full_path": "g", "parent_id": null})),
            )
            .mount(&server)
            .await;
    }
    let c = client(&server);
    let started = Instant::now();
    for i in 1..=3u64 {
        c.group(&IdOrPath::Id(i)).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_server_error_is_backed_off_per_request_not_until_the_window_resets() {
    let server = MockServer::start().await;
    let reset = (unix_now() + 50).to_string();
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/1"))
        .respond_with(
            ResponseTemplate::new(503)
                .insert_header("RateLimit-Remaining", "500")
                .insert_header("RateLimit-Reset", reset.as_str())
                .set_body_string("upstream unavailable"),
        )
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/1"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": 1, "full_path": "g", "parent_id": null})),
        )
        .mount(&server)
        .await;
    let started = Instant::now();
    client(&server).group(&IdOrPath::Id(1)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a 503 waited for the rate-limit window: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_an_error_not_a_buffer() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/1"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(1024 * 1024)))
        .mount(&server)
        .await;
    let mut cfg = config(&server.uri());
    cfg.max_response_bytes = 64 * 1024;
    let e = Client::new(cfg)
        .unwrap()
        .group(&IdOrPath::Id(1))
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::ResponseTooLarge { limit: 65_536, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("GITLAB_MAX_RESPONSE_BYTES"), "{e}");
}

#[tokio::test]
async fn a_link_back_to_the_same_page_ends_the_list_with_an_error() {
    let server = MockServer::start().await;
    let looping = format!(
        "<{}/api/v4/groups/7/members?page=1&per_page=100>; rel=\"next\"",
        server.uri()
    );
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/7/members"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Link", looping.as_str())
                .set_body_json(json!([member_json(1)])),
        )
        .mount(&server)
        .await;
    let c = client(&server);
    let read: Result<Vec<_>, _> = tokio::time::timeout(
        Duration::from_secs(10),
        c.members(&Source::group(7u64)).try_collect(),
    )
    .await
    .expect("the walk ends");
    let e = read.unwrap_err();
    assert!(matches!(e, Error::PageLoop { .. }), "{e:?}");
}

#[tokio::test]
async fn a_list_longer_than_its_total_ends_with_an_error() {
    let server = MockServer::start().await;
    let next = format!(
        "<{}/api/v4/groups/8/members?page=2&per_page=100>; rel=\"next\"",
        server.uri()
    );
    // Every page claims a total of 1 and always points to a page further on.
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/8/members"))
        .respond_with(move |req: &Request| {
            let page: u64 = req
                .url
                .query_pairs()
                .find(|(k, _)| k == "page")
                .map_or(1, |(_, v)| v.parse().unwrap());
            ResponseTemplate::new(200)
                .insert_header("X-Total", "1")
                .insert_header(
                    "Link",
                    next.replace("page=2", &format!("page={}", page + 1))
                        .as_str(),
                )
                .set_body_json(json!(
                    (0..100)
                        .map(|i| member_json(page * 100 + i))
                        .collect::<Vec<_>>()
                ))
        })
        .mount(&server)
        .await;
    let c = client(&server);
    let read: Result<Vec<_>, _> = tokio::time::timeout(
        Duration::from_secs(10),
        c.members(&Source::group(8u64)).try_collect(),
    )
    .await
    .expect("the walk ends");
    assert!(matches!(
        read.unwrap_err(),
        Error::ListTooLong { limit: 1, .. }
    ));
}

/// GitLab's application limiter (here the 60/min member deletion of one group) refuses that
/// endpoint only: its 429 does not pause the connector's other requests, while the per-user
/// throttle's 429 does.
#[tokio::test]
async fn a_per_group_limit_429_refuses_that_request_and_pauses_nothing_else() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/api/v4/groups/1/members/5"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "60")
                .set_body_json(json!({"message": {"error": "This endpoint has been requested too many times. Try again later."}})),
        )
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/api/v4/groups/2/members/5"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "60")
                .set_body_string("Retry later\n"),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/v4/groups/3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"id": 3, "name": "g", "path": "g", "full_path": "g", "parent_id": null}),
        ))
        .mount(&server)
        .await;
    let mut config = config(&server.uri());
    config.rate_limit = RateLimitConfig::self_managed();
    // The 429 comes back at once (no retry) and GitLab's 60 s are within what the client waits.
    config.retry.max_retries = 0;
    config.retry.max_wait = Duration::from_secs(120);
    let c = Client::new(config).unwrap();
    let remove = RemoveMember {
        skip_subresources: true,
        unassign_issuables: false,
    };
    let group = |id| Source::Group(IdOrPath::Id(id));
    let refused = c.remove_member(&group(1), 5, remove).await.unwrap_err();
    assert_eq!(refused.code(), "rate_limited", "{refused}");
    let other = tokio::time::timeout(Duration::from_secs(5), c.group(&IdOrPath::Id(3))).await;
    assert_eq!(other.expect("paused by a per-group 429").unwrap().id, 3);
    assert_eq!(c.stats().route("GET /groups/:id").rate_limit_waits, 0);

    // The per-user throttle's 429 pauses every request for GitLab's Retry-After.
    c.remove_member(&group(2), 5, remove).await.unwrap_err();
    let paused = tokio::time::timeout(Duration::from_secs(1), c.group(&IdOrPath::Id(3))).await;
    assert!(paused.is_err(), "a throttle 429 must pause the connector");
}
