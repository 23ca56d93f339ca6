//! Provisioning logic that only needs GitLab: resolving the user and target a job names, and
//! reading what access a user has on a target and through which paths. The worker's handlers
//! plan and execute writes on top of this; the database (checkpoints, JIT grants, audit) stays
//! in the worker.

use chrono::NaiveDate;
use futures::TryStreamExt;
use serde::Serialize;

use crate::api::{AccessLevel, Group, Member, Source, User, UsersQuery};
use crate::client::IdOrPath;
use crate::{Client, Error};

/// How a job names a user (`U` of the job envelope): exactly one of id, username, email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UserRef {
    Id(u64),
    Username(String),
    Email(String),
}

/// A group or a project.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Group,
    Project,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Group => "group",
            TargetKind::Project => "project",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "group" => Some(TargetKind::Group),
            "project" => Some(TargetKind::Project),
            _ => None,
        }
    }
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a job names a group or a project (`T` of the job envelope): a full path or an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRef {
    Group(IdOrPath),
    Project(IdOrPath),
}

impl TargetRef {
    /// The target by id, as stored records name it.
    pub fn by_id(kind: TargetKind, id: u64) -> Self {
        match kind {
            TargetKind::Group => TargetRef::Group(IdOrPath::Id(id)),
            TargetKind::Project => TargetRef::Project(IdOrPath::Id(id)),
        }
    }

    pub fn kind(&self) -> TargetKind {
        match self {
            TargetRef::Group(_) => TargetKind::Group,
            TargetRef::Project(_) => TargetKind::Project,
        }
    }

    pub fn reference(&self) -> &IdOrPath {
        match self {
            TargetRef::Group(r) | TargetRef::Project(r) => r,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("no GitLab user matches {0}; check the job's `user` (ids and usernames are exact)")]
    UserNotFound(String),
    #[error(
        "the {kind} {reference} does not exist or the connector's token cannot see it; check the job's `target`"
    )]
    TargetNotFound { kind: TargetKind, reference: String },
    #[error(transparent)]
    GitLab(#[from] Error),
}

impl ProvisionError {
    pub fn is_transient(&self) -> bool {
        matches!(self, ProvisionError::GitLab(e) if e.is_transient())
    }
}

/// A resolved group or project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    #[serde(rename = "type")]
    pub kind: TargetKind,
    pub id: u64,
    pub full_path: String,
    /// The group right above it (for a project: its namespace, when that is a group). The
    /// groups further up are read only when an access view needs them.
    #[serde(skip)]
    pub parent: Option<u64>,
}

impl Target {
    /// A target known only by its stored kind, id and path (its parent not read).
    pub fn known(kind: TargetKind, id: u64, full_path: String) -> Self {
        Self {
            kind,
            id,
            full_path,
            parent: None,
        }
    }

    pub fn source(&self) -> Source {
        match self.kind {
            TargetKind::Group => Source::Group(IdOrPath::Id(self.id)),
            TargetKind::Project => Source::Project(IdOrPath::Id(self.id)),
        }
    }

    /// `{"type": "group", "id": 42}`, as results name targets.
    pub fn reference(&self) -> serde_json::Value {
        serde_json::json!({"type": self.kind.as_str(), "id": self.id})
    }

    /// The top-level group (for SAML links), when the target lives in one: the first segment
    /// of its path (groups nest only in groups), read from the path rather than from GitLab.
    pub fn top_level_group(&self) -> Option<IdOrPath> {
        match (self.kind, self.parent) {
            (TargetKind::Group, None) => Some(IdOrPath::Id(self.id)),
            (_, Some(_)) => self
                .full_path
                .split('/')
                .next()
                .filter(|top| !top.is_empty())
                .map(|top| IdOrPath::Path(top.to_string())),
            // A project in a user's namespace.
            (TargetKind::Project, None) => None,
        }
    }
}

fn describe_user(u: &UserRef) -> String {
    match u {
        UserRef::Id(id) => format!("id {id}"),
        UserRef::Username(n) => format!("username {n:?}"),
        UserRef::Email(e) => format!("email {e:?}"),
    }
}

/// Finds the user a job names. Emails resolve through the users search (all emails for an
/// administrator, public emails otherwise); exactly one match is required.
pub async fn resolve_user(client: &Client, u: &UserRef) -> Result<User, ProvisionError> {
    let found = match u {
        UserRef::Id(id) => match client.user(*id).await {
            Ok(user) => Some(user),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        },
        UserRef::Username(name) => client.user_by_username(name).await?,
        UserRef::Email(email) => {
            let q = UsersQuery {
                search: Some(email.clone()),
                ..Default::default()
            };
            let users: Vec<User> = client.users(&q).try_collect().await?;
            let mut matching: Vec<User> = users
                .into_iter()
                .filter(|x| {
                    [&x.email, &x.public_email]
                        .iter()
                        .any(|e| e.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(email)))
                })
                .collect();
            if matching.len() > 1 {
                return Err(ProvisionError::UserNotFound(format!(
                    "{} (several users match; name the user by id or username)",
                    describe_user(u)
                )));
            }
            matching.pop()
        }
    };
    found.ok_or_else(|| ProvisionError::UserNotFound(describe_user(u)))
}

async fn ancestors(client: &Client, mut parent: Option<u64>) -> Result<Vec<Group>, Error> {
    let mut out = Vec::new();
    while let Some(id) = parent {
        // Bounded: GitLab nests at most 20 levels.
        if out.len() > 25 {
            break;
        }
        let g = client.group(&IdOrPath::Id(id)).await?;
        parent = g.parent_id;
        out.push(g);
    }
    Ok(out)
}

