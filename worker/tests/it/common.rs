//! One way to get a handler: a seeded simulator, SQLite in memory, one connector.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gitlab_connector::client::{BaseUrl, RetryPolicy};
use gitlab_connector::{Client, ClientConfig, InstanceKind, Secret};
use gitlab_sim::{Mode, Resource, SeedSpec, SeededSim};
use gitlab_worker::config::{ConnectorSettings, TokenSource};
use gitlab_worker::connector::Connector;
use gitlab_worker::ids::ConnectorId;
use gitlab_worker::jobs::{Clock, Handler};
use gitlab_worker::policy::Policy;
use gitlab_worker::store::{NewJob, Store};
use gitlab_worker::subjects::Subjects;
use serde_json::{Value, json};

pub struct Env {
    pub sim: SeededSim,
    pub handler: Handler,
}

/// A seeded self-managed simulator and a handler for connector `default` whose client never
/// retries (a transient failure reaches the job layer at once), with the default policy.
pub async fn env() -> Env {
    env_with(Policy::default()).await
}

/// The same with the connector's policy `policy`.
pub async fn env_with(policy: Policy) -> Env {
    gitlab_connector::client::install_crypto_provider();
    let sim = gitlab_sim::start_seeded(&SeedSpec::small(11, Mode::SelfManaged))
        .await
        .expect("the simulator starts");
    let id = ConnectorId::parse("default").unwrap();
    let settings = ConnectorSettings {
        id: id.clone(),
        url: BaseUrl::parse(&sim.url).unwrap(),
        token: Secret::new(sim.token.clone()),
        token_source: TokenSource::Env("GITLAB_TOKEN"),
        token_file: None,
        scope: Some(sim.scope.clone()),
        rate_limit_per_minute: None,
        instance: Some(InstanceKind::SelfManaged),
        allow_create_users: false,
        rotate_when_days_left: 0,
        policy,
        limits: gitlab_worker::config::ClientLimits::default(),
        webhook_secret: None,
        webhook_secret_file: None,
    };
    let mut config: ClientConfig = settings.client_config();
    config.retry = RetryPolicy::none();
    let client = Client::new(config).unwrap();
    let store = Store::open("sqlite::memory:").await.unwrap();
    let spool = std::env::temp_dir().join(format!(
        "gitlab-worker-it-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let handler = Handler {
        store,
        connectors: BTreeMap::from([(id, Arc::new(Connector::new(settings, client, None)))]),
        subjects: Subjects::new("gitlab"),
        spool_dir: spool,
        publish: true,
        lease: Duration::from_secs(30),
        busy_wait: Duration::from_millis(1_500),
        clock: Clock::system(),
        max_job_bytes: 256 * 1024,
        timeouts: Default::default(),
    };
    Env { sim, handler }
}

impl Env {
    /// The connector's client.
    pub fn client(&self) -> &Client {
        &self.handler.connectors.values().next().unwrap().client
    }

    /// The connector again with a client that retries by `policy`.
    pub fn with_retries(&mut self, policy: RetryPolicy) {
        let (id, connector) = self.handler.connectors.pop_first().unwrap();
        let mut config = connector.settings.client_config();
        config.retry = policy;
        let client = Client::new(config).unwrap();
        self.handler.connectors.insert(
            id,
            Arc::new(Connector::new(connector.settings.clone(), client, None)),
        );
    }

    /// The scope's top-level group and a user who has no membership in it.
    pub fn group_and_outsider(&self) -> (u64, u64) {
        let world = self.sim.sim.world.read().unwrap();
        let group = world
            .groups
            .values()
            .find(|g| g.parent_id.is_none() && g.full_path == self.sim.scope)
            .expect("the scope group")
            .id;
        let members = world.members.get(&Resource::Group(group));
        let user = world
            .users
            .values()
            .filter(|u| !u.is_admin && !u.is_bot() && u.state == "active")
            .map(|u| u.id)
            .find(|id| members.is_none_or(|m| !m.contains_key(id)))
            .expect("a user outside the group");
        (group, user)
    }

    /// A user of the world by a predicate.
    pub fn user_where(&self, pred: impl Fn(&gitlab_sim::model::User) -> bool) -> (u64, String) {
        let world = self.sim.sim.world.read().unwrap();
        let u = world.users.values().find(|u| pred(u)).expect("such a user");
        (u.id, u.username.clone())
    }

    /// A user's direct level on a group in the simulator, if any.
    pub fn level(&self, group: u64, user: u64) -> Option<u16> {
        let world = self.sim.sim.world.read().unwrap();
        world
            .members
            .get(&Resource::Group(group))
            .and_then(|m| m.get(&user))
            .map(|m| m.access_level)
    }

    /// Requests the simulator saw that change something (not GET).
    pub fn writes(&self) -> Vec<String> {
        self.sim
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.method != "GET" && !r.path.starts_with("/_sim"))
            .map(|r| format!("{} {}", r.method, r.route))
            .collect()
    }

    /// The messages queued in the outbox, both lanes, oldest first.
    pub async fn outbox(&self) -> Vec<gitlab_worker::store::OutboxMessage> {
        let mut rows = Vec::new();
        for lane in gitlab_worker::store::OutboxLane::ALL {
            rows.extend(self.handler.store.unsent_outbox(lane, 1000).await.unwrap());
        }
        rows.sort_by_key(|(id, _)| *id);
        rows.into_iter().map(|(_, m)| m).collect()
    }

    /// The message ids queued in the outbox, both lanes, oldest first.
    pub async fn outbox_ids(&self) -> Vec<String> {
        self.outbox()
            .await
            .into_iter()
            .map(|m| m.msg_id().to_string())
            .collect()
    }
}

