//! Webhooks: a group's (`/groups/:id/hooks`, Premium) and the instance's system hooks
//! (`/hooks`, administrators, self-managed). The secret goes to GitLab in the request body
//! only; GitLab never shows it again.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use futures::stream::BoxStream;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::lenient_timestamp;
use crate::client::{Client, IdOrPath, ListSpec, PageItem, Request};
use crate::error::Error;
use crate::secret::Secret;

/// A hook as GitLab shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub id: u64,
    pub url: String,
    /// `executable`, `temporarily_disabled` (paused after 4 failures in a row) or `disabled`
    /// (after 40).
    #[serde(default)]
    pub alert_status: Option<String>,
    #[serde(default, with = "lenient_timestamp")]
    pub disabled_until: Option<DateTime<Utc>>,
    #[serde(default)]
    pub member_events: Option<bool>,
    #[serde(default)]
    pub subgroup_events: Option<bool>,
    #[serde(default)]
    pub project_events: Option<bool>,
    #[serde(default)]
    pub push_events: Option<bool>,
    #[serde(default)]
    pub enable_ssl_verification: Option<bool>,
    #[serde(default, with = "lenient_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
}

impl PageItem for Hook {
    fn page_id(&self) -> Option<u64> {
        Some(self.id)
    }
}

impl Hook {
    /// GitLab sends its events (not paused, not disabled).
    pub fn is_executable(&self) -> bool {
        self.alert_status
            .as_deref()
            .is_none_or(|s| s == "executable")
    }
}

/// What a group webhook for access must send: member, subgroup and project events; no pushes.
fn group_hook_body(url: &str, token: &Secret) -> serde_json::Value {
    json!({
        "url": url,
        "token": token.expose(),
        "member_events": true,
        "subgroup_events": true,
        "project_events": true,
        "push_events": false,
        "enable_ssl_verification": true,
    })
}

impl Client {
    /// `GET /groups/:id/hooks`.
    pub fn group_hooks(&self, group: &IdOrPath) -> BoxStream<'static, Result<Hook, Error>> {
        let req = Request::get(
            "/groups/:id/hooks",
            format!("/groups/{}/hooks", group.segment()),
        );
        crate::client::items_stream(self, ListSpec::offset(req))
    }

    /// `POST /groups/:id/hooks`; after a transient failure, a hook with the same URL found on
    /// the group is the one created.
    pub async fn add_group_hook(
        &self,
        group: &IdOrPath,
        url: &str,
        token: &Secret,
    ) -> Result<Hook, Error> {
        let req = Request::new(
            Method::POST,
            "/groups/:id/hooks",
            format!("/groups/{}/hooks", group.segment()),
        )
        .json(group_hook_body(url, token));
        let route = req.route;
        self.write_with_reread(
            req,
            |r| r.json(route),
            || async {
                let hooks: Vec<Hook> = self.group_hooks(group).try_collect().await?;
                Ok(hooks.into_iter().find(|h| h.url == url))
            },
        )
        .await
    }

    /// `PUT /groups/:id/hooks/:hook_id` with the whole intended state (so it is idempotent).
    pub async fn edit_group_hook(
        &self,
        group: &IdOrPath,
        hook_id: u64,
        url: &str,
        token: &Secret,
    ) -> Result<Hook, Error> {
        self.get_json(
            Request::new(
                Method::PUT,
                "/groups/:id/hooks/:hook_id",
                format!("/groups/{}/hooks/{hook_id}", group.segment()),
            )
            .json(group_hook_body(url, token)),
        )
        .await
    }

    /// `DELETE /groups/:id/hooks/:hook_id`; one already gone is not an error.
    pub async fn delete_group_hook(&self, group: &IdOrPath, hook_id: u64) -> Result<(), Error> {
        let req = Request::new(
            Method::DELETE,
            "/groups/:id/hooks/:hook_id",
            format!("/groups/{}/hooks/{hook_id}", group.segment()),
        );
        match self.execute(req, crate::client::Repeat::Idempotent).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /hooks` (administrators).
    pub fn system_hooks(&self) -> BoxStream<'static, Result<Hook, Error>> {
        crate::client::items_stream(self, ListSpec::offset(Request::get("/hooks", "/hooks")))
    }

    /// `POST /hooks`: group, project, user and member events are always sent; pushes off.
    pub async fn add_system_hook(&self, url: &str, token: &Secret) -> Result<Hook, Error> {
        let req = Request::new(Method::POST, "/hooks", "/hooks").json(json!({
            "url": url,
            "token": token.expose(),
            "push_events": false,
            "tag_push_events": false,
            "merge_requests_events": false,
            "repository_update_events": false,
            "enable_ssl_verification": true,
        }));
        let route = req.route;
        self.write_with_reread(
            req,
            |r| r.json(route),
            || async {
                let hooks: Vec<Hook> = self.system_hooks().try_collect().await?;
                Ok(hooks.into_iter().find(|h| h.url == url))
            },
        )
        .await
    }

    /// `DELETE /hooks/:id`; one already gone is not an error.
    pub async fn delete_system_hook(&self, hook_id: u64) -> Result<(), Error> {
        let req = Request::new(Method::DELETE, "/hooks/:id", format!("/hooks/{hook_id}"));
        match self.execute(req, crate::client::Repeat::Idempotent).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
