//! Direct and effective memberships of groups and projects.

use chrono::{DateTime, NaiveDate, Utc};
use futures::stream::BoxStream;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::{AccessLevel, UserSummary, date_or_timestamp, lenient_timestamp};
use super::groups::limit_key;
use crate::client::{Client, IdOrPath, LimitClass, ListSpec, PageItem, Request};
use crate::error::{Error, Route};

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

    /// The key of this group's or project's own limits (GitLab limits member deletion and
    /// `members/all` per group and per project). Group and project ids are counted apart, so
    /// group 7 and project 7 are different resources: a project's key has the top bit set.
    pub(crate) fn limit_key(&self) -> u64 {
        match self {
            Source::Group(r) => limit_key(r),
            Source::Project(r) => limit_key(r) ^ PROJECT_KEY_BIT,
        }
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

/// Set in a project's [`Source::limit_key`]: ids are far below it.
const PROJECT_KEY_BIT: u64 = 1 << 63;

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
    pub created_by: Option<UserSummary>,
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

/// An id-only reference (`created_by`, `member_role`): the other fields are skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct IdRef {
    pub id: u64,
}

/// The fields of a member that a full sync needs, for reading member lists in bulk: the rest of
/// GitLab's member entity (URLs, avatar, `created_by`'s names, SAML identity, …) is skipped
/// without being allocated. A million of these are read in a large sync.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MemberRow {
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
    pub created_by: Option<IdRef>,
    /// `membership_state == "awaiting"` (EE; always sent by GitLab.com).
    #[serde(
        default,
        rename = "membership_state",
        deserialize_with = "awaiting_state"
    )]
    pub awaiting: bool,
    #[serde(default)]
    pub member_role: Option<IdRef>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub bot: Option<bool>,
}

impl PageItem for MemberRow {}

fn awaiting_state<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a membership state")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
            Ok(v == "awaiting")
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
    }
    d.deserialize_option(OptionOf(V))
}

/// Lets a plain visitor also accept `null` through `deserialize_option`.
struct OptionOf<V>(V);

impl<'de, V: serde::de::Visitor<'de, Value = bool>> serde::de::Visitor<'de> for OptionOf<V> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.expecting(f)
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self.0)
    }
}

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
/// `expires_at` is null and the custom role when `member_role_id` is omitted (docs/gitlab.md,
/// "Members"), so all three fields are always sent.
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

    /// [`Client::members`] with only the fields a sync needs ([`MemberRow`]).
    pub fn member_rows(&self, source: &Source) -> BoxStream<'static, Result<MemberRow, Error>> {
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

    /// `GET …/members/:user_id` with only the fields a sync needs; `None` when the user is no
    /// direct member (GitLab's 404).
    pub async fn member_row(
        &self,
        source: &Source,
        user_id: u64,
    ) -> Result<Option<MemberRow>, Error> {
        let req = Request::get(
            source.t(
                "/groups/:id/members/:user_id",
                "/projects/:id/members/:user_id",
            ),
            format!("{}/members/{user_id}", source.base()),
        );
        match self.get_json(req).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
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
        .limited(LimitClass::MembersAll, source.limit_key());
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

    /// Reserves the slot of a member deletion on `source` ahead of [`Client::remove_member`],
    /// so that a job whose slot is minutes away is handed back ([`Error::SlotLater`]) before
    /// its write is audited, not held. Does nothing outside a job's
    /// [`Deferral`](crate::client::Deferral).
    pub async fn reserve_member_delete(&self, source: &Source) -> Result<(), Error> {
        let route = Route::new(
            "DELETE",
            source.t(
                "/groups/:id/members/:user_id",
                "/projects/:id/members/:user_id",
            ),
        );
        self.reserve_slot(LimitClass::MemberDelete, source.limit_key(), route)
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
        .limited(LimitClass::MemberDelete, source.limit_key());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_and_a_project_with_one_id_have_limits_of_their_own() {
        let group = Source::group(IdOrPath::Id(7));
        let project = Source::project(IdOrPath::Id(7));
        assert_ne!(group.limit_key(), project.limit_key());
        assert_eq!(group.limit_key(), 7, "a group's key is its id");
        assert_eq!(
            project.limit_key(),
            Source::project(IdOrPath::Id(7)).limit_key(),
            "a project's key is stable"
        );
    }

    /// A member as GitLab.com sends it (doc/api/members.md), with every field a sync skips.
    const FULL: &str = r#"{
        "id": 1, "username": "raymond_smith", "name": "Raymond Smith", "state": "active",
        "locked": false, "avatar_url": "https://www.gravatar.com/avatar/c2525a7f58ae3776070e44c106c48e15?s=80&d=identicon",
        "web_url": "http://192.168.1.8:3000/root", "created_at": "2012-10-22T14:13:35Z",
        "created_by": {"id": 2, "username": "john_doe", "name": "John Doe", "state": "active",
                       "avatar_url": "https://x", "web_url": "http://192.168.1.8:3000/root"},
        "expires_at": "2012-10-22T14:13:35Z", "access_level": 30,
        "group_saml_identity": {"extern_uid": "ABC-1234567890", "provider": "group_saml",
                                "saml_provider_id": 10},
        "email": "john@example.com", "membership_state": "awaiting",
        "member_role": {"id": 3, "group_id": 31, "name": "Custom", "description": "x",
                        "base_access_level": 10, "admin_merge_request": true}
    }"#;

    #[test]
    fn a_member_row_reads_what_the_full_member_reads() {
        let full: Member = serde_json::from_str(FULL).unwrap();
        let row: MemberRow = serde_json::from_str(FULL).unwrap();
        assert_eq!(row.id, full.id);
        assert_eq!(row.username, full.username);
        assert_eq!(row.name, full.name);
        assert_eq!(row.state, full.state);
        assert_eq!(row.access_level, full.access_level);
        assert_eq!(row.expires_at, full.expires_at);
        assert_eq!(row.created_at, full.created_at);
        assert_eq!(
            row.created_by.map(|c| c.id),
            full.created_by.as_ref().map(|c| c.id)
        );
        assert_eq!(row.awaiting, full.is_awaiting());
        assert!(row.awaiting);
        assert_eq!(row.member_role.map(|r| r.id), full.member_role_id());
        assert_eq!(row.email, full.email);
    }

    #[test]
    fn a_member_row_tolerates_absent_and_null_optional_fields() {
        let row: MemberRow = serde_json::from_str(
            r#"{"id": 5, "username": "bot", "access_level": 10, "membership_state": null,
                "created_by": null, "member_role": null, "created_at": null}"#,
        )
        .unwrap();
        assert!(!row.awaiting);
        assert_eq!(
            (row.created_by, row.member_role, row.created_at),
            (None, None, None)
        );
        let active: MemberRow = serde_json::from_str(
            r#"{"id": 5, "username": "u", "access_level": 10, "membership_state": "active"}"#,
        )
        .unwrap();
        assert!(!active.awaiting);
    }
}
