//! Applying re-read facts to an inventory: the records they replace, and effective access
//! recomputed for the resources they reach (a group's subtree, and what is shared with any group
//! in it), exactly as docs/access-rules.md defines it, the way the full sync computes it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::NaiveDate;

use super::Fact;
use crate::model::{
    AccessComputer, AccessInput, AccessRecord, DirectMember, GroupRecord, MembershipRecord, Record,
    ResourceRef,
};
use crate::snapshot::diff::{self, DiffRecord};
use crate::sync::Inventory;

/// The scope a live inventory covers: a top-level group, or the whole instance (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveScope {
    pub root: Option<u64>,
}

/// What applying facts changed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Applied {
    /// Every snapshot record that changed, by its order key: the new record, or `None` when it
    /// is gone. Access records included.
    pub changes: BTreeMap<String, Option<Record>>,
    /// The effective-access changes, in snapshot order (resource, then user).
    pub access: Vec<DiffRecord>,
}

impl Applied {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

/// Applies `facts` in order and reports what changed; `today` is the date access is computed
/// for from now on.
pub fn apply(inv: &mut Inventory, scope: LiveScope, facts: &[Fact], today: NaiveDate) -> Applied {
    let footprint = Footprint::of(inv, facts);
    let before = footprint.records(inv);
    let roots = roots(inv, facts);
    let affected_before = Tree::of(inv).expand(inv, &roots);
    let users = only_users(facts);
    let old_access = access(inv, &affected_before, users.as_deref());

    for f in facts {
        apply_fact(inv, scope, f);
    }
    if scope.root.is_some() {
        // A group scope's users are the members' (as the full sync writes them).
        for u in &footprint.users {
            if memberships_of(inv, *u).is_empty() {
                inv.users.remove(u);
            }
        }
    }
    inv.as_of = today;

    let after = footprint.records(inv);
    let mut affected = Tree::of(inv).expand(inv, &roots);
    affected.extend(affected_before);
    let new_access = access(inv, &affected, users.as_deref());

    let mut changes: BTreeMap<String, Option<Record>> = BTreeMap::new();
    for (k, old) in &before {
        match after.get(k) {
            Some(new) if new == old => {}
            Some(new) => {
                changes.insert(k.clone(), Some(new.clone()));
            }
            None => {
                changes.insert(k.clone(), None);
            }
        }
    }
    for (k, new) in after {
        if !before.contains_key(&k) {
            changes.insert(k, Some(new));
        }
    }
    let mut access_changes = Vec::new();
    let _ = diff::diff(
        old_access.values().cloned(),
        new_access.values().cloned(),
        true,
        |d| {
            access_changes.push(d);
            Ok::<_, std::convert::Infallible>(())
        },
    );
    for d in &access_changes {
        let key = (d.resource, d.user_id);
        let record = new_access.get(&key).cloned().map(Record::Access);
        let k = Record::Access(
            new_access
                .get(&key)
                .or_else(|| old_access.get(&key))
                .cloned()
                .expect("a change has a side"),
        )
        .order_key()
        .expect("access records have keys");
        changes.insert(k, record);
    }
    Applied {
        changes,
        access: access_changes,
    }
}

/// The ids a batch of facts can change records of (taken before they are applied, plus what
/// the facts themselves name), so the same set read before and after shows every change.
#[derive(Default)]
struct Footprint {
    users: BTreeSet<u64>,
    resources: BTreeSet<ResourceRef>,
    /// Groups whose shares *into* other resources are read too (a group gone takes them).
    shared_with: BTreeSet<u64>,
}

impl Footprint {
    fn of(inv: &Inventory, facts: &[Fact]) -> Self {
        let tree = Tree::of(inv);
        let mut fp = Footprint::default();
        for f in facts {
            match f {
                Fact::Group {
                    group_id,
                    descendants,
                    projects,
                    users,
                    members,
                    ..
                } => {
                    let (groups, projs) = tree.subtree(*group_id);
                    fp.shared_with.extend(groups.iter().copied());
                    fp.resources
                        .extend(groups.iter().map(|g| ResourceRef::Group(*g)));
                    fp.resources
                        .extend(projs.iter().map(|p| ResourceRef::Project(*p)));
                    fp.resources.insert(ResourceRef::Group(*group_id));
                    fp.resources
                        .extend(descendants.iter().map(|g| ResourceRef::Group(g.id)));
                    fp.resources
                        .extend(projects.iter().map(|p| ResourceRef::Project(p.id)));
                    fp.users.extend(users.iter().map(|u| u.id));
                    fp.users.extend(members.iter().map(|m| m.user_id));
                }
                Fact::Project {
                    project_id,
                    users,
                    members,
                    ..
                } => {
                    fp.resources.insert(ResourceRef::Project(*project_id));
                    fp.users.extend(users.iter().map(|u| u.id));
                    fp.users.extend(members.iter().map(|m| m.user_id));
                }
                Fact::Member {
                    resource, user_id, ..
                } => {
                    fp.resources.insert(*resource);
                    fp.users.insert(*user_id);
                }
                Fact::Invitations { resource, .. } => {
                    fp.resources.insert(*resource);
                }
                Fact::User { user_id, .. } => {
                    fp.users.insert(*user_id);
                    fp.resources.extend(memberships_of(inv, *user_id));
                }
            }
        }
        fp
    }

