//! Live access: GitLab's events are hints of what changed (docs/hooks.md). Each is turned into
//! a [`Touch`] (what to read again), the re-read gives [`Fact`]s (what GitLab says now), and the
//! facts are applied to the stored inventory, recomputing effective access only where they reach
//! ([`apply`]). A fact is complete for what it covers, so applying the same facts again, or on a
//! newer inventory, gives the same result: that is what lets several workers, and a full sync
//! that ran meanwhile, agree.

mod apply;
mod events;
mod reread;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

pub use apply::{Applied, LiveScope, apply};
pub use events::{share_delivery, touches};
pub use reread::reread;

use crate::model::{
    GroupRecord, InvitationRecord, MembershipRecord, ProjectRecord, Record, ResourceRef,
    ShareRecord, UserRecord,
};
use crate::sync::Inventory;

/// What an event says may have changed: read again before anything is believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "touch", rename_all = "snake_case")]
pub enum Touch {
    /// A group or project, with its shares, members and invitations (created, moved, renamed or
    /// gone). Ordered first: a membership in a group created in the same batch needs the group.
    Group {
        group_id: u64,
    },
    Project {
        project_id: u64,
    },
    /// One user's direct membership of one group or project.
    Member {
        #[serde(with = "crate::model::resource_wire")]
        resource: ResourceRef,
        user_id: u64,
    },
    /// A group's or project's pending invitations (an accepted one became a member).
    Invitations {
        #[serde(with = "crate::model::resource_wire")]
        resource: ResourceRef,
    },
    /// A user's account (created, renamed, destroyed).
    User {
        user_id: u64,
    },
}

/// What GitLab said when read again. `None` records mean GitLab answered 404: it is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "fact", rename_all = "snake_case")]
pub enum Fact {
    Group {
        group_id: u64,
        group: Option<GroupRecord>,
        #[serde(default)]
        shares: Vec<ShareRecord>,
        #[serde(default)]
        members: Vec<MembershipRecord>,
        #[serde(default)]
        invitations: Vec<InvitationRecord>,
        /// Its descendants and their projects, whose paths follow a moved or renamed group.
        #[serde(default)]
        descendants: Vec<GroupRecord>,
        #[serde(default)]
        projects: Vec<ProjectRecord>,
        /// The member users not known yet.
        #[serde(default)]
        users: Vec<UserRecord>,
        /// Read because it is outside the scope and shared into it (or an ancestor of such a
        /// group): kept, with `in_scope` false, for its members.
        #[serde(default)]
        outside: bool,
    },
    Project {
        project_id: u64,
        project: Option<ProjectRecord>,
        #[serde(default)]
        shares: Vec<ShareRecord>,
        #[serde(default)]
        members: Vec<MembershipRecord>,
        #[serde(default)]
        invitations: Vec<InvitationRecord>,
        #[serde(default)]
        users: Vec<UserRecord>,
    },
    Member {
        #[serde(with = "crate::model::resource_wire")]
        resource: ResourceRef,
        user_id: u64,
        member: Option<MembershipRecord>,
        /// The user, when not known yet (from the member entity).
        #[serde(default)]
        user: Option<UserRecord>,
    },
    Invitations {
        #[serde(with = "crate::model::resource_wire")]
        resource: ResourceRef,
        invitations: Vec<InvitationRecord>,
    },
    User {
        user_id: u64,
        user: Option<UserRecord>,
    },
}

impl Fact {
    /// A group GitLab no longer has (404).
    pub fn group_gone(group_id: u64) -> Self {
        Fact::Group {
            group_id,
            group: None,
            shares: vec![],
            members: vec![],
            invitations: vec![],
            descendants: vec![],
            projects: vec![],
            users: vec![],
            outside: false,
        }
    }

    /// A project GitLab no longer has (404).
    pub fn project_gone(project_id: u64) -> Self {
        Fact::Project {
            project_id,
            project: None,
            shares: vec![],
            members: vec![],
            invitations: vec![],
            users: vec![],
        }
    }
}

impl Inventory {
    /// Every known group's parent, and every known project's group (`None` for a project whose
    /// namespace is not a known group): the tree effective access is computed over.
    pub fn access_tree(&self) -> (HashMap<u64, Option<u64>>, HashMap<u64, Option<u64>>) {
        let parents = self.groups.values().map(|g| (g.id, g.parent_id)).collect();
        let project_group = self
            .projects
            .values()
            .map(|p| {
                (
                    p.id,
                    self.groups
                        .contains_key(&p.namespace_id)
                        .then_some(p.namespace_id),
                )
            })
            .collect();
        (parents, project_group)
    }

    /// The inventory a snapshot's records describe (its access records are derived, and
    /// skipped: they are computed again where needed).
    pub fn from_records<E>(
        records: impl IntoIterator<Item = Result<Record, E>>,
    ) -> Result<Inventory, E> {
        let mut inv = Inventory::default();
        let mut members: BTreeMap<ResourceRef, Vec<crate::model::DirectMember>> = BTreeMap::new();
        for r in records {
            match r? {
                Record::Snapshot(h) => {
                    inv.as_of = h.as_of;
                    inv.connector_user_id = h.connector_user_id;
                }
                Record::User(u) => {
                    inv.users.insert(u.id, u);
                }
                Record::Group(g) => {
                    inv.groups.insert(g.id, g);
                }
                Record::Project(p) => {
                    inv.projects.insert(p.id, p);
                }
                Record::Membership(m) => members
                    .entry(m.resource)
                    .or_default()
                    .push(crate::model::DirectMember::from_record(&m)),
                Record::Share(s) => inv.shares.entry(s.resource).or_default().push(s),
                Record::Invitation(i) => inv.invitations.entry(i.resource).or_default().push(i),
                Record::Role(r) => inv.roles.push(r),
                Record::SamlGroupLink(l) => inv.saml_links.push(l),
                Record::Summary(s) => {
                    inv.errors = s.errors;
                    inv.warnings = s.warnings;
                }
                Record::Access(_) => {}
            }
        }
        inv.members = members;
        Ok(inv)
    }
}
