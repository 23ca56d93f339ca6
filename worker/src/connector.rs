//! One configured GitLab as the jobs see it: its settings, its client, and what its token allows.

use gitlab_connector::Client;
use gitlab_connector::api::Capability;

use crate::config::ConnectorSettings;

pub struct Connector {
    pub settings: ConnectorSettings,
    pub client: Client,
    /// From the start-up token check; `None` when it was not checked (tests, `migrate`).
    pub capability: Option<Capability>,
}

impl Connector {
    /// Why this connector cannot run a provisioning job: a read-only (`read_api`) token.
    pub fn read_only_reason(&self) -> Option<String> {
        (self.capability == Some(Capability::SyncOnly)).then(|| {
            format!(
                "connector {:?} has a read_api token: provisioning needs a token with the `api` scope",
                self.settings.id.as_str()
            )
        })
    }
}
