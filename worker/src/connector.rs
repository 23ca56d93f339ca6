//! One configured GitLab as the jobs see it: its settings, its client, what its token allows, and
//! the two facts its policy needs from GitLab (the scope's path, the token's own user), read once,
//! and the SAML links a grant warns about, read at most once a minute.

use gitlab_connector::Client;
use gitlab_connector::api::Capability;
use gitlab_connector::client::IdOrPath;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::config::ConnectorSettings;

pub struct Connector {
    pub settings: ConnectorSettings,
    pub client: Client,
    /// From the start-up token check; `None` when it was not checked (tests, `migrate`).
    pub capability: Option<Capability>,
    scope_path: OnceCell<Option<String>>,
    token_user: OnceCell<u64>,
    /// SAML group links per top-level group, with when they were read.
    saml_links: std::sync::Mutex<HashMap<String, (Instant, usize)>>,
    rotation: tokio::sync::Mutex<()>,
    last_rotation: std::sync::Mutex<Option<std::time::Instant>>,
    /// This connector instance's name as the holder of database leases: unique per worker
    /// (and per instance, so two in one process exclude each other too).
    lease_holder: String,
}

impl Connector {
    pub fn new(
        settings: ConnectorSettings,
        client: Client,
        capability: Option<Capability>,
    ) -> Self {
        Self {
            settings,
            client,
            capability,
            scope_path: OnceCell::new(),
            token_user: OnceCell::new(),
            saml_links: std::sync::Mutex::new(HashMap::new()),
            rotation: tokio::sync::Mutex::new(()),
            last_rotation: std::sync::Mutex::new(None),
            lease_holder: format!("{}-{}", std::process::id(), uuid::Uuid::now_v7()),
        }
    }

    /// The name this connector holds database leases under.
    pub fn lease_holder(&self) -> &str {
        &self.lease_holder
    }

    /// The token changed (rotated here, or found new in the token file) at most `within` ago.
    pub fn rotated_within(&self, within: std::time::Duration) -> bool {
        self.last_rotation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|t| t.elapsed() < within)
    }

    /// Notes that the token just changed.
    pub fn mark_rotated(&self) {
        *self
            .last_rotation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(std::time::Instant::now());
    }

    /// Held while this process rotates the connector's token: one rotation at a time.
    pub async fn rotation_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.rotation.lock().await
    }

    /// Why this connector cannot run a provisioning job: a read-only (`read_api`) token.
    pub fn read_only_reason(&self) -> Option<String> {
        (self.capability == Some(Capability::SyncOnly)).then(|| {
            format!(
                "connector {:?} has a read_api token: provisioning needs a token with the `api` scope",
                self.settings.id.as_str()
            )
        })
    }

    /// The full path of the connector's scope group; `None` for the `instance` scope or no
    /// scope. A scope given as a numeric id is read once.
    pub async fn scope_path(&self) -> Result<Option<&str>, gitlab_connector::Error> {
        let path = self
            .scope_path
            .get_or_try_init(|| async {
                match self.settings.scope.as_deref() {
                    None | Some("instance") => Ok(None),
                    Some(s) => match IdOrPath::parse(s) {
                        IdOrPath::Path(p) => Ok(Some(p.trim_matches('/').to_string())),
                        id @ IdOrPath::Id(_) => Ok(Some(self.client.group(&id).await?.full_path)),
                    },
                }
            })
            .await?;
        Ok(path.as_deref())
    }

    /// The id of the user the token belongs to, read once.
    pub async fn token_user(&self) -> Result<u64, gitlab_connector::Error> {
        self.token_user
            .get_or_try_init(|| async { Ok(self.client.current_user().await?.id) })
            .await
            .copied()
    }

    /// How many SAML group links the top-level group has (a grant only warns about them),
    /// read at most once per [`SAML_LINKS_FOR`] per group; `None` when GitLab did not say
    /// (no licence, no permission, an error: not remembered).
    pub async fn saml_link_count(&self, top: &IdOrPath) -> Option<usize> {
        let key = top.segment();
        let cached = |links: &HashMap<String, (Instant, usize)>| {
            links
                .get(&key)
                .filter(|(read, _)| read.elapsed() < SAML_LINKS_FOR)
                .map(|(_, n)| *n)
        };
        if let Some(n) = cached(&self.saml_links.lock().unwrap_or_else(|e| e.into_inner())) {
            return Some(n);
        }
        let n = self.client.saml_group_links(top).await.ok()?.len();
        self.saml_links
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (Instant::now(), n));
        Some(n)
    }
}

/// How long a top-level group's SAML links count is reused.
const SAML_LINKS_FOR: Duration = Duration::from_secs(60);
