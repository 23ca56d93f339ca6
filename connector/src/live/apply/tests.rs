use super::*;
use crate::model::{MembershipState, ProjectRecord, ShareRecord, UserKind, UserRecord};

fn day(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn user(id: u64) -> UserRecord {
    UserRecord {
        id,
        username: format!("u{id}"),
        name: format!("User {id}"),
        state: "active".into(),
        kind: UserKind::Human,
        email: None,
        is_admin: None,
        two_factor_enabled: None,
        last_sign_in_at: None,
        last_activity_on: None,
        external: None,
    }
}

fn group(id: u64, parent: Option<u64>, in_scope: bool) -> GroupRecord {
    GroupRecord {
        id,
        full_path: format!("g{id}"),
        name: format!("g{id}"),
        parent_id: parent,
        in_scope,
    }
}

fn member(r: ResourceRef, user_id: u64, level: u16) -> MembershipRecord {
    MembershipRecord {
        user_id,
        resource: r,
        access_level: level,
        expires_at: None,
        member_role_id: None,
        state: MembershipState::Active,
        created_at: None,
        created_by_id: None,
    }
}

const SCOPE: LiveScope = LiveScope { root: Some(1) };

/// Scope 1 > 2 > project 20; group 9 outside the scope is shared into project 20; user 5
/// owns 1, user 6 is a developer of 9.
fn inventory() -> Inventory {
    let mut inv = Inventory {
        as_of: day("2026-12-01"),
        ..Default::default()
    };
    for g in [
        group(1, None, true),
        group(2, Some(1), true),
        group(9, None, false),
    ] {
        inv.groups.insert(g.id, g);
    }
    inv.projects.insert(
        20,
        ProjectRecord {
            id: 20,
            path_with_namespace: "g1/g2/p20".into(),
            namespace_id: 2,
            archived: false,
        },
    );
    for (r, u, l) in [
        (ResourceRef::Group(1), 5, 50),
        (ResourceRef::Group(9), 6, 30),
    ] {
        inv.members
            .insert(r, vec![DirectMember::from_record(&member(r, u, l))]);
        inv.users.insert(u, user(u));
    }
    inv.shares.insert(
        ResourceRef::Project(20),
        vec![ShareRecord {
            resource: ResourceRef::Project(20),
            shared_with_group_id: 9,
            group_access: 20,
            expires_at: None,
            member_role_id: None,
        }],
    );
    inv
}

fn all_resources(inv: &Inventory) -> BTreeSet<ResourceRef> {
    inv.groups
        .keys()
        .map(|g| ResourceRef::Group(*g))
        .chain(inv.projects.keys().map(|p| ResourceRef::Project(*p)))
        .collect()
}

/// Applies `facts` and checks the reported access changes against a full recomputation:
/// the access before, patched with the changes, is the access after.
fn apply_checked(inv: &mut Inventory, facts: &[Fact]) -> Applied {
    let before = access(inv, &all_resources(inv), None);
    let applied = apply(inv, SCOPE, facts, inv.as_of);
    let after = access(inv, &all_resources(inv), None);
    let mut patched = before.clone();
    for d in &applied.access {
        match after.get(&(d.resource, d.user_id)) {
            Some(a) => patched.insert((d.resource, d.user_id), a.clone()),
            None => patched.remove(&(d.resource, d.user_id)),
        };
    }
    assert_eq!(
        patched, after,
        "the changes do not account for the new access"
    );
    for (k, v) in &applied.changes {
        if let Some(Record::Access(a)) = v {
            assert_eq!(after.get(&(a.resource, a.user_id)), Some(a), "{k}");
        }
    }
    applied
}

fn changes_of(a: &Applied) -> Vec<(diff::Change, ResourceRef, u64)> {
    a.access
        .iter()
        .map(|d| (d.change, d.resource, d.user_id))
        .collect()
}

#[test]
fn a_member_added_to_the_top_group_reaches_the_subtree_and_again_changes_nothing() {
    let mut inv = inventory();
    let r = ResourceRef::Group(1);
    let facts = vec![Fact::Member {
        resource: r,
        user_id: 7,
        member: Some(member(r, 7, 30)),
        user: Some(user(7)),
    }];
    let a = apply_checked(&mut inv, &facts);
    use diff::Change::AccessAdded;
    assert_eq!(
        changes_of(&a),
        vec![
            (AccessAdded, ResourceRef::Group(1), 7),
            (AccessAdded, ResourceRef::Group(2), 7),
            (AccessAdded, ResourceRef::Project(20), 7),
        ]
    );
    assert!(
        a.changes.contains_key(&format!("1/{:020}", 7)),
        "the user record"
    );
    assert!(
        a.changes.contains_key(&format!("4/g{:020}/{:020}", 1, 7)),
        "the membership"
    );
    let again = apply_checked(&mut inv, &facts);
    assert!(again.is_empty(), "{:?}", again.changes);
}

#[test]
fn a_member_of_a_shared_group_changes_access_through_the_share() {
    let mut inv = inventory();
    let r = ResourceRef::Group(9);
    let a = apply_checked(
        &mut inv,
        &[Fact::Member {
            resource: r,
            user_id: 6,
            member: None,
            user: None,
        }],
    );
    assert_eq!(
        changes_of(&a),
        vec![(diff::Change::AccessRemoved, ResourceRef::Project(20), 6)]
    );
    assert_eq!(
        a.changes.get(&format!("1/{:020}", 6)),
        Some(&None),
        "a group scope keeps only its members' user records"
    );
}

#[test]
fn a_group_destroyed_takes_its_subtree_and_the_shares_with_it() {
    let mut inv = inventory();
    let a = apply_checked(&mut inv, &[Fact::group_gone(9)]);
    assert_eq!(
        changes_of(&a),
        vec![(diff::Change::AccessRemoved, ResourceRef::Project(20), 6)]
    );
    assert!(inv.shares.is_empty());
    assert!(a.changes.contains_key(&format!("5/p{:020}/{:020}", 20, 9)));

    let a = apply_checked(&mut inv, &[Fact::group_gone(2)]);
    assert_eq!(
        changes_of(&a),
        vec![
            (diff::Change::AccessRemoved, ResourceRef::Group(2), 5),
            (diff::Change::AccessRemoved, ResourceRef::Project(20), 5),
        ]
    );
    assert!(inv.projects.is_empty());
}

#[test]
fn a_new_subgroup_in_scope_is_kept_and_one_outside_is_not() {
    let mut inv = inventory();
    let new = |id: u64, parent: u64| Fact::Group {
        group_id: id,
        group: Some(group(id, Some(parent), true)),
        shares: vec![],
        members: vec![],
        invitations: vec![],
        descendants: vec![],
        projects: vec![],
        users: vec![],
        outside: false,
    };
    let a = apply_checked(&mut inv, &[new(3, 2), new(30, 9)]);
    assert_eq!(
        changes_of(&a),
        vec![(diff::Change::AccessAdded, ResourceRef::Group(3), 5)]
    );
    assert!(inv.groups.contains_key(&3));
    assert!(!inv.groups.contains_key(&30), "outside the scope");
}

#[test]
fn a_user_destroyed_loses_every_membership() {
    let mut inv = inventory();
    let a = apply_checked(
        &mut inv,
        &[Fact::User {
            user_id: 5,
            user: None,
        }],
    );
    assert_eq!(a.access.len(), 3, "{:?}", changes_of(&a));
    assert!(
        a.access
            .iter()
            .all(|d| d.change == diff::Change::AccessRemoved && d.user_id == 5)
    );
    assert!(!inv.users.contains_key(&5));
}

#[test]
fn a_level_change_is_access_changed_with_both_sides() {
    let mut inv = inventory();
    let r = ResourceRef::Group(1);
    let a = apply_checked(
        &mut inv,
        &[Fact::Member {
            resource: r,
            user_id: 5,
            member: Some(member(r, 5, 40)),
            user: None,
        }],
    );
    assert_eq!(a.access.len(), 3);
    let d = &a.access[0];
    assert_eq!(d.change, diff::Change::AccessChanged);
    assert_eq!(d.before.as_ref().unwrap().access_level, 50);
    assert_eq!(d.after.as_ref().unwrap().access_level, 40);
}