    fn records(&self, inv: &Inventory) -> BTreeMap<String, Record> {
        let mut out = BTreeMap::new();
        let mut put = |r: Record| {
            if let Some(k) = r.order_key() {
                out.insert(k, r);
            }
        };
        for u in &self.users {
            if let Some(u) = inv.users.get(u) {
                put(Record::User(u.clone()));
            }
        }
        for r in &self.resources {
            match r {
                ResourceRef::Group(id) => {
                    if let Some(g) = inv.groups.get(id) {
                        put(Record::Group(g.clone()));
                    }
                }
                ResourceRef::Project(id) => {
                    if let Some(p) = inv.projects.get(id) {
                        put(Record::Project(p.clone()));
                    }
                }
            }
            for m in inv.members.get(r).into_iter().flatten() {
                put(Record::Membership(m.record(*r)));
            }
            for s in inv.shares.get(r).into_iter().flatten() {
                put(Record::Share(s.clone()));
            }
            for i in inv.invitations.get(r).into_iter().flatten() {
                put(Record::Invitation(i.clone()));
            }
        }
        if !self.shared_with.is_empty() {
            for s in inv.shares.values().flatten() {
                if self.shared_with.contains(&s.shared_with_group_id) {
                    put(Record::Share(s.clone()));
                }
            }
        }
        out
    }
}

/// Where access may have changed: the resources whose members, shares or place changed.
fn roots(inv: &Inventory, facts: &[Fact]) -> BTreeSet<ResourceRef> {
    let mut roots = BTreeSet::new();
    for f in facts {
        match f {
            Fact::Group { group_id, .. } => {
                roots.insert(ResourceRef::Group(*group_id));
            }
            Fact::Project { project_id, .. } => {
                roots.insert(ResourceRef::Project(*project_id));
            }
            Fact::Member { resource, .. } => {
                roots.insert(*resource);
            }
            Fact::User {
                user_id,
                user: None,
            } => roots.extend(memberships_of(inv, *user_id)),
            Fact::User { .. } | Fact::Invitations { .. } => {}
        }
    }
    roots
}

fn memberships_of(inv: &Inventory, user_id: u64) -> Vec<ResourceRef> {
    inv.members
        .iter()
        .filter(|(_, ms)| ms.binary_search_by_key(&user_id, |m| m.user_id).is_ok())
        .map(|(r, _)| *r)
        .collect()
}

/// The group tree, downwards.
struct Tree {
    child_groups: HashMap<u64, Vec<u64>>,
    projects: HashMap<u64, Vec<u64>>,
}

impl Tree {
    fn of(inv: &Inventory) -> Self {
        let mut child_groups: HashMap<u64, Vec<u64>> = HashMap::new();
        for g in inv.groups.values() {
            if let Some(p) = g.parent_id {
                child_groups.entry(p).or_default().push(g.id);
            }
        }
        let mut projects: HashMap<u64, Vec<u64>> = HashMap::new();
        for p in inv.projects.values() {
            projects.entry(p.namespace_id).or_default().push(p.id);
        }
        Self {
            child_groups,
            projects,
        }
    }

    /// A group and its known descendants, and their projects.
    fn subtree(&self, g: u64) -> (Vec<u64>, Vec<u64>) {
        let mut groups = vec![g];
        let mut i = 0;
        while i < groups.len() {
            for c in self.child_groups.get(&groups[i]).into_iter().flatten() {
                if !groups.contains(c) {
                    groups.push(*c);
                }
            }
            i += 1;
        }
        let projects = groups
            .iter()
            .flat_map(|g| self.projects.get(g).into_iter().flatten().copied())
            .collect();
        (groups, projects)
    }

