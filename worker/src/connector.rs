//! One configured GitLab as the jobs see it: its settings, its client, what its token allows, and
//! the two facts its policy needs from GitLab (the scope's path, the token's own user), read once.

use gitlab_connector::Client;
use gitlab_connector::api::Capability;
use gitlab_connector::client::IdOrPath;
use tokio::sync::OnceCell;

use crate::config::ConnectorSettings;

pub struct Connector {
    pub settings: ConnectorSettings,
    pub client: Client,
    /// From the start-up token check; `None` when it was not checked (tests, `migrate`).
    pub capability: Option<Capability>,
    scope_path: OnceCell<Option<String>>,
    token_user: OnceCell<u64>,
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
        }
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
}