pub fn job(id: &str, kind: &str, params: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schema": "gitlab-connector.job.v1",
        "job_id": id,
        "connector": "default",
        "kind": kind,
        "params": params,
    }))
    .unwrap()
}

/// A grant as a first delivery writes it ahead of its GitLab write (`pending`).
pub fn pending_grant(
    job_id: &str,
    group: u64,
    user: u64,
    prior_level: Option<u16>,
    level: u16,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> gitlab_worker::store::GrantRecord {
    use gitlab_connector::provision::{MemberState, TargetKind};
    let state = |l: u16, e| MemberState {
        access_level: l,
        expires_at: e,
        member_role_id: None,
    };
    gitlab_worker::store::GrantRecord {
        job_id: job_id.into(),
        connector: "default".into(),
        target_kind: TargetKind::Group,
        target_id: group,
        target_path: String::new(),
        user_id: user,
        created: prior_level.is_none(),
        prior: prior_level.map(|l| state(l, None)),
        applied: state(
            level,
            expires_at.map(gitlab_worker::jobs::grant::gitlab_date),
        ),
        expires_at,
        state: gitlab_worker::store::GrantState::Pending,
        ended_at: None,
        note: None,
        undo_attempts: 0,
        held_slot: None,
    }
}

/// A delivery of `payload` took job `job_id` with `lease`, as another worker's would (`last`:
/// it was its message's last delivery); with a lapsed lease, one that died.
pub async fn begun(e: &Env, job_id: &str, kind: &str, payload: &[u8], lease: Duration, last: bool) {
    e.handler
        .store
        .begin_job(
            &NewJob {
                job_id,
                connector: "default",
                kind,
                request: std::str::from_utf8(payload).unwrap(),
                payload_sha256: &gitlab_worker::jobs::envelope::canonical_sha256(
                    &serde_json::from_slice(payload).unwrap(),
                ),
                stream_seq: 1,
                delivered: 1,
                attempt_budget: u32::from(last),
            },
            lease,
        )
        .await
        .unwrap();
}