    /// The resources access is recomputed for: each root's subtree, and every resource shared
    /// with a group in it (with that resource's subtree; shares are not transitive).
    fn expand(&self, inv: &Inventory, roots: &BTreeSet<ResourceRef>) -> BTreeSet<ResourceRef> {
        let mut out = BTreeSet::new();
        let mut groups_reached = BTreeSet::new();
        let add_subtree = |g: u64, out: &mut BTreeSet<ResourceRef>| {
            let (groups, projects) = self.subtree(g);
            out.extend(groups.iter().map(|g| ResourceRef::Group(*g)));
            out.extend(projects.into_iter().map(ResourceRef::Project));
            groups
        };
        for r in roots {
            match r {
                ResourceRef::Group(g) => groups_reached.extend(add_subtree(*g, &mut out)),
                ResourceRef::Project(p) => {
                    out.insert(ResourceRef::Project(*p));
                }
            }
        }
        for (shared, links) in &inv.shares {
            if links
                .iter()
                .any(|s| groups_reached.contains(&s.shared_with_group_id))
            {
                match shared {
                    ResourceRef::Group(g) => {
                        add_subtree(*g, &mut out);
                    }
                    ResourceRef::Project(p) => {
                        out.insert(ResourceRef::Project(*p));
                    }
                }
            }
        }
        out
    }
}

/// The users whose access the facts can change, when that is all of it: membership and user
/// facts change only their users' access; a group, project or share changes anyone's (`None`).
fn only_users(facts: &[Fact]) -> Option<Vec<u64>> {
    let mut users = Vec::new();
    for f in facts {
        match f {
            Fact::Member { user_id, .. } | Fact::User { user_id, .. } => users.push(*user_id),
            Fact::Invitations { .. } => {}
            Fact::Group { .. } | Fact::Project { .. } => return None,
        }
    }
    users.sort_unstable();
    users.dedup();
    Some(users)
}

/// Effective access on `resources` (the in-scope groups and the projects among them), of
/// `users` only when given (sorted).
fn access(
    inv: &Inventory,
    resources: &BTreeSet<ResourceRef>,
    users: Option<&[u64]>,
) -> BTreeMap<(ResourceRef, u64), AccessRecord> {
    let (parents, project_group) = inv.access_tree();
    let computer = AccessComputer::new(AccessInput {
        as_of: inv.as_of,
        parents: &parents,
        project_group: &project_group,
        members: &inv.members,
        shares: &inv.shares,
    });
    let mut out = BTreeMap::new();
    for r in resources {
        let counted = match r {
            ResourceRef::Group(g) => inv.groups.get(g).is_some_and(|g| g.in_scope),
            ResourceRef::Project(p) => inv.projects.contains_key(p),
        };
        if counted {
            for a in computer.access_for(*r, users) {
                out.insert((a.resource, a.user_id), a);
            }
        }
    }
    out
}

fn in_scope(inv: &Inventory, scope: LiveScope, g: &GroupRecord) -> bool {
    let Some(root) = scope.root else {
        return true;
    };
    let mut cur = Some(g.id);
    let mut parent = g.parent_id;
    let mut steps = 0;
    while let Some(id) = cur {
        if id == root {
            return true;
        }
        steps += 1;
        if steps > 100 {
            return false; // a cycle in bad data
        }
        cur = parent;
        parent = cur
            .and_then(|c| inv.groups.get(&c))
            .and_then(|g| g.parent_id);
    }
    false
}

fn set<T>(map: &mut BTreeMap<ResourceRef, Vec<T>>, r: ResourceRef, items: Vec<T>) {
    if items.is_empty() {
        map.remove(&r);
    } else {
        map.insert(r, items);
    }
}

fn set_members(inv: &mut Inventory, r: ResourceRef, members: &[MembershipRecord]) {
    let mut v: Vec<DirectMember> = members.iter().map(DirectMember::from_record).collect();
    v.sort_by_key(|m| m.user_id);
    v.dedup_by_key(|m| m.user_id);
    set(&mut inv.members, r, v);
}

fn forget_resource(inv: &mut Inventory, r: ResourceRef) {
    inv.members.remove(&r);
    inv.shares.remove(&r);
    inv.invitations.remove(&r);
}

fn add_users(inv: &mut Inventory, users: &[crate::model::UserRecord]) {
    for u in users {
        inv.users.entry(u.id).or_insert_with(|| u.clone());
    }
}

fn apply_fact(inv: &mut Inventory, scope: LiveScope, fact: &Fact) {
    match fact {
        Fact::Group {
            group_id,
            group: None,
            ..
        } => remove_group(inv, *group_id),
        Fact::Group {
            group_id,
            group: Some(g),
            shares,
            members,
            invitations,
            descendants,
            projects,
            users,
            outside,
        } => {
            let read = GroupRead {
                shares,
                members,
                invitations,
                descendants,
                projects,
                users,
                outside: *outside,
            };
            put_group(inv, scope, *group_id, g, read);
        }
        Fact::Project {
            project_id,
            project: None,
            ..
        } => {
            inv.projects.remove(project_id);
            forget_resource(inv, ResourceRef::Project(*project_id));
        }
        Fact::Project {
            project_id,
            project: Some(p),
            shares,
            members,
            invitations,
            users,
        } => {
            let known = inv.projects.contains_key(project_id);
            let in_tree = inv.groups.get(&p.namespace_id).is_some_and(|g| g.in_scope);
            if !known && !in_tree && scope.root.is_some() {
                return;
            }
            inv.projects.insert(*project_id, p.clone());
            let r = ResourceRef::Project(*project_id);
            set(&mut inv.shares, r, shares.clone());
            set_members(inv, r, members);
            set(&mut inv.invitations, r, invitations.clone());
            add_users(inv, users);
        }
        Fact::Member {
            resource,
            user_id,
            member,
            user,
        } => {
            let known = match resource {
                ResourceRef::Group(g) => inv.groups.contains_key(g),
                ResourceRef::Project(p) => inv.projects.contains_key(p),
            };
            if !known {
                return; // not in the scope, or not read yet: a reconcile has it
            }
            let mut ms: Vec<MembershipRecord> = inv
                .members
                .get(resource)
                .into_iter()
                .flatten()
                .filter(|m| m.user_id != *user_id)
                .map(|m| m.record(*resource))
                .collect();
            ms.extend(member.iter().cloned());
            set_members(inv, *resource, &ms);
            add_users(inv, user.as_slice());
        }
        Fact::Invitations {
            resource,
            invitations,
        } => {
            let known = match resource {
                ResourceRef::Group(g) => inv.groups.contains_key(g),
                ResourceRef::Project(p) => inv.projects.contains_key(p),
            };
            if known {
                set(&mut inv.invitations, *resource, invitations.clone());
            }
        }
        Fact::User {
            user_id,
            user: None,
        } => {
            inv.users.remove(user_id);
            for ms in inv.members.values_mut() {
                ms.retain(|m| m.user_id != *user_id);
            }
            inv.members.retain(|_, v| !v.is_empty());
        }
        Fact::User {
            user_id,
            user: Some(u),
        } => {
            if scope.root.is_none() || inv.users.contains_key(user_id) {
                inv.users.insert(*user_id, u.clone());
            }
        }
    }
}

/// A group gone: its subtree, their projects, and the shares with any of them.
fn remove_group(inv: &mut Inventory, group_id: u64) {
    let (groups, projects) = Tree::of(inv).subtree(group_id);
    for p in projects {
        inv.projects.remove(&p);
        forget_resource(inv, ResourceRef::Project(p));
    }
    for g in &groups {
        inv.groups.remove(g);
        forget_resource(inv, ResourceRef::Group(*g));
    }
    for links in inv.shares.values_mut() {
        links.retain(|s| !groups.contains(&s.shared_with_group_id));
    }
    inv.shares.retain(|_, v| !v.is_empty());
}

/// What a group's re-read found besides its record.
struct GroupRead<'a> {
    shares: &'a [crate::model::ShareRecord],
    members: &'a [MembershipRecord],
    invitations: &'a [crate::model::InvitationRecord],
    descendants: &'a [GroupRecord],
    projects: &'a [crate::model::ProjectRecord],
    users: &'a [crate::model::UserRecord],
    outside: bool,
}

