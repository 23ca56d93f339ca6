//! Direct and effective memberships of groups and projects.

use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::BoxStream;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::{AccessLevel, UserRef, date_or_timestamp, lenient_timestamp};
use super::groups::limit_key;
use crate::client::{Client, IdOrPath, LimitClass, ListSpec, PageItem, Request};
use crate::error::Error;

/// Where a membership lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Group(IdOrPath),
    Project(IdOrPath),
}

impl Source {
    pub fn group(r: impl Into<IdOrPath>) -> Self {
        Source::Group(r.into())
    }

    pub fn project(r: impl Into<IdOrPath>) -> Self {
        Source::Project(r.into())
    }

    pub fn reference(&self) -> &IdOrPath {
        match self {
            Source::Group(r) | Source::Project(r) => r,
        }
    }

    pub fn is_group(&self) -> bool {
        matches!(self, Source::Group(_))
    }

    fn base(&self) -> String {
        match self {
            Source::Group(r) => format!("/groups/{}", r.segment()),
            Source::Project(r) => format!("/projects/{}", r.segment()),
        }
    }

    /// Route templates must be `'static`: pick the group or project one.
    fn t(&self, group: &'static str, project: &'static str) -> &'static str {
        if self.is_group() { group } else { project }
    }
}

/// A custom role as embedded in a member (EE; omitted when the member has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRoleRef {
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub base_access_level: Option<AccessLevel>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The user's id.
    pub id: u64,
    pub username: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub state: Option<String>,
    pub access_level: AccessLevel,
    #[serde(default, with = "date_or_timestamp")]
    pub expires_at: Option<NaiveDate>,
    #[serde(default, with = "lenient_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub created_by: Option<UserRef>,
    /// `active` or `awaiting` (EE; always sent by GitLab.com).
    #[serde(default)]
    pub membership_state: Option<String>,
    #[serde(default)]
    pub member_role: Option<MemberRoleRef>,
    /// Visible to admins, and to owners for their enterprise users.
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub locked: Option<bool>,
    #[serde(default)]
    pub web_url: Option<String>,
    #[serde(default)]
    pub bot: Option<bool>,
    #[serde(default)]
    pub user_type: Option<String>,
    #[serde(default)]
    pub group_saml_identity: Option<serde_json::Value>,
    #[serde(default)]
    pub is_using_seat: Option<bool>,
    /// LDAP-synced members only.
    #[serde(default, rename = "override")]
    pub ldap_override: Option<bool>,
}

impl PageItem for Member {}

impl Member {
    pub fn member_role_id(&self) -> Option<u64> {
        self.member_role.as_ref().map(|r| r.id)
    }

    pub fn is_awaiting(&self) -> bool {
        self.membership_state.as_deref() == Some("awaiting")
    }
}

/// `POST …/members`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddMember {
    pub user_id: u64,
    pub access_level: AccessLevel,
    pub expires_at: Option<NaiveDate>,
    pub member_role_id: Option<u64>,
}

/// `PUT …/members/:user_id` with the **full intended state**: GitLab removes the expiry when
/// `expires_at` is null and the custom role when `member_role_id` is omitted (gitlab-api.md
/// P5), so all three fields are always sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditMember {
    pub access_level: AccessLevel,
    pub expires_at: Option<NaiveDate>,
    pub member_role_id: Option<u64>,
}

impl EditMember {
    fn matches(&self, m: &Member) -> bool {
        m.access_level == self.access_level
            && m.expires_at == self.expires_at
            && m.member_role_id() == self.member_role_id
    }
}

/// Options of `DELETE …/members/:user_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RemoveMember {
    /// `false` (GitLab's default) also deletes the user's direct memberships in subgroups and
    /// projects below; `true` removes only this one.
    pub skip_subresources: bool,
    pub unassign_issuables: bool,
}

fn date(d: Option<NaiveDate>) -> serde_json::Value {
    d.map_or(serde_json::Value::Null, |d| {
        json!(d.format("%Y-%m-%d").to_string())
    })
}