pub async fn resolve_target(client: &Client, t: &TargetRef) -> Result<Target, ProvisionError> {
    match t {
        TargetRef::Group(r) => {
            let g = match client.group(r).await {
                Ok(g) => g,
                Err(e) if e.is_not_found() => {
                    return Err(ProvisionError::TargetNotFound {
                        kind: TargetKind::Group,
                        reference: r.to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            Ok(Target {
                kind: TargetKind::Group,
                id: g.id,
                full_path: g.full_path.clone(),
                parent: g.parent_id,
            })
        }
        TargetRef::Project(r) => {
            let p = match client.project(r).await {
                Ok(p) => p,
                Err(e) if e.is_not_found() => {
                    return Err(ProvisionError::TargetNotFound {
                        kind: TargetKind::Project,
                        reference: r.to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            let in_group = p.namespace.kind.as_deref() == Some("group");
            Ok(Target {
                kind: TargetKind::Project,
                id: p.id,
                full_path: p.path_with_namespace.clone(),
                parent: in_group.then_some(p.namespace.id),
            })
        }
    }
}

/// A membership's state as the worker sets and restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MemberState {
    pub access_level: u16,
    pub expires_at: Option<NaiveDate>,
    pub member_role_id: Option<u64>,
}

impl MemberState {
    pub fn of(m: &Member) -> Self {
        Self {
            access_level: m.access_level.0,
            expires_at: m.expires_at,
            member_role_id: m.member_role_id(),
        }
    }

    pub fn level(&self) -> AccessLevel {
        AccessLevel(self.access_level)
    }
}

/// One way a user reaches a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessPathView {
    /// `direct`, `inherited`, `shared` or `invitation`.
    pub via: &'static str,
    pub group_id: Option<u64>,
    pub group_path: Option<String>,
    pub access_level: u16,
    pub expires_at: Option<NaiveDate>,
}

/// What a user can do on a target, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccessView {
    /// The direct membership, if any.
    pub direct: Option<MemberState>,
    /// The effective level (GitLab's `members/all`), 0 when none.
    pub effective_level: u16,
    pub paths: Vec<AccessPathView>,
}

/// Reads a user's access on a target: the direct membership, the effective membership, and the
/// paths that explain it (direct, each ancestor's direct membership; what remains comes from a
/// group share).
pub async fn access_on(
    client: &Client,
    target: &Target,
    user_id: u64,
) -> Result<AccessView, ProvisionError> {
    let direct = client.direct_member(&target.source(), user_id).await?;
    access_with_direct(client, target, user_id, direct).await
}

/// [`access_on`] when the direct membership is known already (read, or just removed), so it is
/// not read again. The groups above the target are read only when the user has access there.
pub async fn access_with_direct(
    client: &Client,
    target: &Target,
    user_id: u64,
    direct: Option<Member>,
) -> Result<AccessView, ProvisionError> {
    let effective = client.effective_member(&target.source(), user_id).await?;
    let mut paths = Vec::new();
    if let Some(d) = &direct
        && !d.is_awaiting()
    {
        paths.push(AccessPathView {
            via: "direct",
            group_id: None,
            group_path: None,
            access_level: d.access_level.0,
            expires_at: d.expires_at,
        });
    }
    let mut explained = direct
        .as_ref()
        .filter(|d| !d.is_awaiting())
        .map_or(0, |d| d.access_level.0);
    let effective_level = effective
        .as_ref()
        .filter(|m| !m.is_awaiting())
        .map_or(0, |m| m.access_level.0);
    if effective_level > 0 {
        for g in &ancestors(client, target.parent).await? {
            if let Some(m) = client
                .direct_member(&Source::Group(IdOrPath::Id(g.id)), user_id)
                .await?
                .filter(|m| !m.is_awaiting() && m.access_level.0 > 5)
            {
                explained = explained.max(m.access_level.0);
                paths.push(AccessPathView {
                    via: "inherited",
                    group_id: Some(g.id),
                    group_path: Some(g.full_path.clone()),
                    access_level: m.access_level.0,
                    expires_at: m.expires_at,
                });
            }
        }
        if effective_level > explained {
            // Neither direct nor inherited: a group shared with the target (or an ancestor).
            paths.push(AccessPathView {
                via: "shared",
                group_id: None,
                group_path: None,
                access_level: effective_level,
                expires_at: effective.as_ref().and_then(|m| m.expires_at),
            });
        }
    }
    Ok(AccessView {
        direct: direct.as_ref().map(MemberState::of),
        effective_level,
        paths,
    })
}

/// Pending invitations on `target` for `email`.
pub async fn pending_invitations(
    client: &Client,
    target: &Target,
    email: &str,
) -> Result<Vec<crate::api::Invitation>, ProvisionError> {
    let all: Vec<crate::api::Invitation> = client
        .invitations(&target.source(), Some(email))
        .try_collect()
        .await?;
    Ok(all
        .into_iter()
        .filter(|i| i.invite_email.eq_ignore_ascii_case(email))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(kind: TargetKind, full_path: &str, parent: Option<u64>) -> Target {
        Target {
            kind,
            id: 7,
            full_path: full_path.into(),
            parent,
        }
    }

    #[test]
    fn the_top_level_group_is_read_from_the_path() {
        let top = |t: Target| t.top_level_group().map(|g| g.segment());
        assert_eq!(
            top(target(TargetKind::Group, "org", None)),
            Some("7".into())
        );
        assert_eq!(
            top(target(TargetKind::Group, "org/a/b", Some(3))),
            Some("org".into())
        );
        assert_eq!(
            top(target(TargetKind::Project, "org/a/p", Some(3))),
            Some("org".into())
        );
        // A project in a user's namespace lives in no group.
        assert_eq!(top(target(TargetKind::Project, "alice/p", None)), None);
    }
}
