//! Groups, their subgroups and projects, and the top-level-group governance endpoints.

use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use super::common::{AccessLevel, date_or_timestamp, lenient_timestamp};
use super::projects::Project;
use super::users::User;
use crate::client::{Client, IdOrPath, LimitClass, ListSpec, PageItem, Request};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: u64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub path: String,
    pub full_path: String,
    #[serde(default)]
    pub full_name: Option<String>,
    #[serde(default)]
    pub parent_id: Option<u64>,
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub web_url: Option<String>,
    /// Groups this group is shared with (`GET /groups/:id` only; absent in lists).
    #[serde(default)]
    pub shared_with_groups: Vec<SharedWithGroup>,
}

impl PageItem for Group {
    fn page_id(&self) -> Option<u64> {
        Some(self.id)
    }
}

/// A group link: the group or project is shared with `group_id` at `group_access_level`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedWithGroup {
    pub group_id: u64,
    #[serde(default)]
    pub group_name: Option<String>,
    #[serde(default)]
    pub group_full_path: Option<String>,
    pub group_access_level: AccessLevel,
    #[serde(default, with = "date_or_timestamp")]
    pub expires_at: Option<NaiveDate>,
    #[serde(default)]
    pub member_role_id: Option<u64>,
}

/// `GET /groups/:id/billable_members` (top-level group Owner, GitLab.com).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillableMember {
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default, with = "date_or_timestamp")]
    pub last_activity_on: Option<NaiveDate>,
    #[serde(default, with = "lenient_timestamp")]
    pub last_login_at: Option<DateTime<Utc>>,
    /// `group_member`, `project_member`, `group_invite` or `project_invite`.
    #[serde(default)]
    pub membership_type: Option<String>,
    #[serde(default)]
    pub removable: Option<bool>,
    #[serde(default)]
    pub is_last_owner: Option<bool>,
    #[serde(default, with = "lenient_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
}

impl PageItem for BillableMember {}

/// `GET /groups/:id/saml_group_links` (not paginated).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlGroupLink {
    pub name: String,
    pub access_level: AccessLevel,
    #[serde(default)]
    pub member_role_id: Option<u64>,
    #[serde(default)]
    pub provider: Option<String>,
}

/// A custom role (`GET /groups/:id/member_roles`, `GET /member_roles`; Ultimate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRole {
    pub id: u64,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub group_id: Option<u64>,
    pub base_access_level: AccessLevel,
}

pub(crate) fn limit_key(r: &IdOrPath) -> u64 {
    match r {
        IdOrPath::Id(id) => *id,
        IdOrPath::Path(p) => {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            p.to_ascii_lowercase().hash(&mut h);
            h.finish()
        }
    }
}

impl Client {
    /// `GET /groups/:id` (with `with_projects=false`: the embedded project list is deprecated
    /// and capped at 100).
    pub async fn group(&self, group: &IdOrPath) -> Result<Group, Error> {
        self.get_json(
            Request::get("/groups/:id", format!("/groups/{}", group.segment()))
                .query("with_projects", "false")
                .limited(LimitClass::GroupGet, 0),
        )
        .await
    }

    /// `GET /groups`: every group the token can see (all groups for an admin).
    pub fn groups(&self, top_level_only: bool) -> BoxStream<'static, Result<Group, Error>> {
        let mut req = Request::get("/groups", "/groups")
            .query("order_by", "id")
            .query("sort", "asc")
            .limited(LimitClass::GroupsList, 0);
        if top_level_only {
            req = req.query("top_level_only", "true");
        }
        crate::client::items_stream(self, ListSpec::offset(req))
    }

    /// `GET /groups/:id/descendant_groups`: every subgroup at any depth.
    pub fn descendant_groups(&self, group: &IdOrPath) -> BoxStream<'static, Result<Group, Error>> {
        let req = Request::get(
            "/groups/:id/descendant_groups",
            format!("/groups/{}/descendant_groups", group.segment()),
        )
        // A stable order for offset pages (the default, by name, shifts when a group is
        // renamed mid-crawl) that is also the cheapest for GitLab to serve.
        .query("order_by", "id")
        .query("sort", "asc");
        crate::client::items_stream(self, ListSpec::offset(req))
    }

    /// `GET /groups/:id/projects`; with `include_subgroups`, the projects of the whole tree.
    /// Projects merely shared *into* the group are excluded (`with_shared=false`).
    pub fn group_projects(
        &self,
        group: &IdOrPath,
        include_subgroups: bool,
    ) -> BoxStream<'static, Result<Project, Error>> {
        let req = Request::get(
            "/groups/:id/projects",
            format!("/groups/{}/projects", group.segment()),
        )
        .query("include_subgroups", include_subgroups)
        .query("with_shared", "false")
        .query("order_by", "id")
        .query("sort", "asc")
        .limited(LimitClass::GroupProjects, 0);
        crate::client::items_stream(self, ListSpec::offset(req))
    }

    /// `GET /groups/:id/billable_members` (top-level group, Owner).
    pub fn billable_members(
        &self,
        group: &IdOrPath,
    ) -> BoxStream<'static, Result<BillableMember, Error>> {
        let req = Request::get(
            "/groups/:id/billable_members",
            format!("/groups/{}/billable_members", group.segment()),
        );
        crate::client::items_stream(self, ListSpec::offset(req))
    }

    /// `GET /groups/:id/enterprise_users` (top-level group Owner, GitLab.com 17.7+).
    pub fn enterprise_users(&self, group: &IdOrPath) -> BoxStream<'static, Result<User, Error>> {
        let req = Request::get(
            "/groups/:id/enterprise_users",
            format!("/groups/{}/enterprise_users", group.segment()),
        );
        crate::client::items_stream(self, ListSpec::offset(req))
    }

    /// `GET /groups/:id/saml_group_links`: the whole array, not paginated.
    pub async fn saml_group_links(&self, group: &IdOrPath) -> Result<Vec<SamlGroupLink>, Error> {
        self.get_json(Request::get(
            "/groups/:id/saml_group_links",
            format!("/groups/{}/saml_group_links", group.segment()),
        ))
        .await
    }

    /// `GET /groups/:id/member_roles` (GitLab.com, top-level group Owner).
    pub async fn group_member_roles(&self, group: &IdOrPath) -> Result<Vec<MemberRole>, Error> {
        self.get_json(Request::get(
            "/groups/:id/member_roles",
            format!("/groups/{}/member_roles", group.segment()),
        ))
        .await
    }

    /// `GET /member_roles` (self-managed admin).
    pub async fn instance_member_roles(&self) -> Result<Vec<MemberRole>, Error> {
        self.get_json(Request::get("/member_roles", "/member_roles"))
            .await
    }
}
