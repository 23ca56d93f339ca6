use std::time::Duration;

use chrono::Duration as Days;
use gitlab_connector::client::{BaseUrl, RateLimitConfig, RetryPolicy};
use gitlab_connector::{Client, ClientConfig, Secret};
use gitlab_sim::{Mode, Resource, Running, SimConfig, UserKind, World};
use serde_json::Value;

/// A small hand-built organisation with known effective access.
///
/// ```text
/// org (top)                owner: Owner 50, dave: Minimal Access 5
/// ├── org/eng              alice: Developer 30
/// │   └── org/eng/backend
/// │       └── project org/eng/backend/api   bob: Reporter 20
/// └── org/ops              shared with `partners` at Reporter 20
///     └── project org/ops/deploy
/// partners (top)           carol: Maintainer 40
/// ```
pub struct Fixture {
    pub world: World,
    pub admin_token: String,
    pub owner_token: String,
    pub readonly_token: String,
    pub expired_token: String,
    pub ids: Ids,
}

#[derive(Debug, Clone, Copy)]
#[allow(dead_code)]
pub struct Ids {
    pub root: u64,
    pub owner: u64,
    pub alice: u64,
    pub bob: u64,
    pub carol: u64,
    pub dave: u64,
    pub erin: u64,
    pub svc: u64,
    pub org: u64,
    pub eng: u64,
    pub backend: u64,
    pub ops: u64,
    pub partners: u64,
    pub api: u64,
    pub deploy: u64,
}

pub fn fixture(mode: Mode) -> Fixture {
    let mut w = World::new(mode);
    let today = w.today();
    let root = w.add_user("root", UserKind::Human);
    w.users.get_mut(&root).unwrap().is_admin = true;
    let owner = w.add_user("owner", UserKind::Human);
    let alice = w.add_user("alice", UserKind::Human);
    let bob = w.add_user("bob", UserKind::Human);
    let carol = w.add_user("carol", UserKind::Human);
    let dave = w.add_user("dave", UserKind::Human);
    let erin = w.add_user("erin", UserKind::Human);
    let svc = w.add_user("service_account_group_1_abc", UserKind::ServiceAccount);
    let org = w.add_group("org", None);
    let eng = w.add_group("eng", Some(org));
    let backend = w.add_group("backend", Some(eng));
    let ops = w.add_group("ops", Some(org));
    let partners = w.add_group("partners", None);
    let api = w.add_project("api", backend);
    let deploy = w.add_project("deploy", ops);
    w.set_member(Resource::Group(org), owner, 50, None);
    w.set_member(Resource::Group(org), dave, 5, None);
    w.set_member(Resource::Group(eng), alice, 30, None);
    w.set_member(Resource::Project(api), bob, 20, None);
    w.set_member(Resource::Group(partners), carol, 40, None);
    w.share(Resource::Group(ops), partners, 20, None);
    let exp = Some(today + Days::days(300));
    w.add_token(root, "admin", "admin-token", &["api"], exp);
    w.add_token(owner, "owner", "owner-token", &["api"], exp);
    w.add_token(owner, "readonly", "readonly-token", &["read_api"], exp);
    w.add_token(owner, "old", "expired-token", &["api"], Some(today));
    w.reindex();
    Fixture {
        world: w,
        admin_token: "admin-token".into(),
        owner_token: "owner-token".into(),
        readonly_token: "readonly-token".into(),
        expired_token: "expired-token".into(),
        ids: Ids {
            root,
            owner,
            alice,
            bob,
            carol,
            dave,
            erin,
            svc,
            org,
            eng,
            backend,
            ops,
            partners,
            api,
            deploy,
        },
    }
}

pub async fn start(world: World, config: SimConfig) -> Running {
    gitlab_sim::start(world, config, "127.0.0.1:0")
        .await
        .expect("simulator starts")
}

pub async fn start_fixture(mode: Mode) -> (Running, Fixture) {
    let f = fixture(mode);
    let mut config = SimConfig::for_mode(mode);
    config.endpoint_limits = false;
    let running = start(f.world.clone(), config).await;
    (running, f)
}

pub fn client(url: &str, token: &str) -> Client {
    let mut c = ClientConfig::new(BaseUrl::parse(url).unwrap(), Secret::new(token));
    c.rate_limit = RateLimitConfig::unlimited();
    c.retry = RetryPolicy {
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_retries: 3,
        max_wait: Duration::from_secs(5),
        budget: Duration::from_secs(30),
    };
    Client::new(c).unwrap()
}

pub fn http() -> reqwest::Client {
    gitlab_connector::client::install_crypto_provider();
    reqwest::Client::new()
}

/// A GET with a token, the response as it came.
pub async fn get_with_token(url: &str, token: &str) -> reqwest::Response {
    http()
        .get(url)
        .header("PRIVATE-TOKEN", token)
        .send()
        .await
        .unwrap()
}

/// A raw GET with a token: (status, headers, JSON body or Null).
pub async fn raw_get(url: &str, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = get_with_token(url, token).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

pub async fn sim_post(base: &str, path: &str, body: Value) -> Value {
    let r = http()
        .post(format!("{base}/_sim{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "/_sim{path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

pub async fn sim_put(base: &str, path: &str, body: Value) {
    let r = http()
        .put(format!("{base}/_sim{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "/_sim{path}: {}", r.status());
}

pub fn count(running: &Running, route: &str) -> u64 {
    running.sim.counts().get(route).map_or(0, |c| c.requests)
}

/// Runs `scenario` until one run starts and ends inside the same throttle window of
/// `period_secs`, and returns what that run observed. GitLab's (Rack::Attack's) fixed windows are
/// aligned to the Unix epoch and the simulator's are too, so a run that happens to cross a
/// boundary sees its count restart midway; such a run is discarded, not asserted on. Each run
/// must start its own simulator.
pub async fn in_one_throttle_window<T, F, Fut>(period_secs: u64, mut scenario: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let window = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / period_secs
    };
    for _ in 0..3 {
        let started_in = window();
        let observed = scenario().await;
        if window() == started_in {
            return observed;
        }
    }
    panic!("three runs in a row crossed a {period_secs}-second throttle window boundary")
}