/// A group as re-read: kept when in the scope, or known, or read as shared in from outside.
fn put_group(
    inv: &mut Inventory,
    scope: LiveScope,
    group_id: u64,
    g: &GroupRecord,
    read: GroupRead<'_>,
) {
    let GroupRead {
        shares,
        members,
        invitations,
        descendants,
        projects,
        users,
        outside,
    } = read;
    let known = inv.groups.contains_key(&group_id);
    let mut g = g.clone();
    g.in_scope = !outside && in_scope(inv, scope, &g);
    if !known && !g.in_scope && !outside {
        return; // a group outside the scope (a system hook reports every group)
    }
    let in_scope_now = g.in_scope;
    inv.groups.insert(group_id, g);
    let r = ResourceRef::Group(group_id);
    set(&mut inv.shares, r, shares.to_vec());
    set_members(inv, r, members);
    set(&mut inv.invitations, r, invitations.to_vec());
    add_users(inv, users);
    if !in_scope_now {
        // A group outside the scope, known because it is shared into it: its members
        // reach in, its subtree does not.
        return;
    }
    for d in descendants {
        inv.groups.insert(d.id, d.clone());
    }
    for d in descendants {
        let flag = in_scope(inv, scope, d);
        if let Some(g) = inv.groups.get_mut(&d.id) {
            g.in_scope = flag;
        }
    }
    for p in projects {
        inv.projects.insert(p.id, p.clone());
    }
}

#[cfg(test)]
mod tests;
