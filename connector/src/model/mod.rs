//! The normalized access model: the records of a snapshot (docs/contract.md, "Snapshots") and
//! effective access (docs/access-rules.md).

pub mod access;
mod kind;

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

pub use access::{AccessComputer, AccessInput, compute_access};
pub use kind::user_kind;

use crate::api::common::{date_or_timestamp, lenient_timestamp};

pub const SNAPSHOT_SCHEMA: &str = "gitlab-access-snapshot.v1";

/// A group or a project. Orders groups before projects, then by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum ResourceRef {
    Group(u64),
    Project(u64),
}

impl fmt::Display for ResourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceRef::Group(id) => write!(f, "group {id}"),
            ResourceRef::Project(id) => write!(f, "project {id}"),
        }
    }
}

/// `{"type": "group", "id": 42}` on the wire.
pub(crate) mod resource_wire {
    use super::ResourceRef;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wire<'a> {
        #[serde(rename = "type")]
        kind: std::borrow::Cow<'a, str>,
        id: u64,
    }

    pub fn serialize<S: Serializer>(r: &ResourceRef, s: S) -> Result<S::Ok, S::Error> {
        let (kind, id) = match r {
            ResourceRef::Group(id) => ("group", *id),
            ResourceRef::Project(id) => ("project", *id),
        };
        Wire {
            kind: kind.into(),
            id,
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ResourceRef, D::Error> {
        let w = Wire::deserialize(d)?;
        match w.kind.as_ref() {
            "group" => Ok(ResourceRef::Group(w.id)),
            "project" => Ok(ResourceRef::Project(w.id)),
            other => Err(serde::de::Error::custom(format!(
                "unknown resource type {other:?}"
            ))),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    Human,
    ServiceAccount,
    Bot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub schema: String,
    pub snapshot_id: String,
    pub connector: String,
    pub base_url: String,
    pub scope: String,
    pub started_at: DateTime<Utc>,
    /// The date effective access was computed for (UTC): expiries before it give no access.
    pub as_of: NaiveDate,
    /// `gitlab-com` or `self-managed`.
    pub instance: String,
    /// The token's own user: its memberships (e.g. as creator of subgroups) are not drift.
    pub connector_user_id: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: u64,
    pub username: String,
    pub name: String,
    pub state: String,
    pub kind: UserKind,
    /// `null`: not visible to the token.
    pub email: Option<String>,
    pub is_admin: Option<bool>,
    pub two_factor_enabled: Option<bool>,
    #[serde(with = "lenient_timestamp")]
    pub last_sign_in_at: Option<DateTime<Utc>>,
    #[serde(with = "date_or_timestamp")]
    pub last_activity_on: Option<NaiveDate>,
    pub external: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: u64,
    pub full_path: String,
    pub name: String,
    pub parent_id: Option<u64>,
    /// `false` for a group outside the scope read only because it is shared into it.
    pub in_scope: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectRecord {
    pub id: u64,
    pub path_with_namespace: String,
    pub namespace_id: u64,
    pub archived: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipState {
    Active,
    Awaiting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    pub user_id: u64,
    #[serde(with = "resource_wire")]
    pub resource: ResourceRef,
    pub access_level: u16,
    #[serde(with = "date_or_timestamp")]
    pub expires_at: Option<NaiveDate>,
    pub member_role_id: Option<u64>,
    pub state: MembershipState,
    /// Since when (GitLab's `created_at`), and who added the member.
    #[serde(with = "lenient_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    pub created_by_id: Option<u64>,
}

/// A direct membership packed for large inventories (40 bytes, against 80 for the record):
/// the resource is the key it is stored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectMember {
    pub user_id: u64,
    pub member_role_id: Option<std::num::NonZeroU64>,
    pub created_by_id: Option<std::num::NonZeroU64>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: Option<i64>,
    pub expires_at: Option<NaiveDate>,
    pub access_level: u16,
    pub state: MembershipState,
}

impl DirectMember {
    pub fn is_active_on(&self, day: NaiveDate) -> bool {
        self.state == MembershipState::Active && self.expires_at.is_none_or(|d| d >= day)
    }

    pub fn from_record(m: &MembershipRecord) -> Self {
        Self {
            user_id: m.user_id,
            member_role_id: m.member_role_id.and_then(std::num::NonZeroU64::new),
            created_by_id: m.created_by_id.and_then(std::num::NonZeroU64::new),
            created_at_ms: m.created_at.map(|t| t.timestamp_millis()),
            expires_at: m.expires_at,
            access_level: m.access_level,
            state: m.state,
        }
    }

    pub fn record(&self, resource: ResourceRef) -> MembershipRecord {
        MembershipRecord {
            user_id: self.user_id,
            resource,
            access_level: self.access_level,
            expires_at: self.expires_at,
            member_role_id: self.member_role_id.map(|n| n.get()),
            state: self.state,
            created_at: self.created_at_ms.and_then(DateTime::from_timestamp_millis),
            created_by_id: self.created_by_id.map(|n| n.get()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRecord {
    #[serde(with = "resource_wire")]
    pub resource: ResourceRef,
    pub shared_with_group_id: u64,
    pub group_access: u16,
    #[serde(with = "date_or_timestamp")]
    pub expires_at: Option<NaiveDate>,
    pub member_role_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationRecord {
    #[serde(with = "resource_wire")]
    pub resource: ResourceRef,
    pub email: String,
    pub access_level: u16,
    #[serde(with = "date_or_timestamp")]
    pub expires_at: Option<NaiveDate>,
}

/// A custom role (Ultimate), where the token can read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub id: u64,
    pub name: String,
    pub base_access_level: u16,
    pub group_id: Option<u64>,
}

/// A SAML group link of the top-level group: sign-ins may change memberships.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlGroupLinkRecord {
    pub group_id: u64,
    pub name: String,
    pub access_level: u16,
    pub member_role_id: Option<u64>,
    pub provider: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Direct,
    Inherited,
    Shared,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccessPath {
    pub via: Via,
    /// The ancestor (inherited) or the invited group (shared); `null` for direct.
    pub group_id: Option<u64>,
    pub access_level: u16,
    /// When this path stops giving access (the earlier of membership and share expiry).
    #[serde(with = "date_or_timestamp")]
    pub expires_at: Option<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessRecord {
    pub user_id: u64,
    #[serde(with = "resource_wire")]
    pub resource: ResourceRef,
    pub access_level: u16,
    pub paths: Vec<AccessPath>,
}

/// Something that could not be read; it makes the snapshot partial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadFailure {
    /// What could not be read, e.g. `members of project 42`.
    pub what: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_resource"
    )]
    pub resource: Option<ResourceRef>,
    pub route: Option<String>,
    pub code: String,
    pub message: String,
}

mod opt_resource {
    use super::ResourceRef;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(r: &Option<ResourceRef>, s: S) -> Result<S::Ok, S::Error> {
        match r {
            Some(r) => super::resource_wire::serialize(r, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ResourceRef>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::resource_wire")] ResourceRef);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub snapshot_id: String,
    pub complete: bool,
    pub counts: BTreeMap<String, u64>,
    pub api_requests: u64,
    pub rate_limit_waits: u64,
    pub too_many_requests: u64,
    pub retries: u64,
    pub errors: Vec<ReadFailure>,
    /// Optional reads the token was not allowed (e.g. `billable_members`): the snapshot is
    /// complete without them, but fields such as emails or last sign-in may be `null`.
    pub warnings: Vec<String>,
    /// Hex SHA-256 over every line before this one, each with its `\n`.
    pub sha256: String,
    pub prev_sha256: Option<String>,
    pub finished_at: DateTime<Utc>,
}

/// One NDJSON line of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Snapshot(SnapshotHeader),
    User(UserRecord),
    Group(GroupRecord),
    Project(ProjectRecord),
    Membership(MembershipRecord),
    Share(ShareRecord),
    Invitation(InvitationRecord),
    Role(RoleRecord),
    SamlGroupLink(SamlGroupLinkRecord),
    Access(AccessRecord),
    Summary(Summary),
}

impl Record {
    /// The record's identity within a snapshot, as a key whose byte order is the order in
    /// which the snapshot writer emits records (docs/contract.md, "Snapshots"). Two records of one
    /// snapshot never share a key, and the same GitLab object keeps its key across snapshots,
    /// which is what lets a store keep records temporally and rebuild any snapshot exactly.
    /// `None` for the header and the summary, which are not body records.
    pub fn order_key(&self) -> Option<String> {
        fn res(r: &ResourceRef) -> String {
            match r {
                ResourceRef::Group(id) => format!("g{id:020}"),
                ResourceRef::Project(id) => format!("p{id:020}"),
            }
        }
        // '\u{1}' ends free-text parts: it sorts before every character a name or an email
        // can hold, so "a" orders before "ab" as in the writer's string comparison.
        Some(match self {
            Record::Snapshot(_) | Record::Summary(_) => return None,
            Record::User(u) => format!("1/{:020}", u.id),
            Record::Group(g) => format!("2/{:020}", g.id),
            Record::Project(p) => format!("3/{:020}", p.id),
            Record::Membership(m) => format!("4/{}/{:020}", res(&m.resource), m.user_id),
            Record::Share(s) => format!("5/{}/{:020}", res(&s.resource), s.shared_with_group_id),
            Record::Invitation(i) => format!("6/{}/{}\u{1}", res(&i.resource), i.email),
            Record::Role(r) => format!("7/{:020}", r.id),
            Record::SamlGroupLink(l) => format!(
                "8/{}\u{1}{}",
                l.name,
                match &l.provider {
                    None => "0".to_string(),
                    Some(p) => format!("1{p}\u{1}"),
                }
            ),
            Record::Access(a) => format!("9/{}/{:020}", res(&a.resource), a.user_id),
        })
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Record::Snapshot(_) => "snapshot",
            Record::User(_) => "user",
            Record::Group(_) => "group",
            Record::Project(_) => "project",
            Record::Membership(_) => "membership",
            Record::Share(_) => "share",
            Record::Invitation(_) => "invitation",
            Record::Role(_) => "role",
            Record::SamlGroupLink(_) => "saml_group_link",
            Record::Access(_) => "access",
            Record::Summary(_) => "summary",
        }
    }
}