impl Client {
    /// `GET …/members`: direct members only.
    pub fn members(&self, source: &Source) -> BoxStream<'static, Result<Member, Error>> {
        let req = Request::get(
            source.t("/groups/:id/members", "/projects/:id/members"),
            format!("{}/members", source.base()),
        );
        crate::client::items_stream(self, ListSpec::offset(req))
    }

    /// `GET …/members/:user_id`: a direct membership; 404 when the user is only inherited.
    pub async fn member(&self, source: &Source, user_id: u64) -> Result<Member, Error> {
        self.get_json(Request::get(
            source.t(
                "/groups/:id/members/:user_id",
                "/projects/:id/members/:user_id",
            ),
            format!("{}/members/{user_id}", source.base()),
        ))
        .await
    }

    /// The direct membership, or `None` when there is none.
    pub async fn direct_member(
        &self,
        source: &Source,
        user_id: u64,
    ) -> Result<Option<Member>, Error> {
        match self.member(source, user_id).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET …/members/all/:user_id`: the effective membership (highest level over inheritance
    /// and shares). Rate-limited per group or project; the sync never calls it.
    pub async fn effective_member(
        &self,
        source: &Source,
        user_id: u64,
    ) -> Result<Option<Member>, Error> {
        let req = Request::get(
            source.t(
                "/groups/:id/members/all/:user_id",
                "/projects/:id/members/all/:user_id",
            ),
            format!("{}/members/all/{user_id}", source.base()),
        )
        .limited(LimitClass::MembersAll, limit_key(source.reference()));
        match self.get_json(req).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `POST …/members`. A 409 "Member already exists" is returned as
    /// [`Error::AlreadyMember`]; a retry after a transient failure first checks whether the
    /// earlier attempt created the member.
    pub async fn add_member(&self, source: &Source, add: &AddMember) -> Result<Member, Error> {
        let mut body = json!({
            "user_id": add.user_id,
            "access_level": add.access_level,
        });
        if let Some(d) = add.expires_at {
            body["expires_at"] = date(Some(d));
        }
        if let Some(r) = add.member_role_id {
            body["member_role_id"] = json!(r);
        }
        let req = Request::new(
            Method::POST,
            source.t("/groups/:id/members", "/projects/:id/members"),
            format!("{}/members", source.base()),
        )
        .json(body);
        let route = req.route;
        self.write_with_reread(
            req,
            |r| r.json(route),
            || async {
                Ok(self
                    .direct_member(source, add.user_id)
                    .await?
                    .filter(|m| m.access_level == add.access_level))
            },
        )
        .await
    }

    /// `PUT …/members/:user_id` with the full intended state.
    pub async fn edit_member(
        &self,
        source: &Source,
        user_id: u64,
        edit: &EditMember,
    ) -> Result<Member, Error> {
        let body = json!({
            "access_level": edit.access_level,
            "expires_at": date(edit.expires_at),
            "member_role_id": edit.member_role_id,
        });
        let req = Request::new(
            Method::PUT,
            source.t(
                "/groups/:id/members/:user_id",
                "/projects/:id/members/:user_id",
            ),
            format!("{}/members/{user_id}", source.base()),
        )
        .json(body);
        let route = req.route;
        self.write_with_reread(
            req,
            |r| r.json(route),
            || async {
                Ok(self
                    .direct_member(source, user_id)
                    .await?
                    .filter(|m| edit.matches(m)))
            },
        )
        .await
    }

    /// `DELETE …/members/:user_id`. 404 when the user is not a direct member (inherited only).
    /// Limited to 60/min per group or project by GitLab.
    pub async fn remove_member(
        &self,
        source: &Source,
        user_id: u64,
        opts: RemoveMember,
    ) -> Result<(), Error> {
        let req = Request::new(
            Method::DELETE,
            source.t(
                "/groups/:id/members/:user_id",
                "/projects/:id/members/:user_id",
            ),
            format!("{}/members/{user_id}", source.base()),
        )
        .query("skip_subresources", opts.skip_subresources)
        .query("unassign_issuables", opts.unassign_issuables)
        .limited(LimitClass::MemberDelete, limit_key(source.reference()));
        self.write_with_reread(
            req,
            |_| Ok(()),
            || async {
                Ok(self
                    .direct_member(source, user_id)
                    .await?
                    .is_none()
                    .then_some(()))
            },
        )
        .await
    }
}
