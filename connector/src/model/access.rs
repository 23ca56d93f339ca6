//! Effective access, exactly as docs/access-rules.md defines it:
//!
//! - a direct member of group G at level L has L on every descendant group and project of G
//!   (`inherited`, `group_id` = G); Minimal Access (5) is never inherited;
//! - group A shared with group B at S: every user with an active direct membership in B or an
//!   ancestor of B gets min(level, S) on A and its descendants (`shared`, `group_id` = B); a
//!   project shared with B likewise; shares are not transitive; Minimal Access does not travel
//!   through a share either (it is not a role that can be shared: `group_access` cannot be 5);
//! - the effective level is the highest over all paths, and every path is listed;
//! - expired (date before `as_of`) memberships and shares and `awaiting` memberships give
//!   nothing; one expiring on `as_of` still gives access;
//! - the account's state does not matter (auditors see it on the user record).
//!
//! Access is computed one resource at a time, so a caller can stream records in order.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;

use super::{AccessPath, AccessRecord, DirectMember, ResourceRef, ShareRecord, Via};

#[derive(Clone, Copy)]
pub struct AccessInput<'a> {
    pub as_of: NaiveDate,
    /// Every known group → its parent.
    pub parents: &'a HashMap<u64, Option<u64>>,
    /// Every known project → its namespace group (`None` for personal projects).
    pub project_group: &'a HashMap<u64, Option<u64>>,
    /// Direct memberships by resource.
    pub members: &'a BTreeMap<ResourceRef, Vec<DirectMember>>,
    /// Shares by shared resource.
    pub shares: &'a BTreeMap<ResourceRef, Vec<ShareRecord>>,
}

/// A user's best active level in a group's chain, for shares: (level, expiry).
type ShareMembers = Vec<(u64, u16, Option<NaiveDate>)>;

pub struct AccessComputer<'a> {
    input: AccessInput<'a>,
    share_members: RefCell<HashMap<u64, std::rc::Rc<ShareMembers>>>,
}

/// The earlier of two optional expiry dates (`None` = never).
fn earliest(a: Option<NaiveDate>, b: Option<NaiveDate>) -> Option<NaiveDate> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Convenience for a single resource.
pub fn compute_access(input: AccessInput<'_>, r: ResourceRef) -> Vec<AccessRecord> {
    AccessComputer::new(input).access(r)
}

impl<'a> AccessComputer<'a> {
    pub fn new(input: AccessInput<'a>) -> Self {
        Self {
            input,
            share_members: RefCell::new(HashMap::new()),
        }
    }

    fn active(&self, m: &DirectMember) -> bool {
        m.is_active_on(self.input.as_of)
    }

    /// The group and its known ancestors, nearest first.
    fn group_chain(&self, g: u64) -> Vec<u64> {
        let mut chain = Vec::with_capacity(8);
        let mut cur = Some(g);
        while let Some(id) = cur {
            if chain.contains(&id) {
                break; // defensive: a cycle in bad data must not hang the sync
            }
            chain.push(id);
            cur = self.input.parents.get(&id).copied().flatten();
        }
        chain
    }

    /// The resource, then the groups it inherits from.
    fn chain(&self, r: ResourceRef) -> Vec<ResourceRef> {
        match r {
            ResourceRef::Group(g) => self
                .group_chain(g)
                .into_iter()
                .map(ResourceRef::Group)
                .collect(),
            ResourceRef::Project(p) => {
                let mut v = vec![r];
                if let Some(Some(g)) = self.input.project_group.get(&p) {
                    v.extend(self.group_chain(*g).into_iter().map(ResourceRef::Group));
                }
                v
            }
        }
    }

    fn members_of(&self, g: u64) -> std::rc::Rc<ShareMembers> {
        if let Some(m) = self.share_members.borrow().get(&g) {
            return m.clone();
        }
        let mut best: HashMap<u64, (u16, Option<NaiveDate>)> = HashMap::new();
        for node in self.group_chain(g) {
            for m in self
                .input
                .members
                .get(&ResourceRef::Group(node))
                .into_iter()
                .flatten()
            {
                if !self.active(m) || m.access_level <= 5 {
                    continue;
                }
                let e = best.entry(m.user_id).or_insert((0, None));
                if m.access_level > e.0 {
                    *e = (m.access_level, m.expires_at);
                }
            }
        }
        let mut v: ShareMembers = best.into_iter().map(|(u, (l, e))| (u, l, e)).collect();
        v.sort_unstable();
        let rc = std::rc::Rc::new(v);
        self.share_members.borrow_mut().insert(g, rc.clone());
        rc
    }

    /// Every user's access to `r`, sorted by user id.
    pub fn access(&self, r: ResourceRef) -> Vec<AccessRecord> {
        self.access_for(r, None)
    }

    /// The access to `r` of `users` only (sorted ids; every user for `None`): what a change to
    /// those users' memberships can change, found without walking everyone else's.
    pub fn access_for(&self, r: ResourceRef, users: Option<&[u64]>) -> Vec<AccessRecord> {
        let chain = self.chain(r);
        let mut paths: BTreeMap<u64, Vec<AccessPath>> = BTreeMap::new();
        let wanted = |u: u64| users.is_none_or(|us| us.binary_search(&u).is_ok());
        for (i, node) in chain.iter().enumerate() {
            let all = self
                .input
                .members
                .get(node)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            // Members are sorted by user: a few users are looked up, not scanned for.
            let picked: Vec<&DirectMember> = match users {
                None => all.iter().collect(),
                Some(us) => us
                    .iter()
                    .filter_map(|u| {
                        all.binary_search_by_key(u, |m| m.user_id)
                            .ok()
                            .map(|i| &all[i])
                    })
                    .collect(),
            };
            for m in picked {
                if !self.active(m) {
                    continue;
                }
                let path = if i == 0 {
                    AccessPath {
                        via: Via::Direct,
                        group_id: None,
                        access_level: m.access_level,
                        expires_at: m.expires_at,
                    }
                } else if m.access_level > 5 {
                    let ResourceRef::Group(g) = node else {
                        continue;
                    };
                    AccessPath {
                        via: Via::Inherited,
                        group_id: Some(*g),
                        access_level: m.access_level,
                        expires_at: m.expires_at,
                    }
                } else {
                    continue;
                };
                paths.entry(m.user_id).or_default().push(path);
            }
        }
        for node in &chain {
            for share in self.input.shares.get(node).into_iter().flatten() {
                if share.expires_at.is_some_and(|d| d < self.input.as_of) {
                    continue;
                }
                let b = share.shared_with_group_id;
                for &(user, level, exp) in self.members_of(b).iter().filter(|m| wanted(m.0)) {
                    let path = AccessPath {
                        via: Via::Shared,
                        group_id: Some(b),
                        access_level: level.min(share.group_access),
                        expires_at: earliest(exp, share.expires_at),
                    };
                    let list = paths.entry(user).or_default();
                    // One path per invited group: the best of the shares that reach it.
                    match list
                        .iter_mut()
                        .find(|p| p.via == Via::Shared && p.group_id == Some(b))
                    {
                        Some(existing) if existing.access_level < path.access_level => {
                            *existing = path
                        }
                        Some(_) => {}
                        None => list.push(path),
                    }
                }
            }
        }
        paths
            .into_iter()
            .map(|(user_id, mut paths)| {
                paths.sort();
                let access_level = paths.iter().map(|p| p.access_level).max().unwrap_or(0);
                AccessRecord {
                    user_id,
                    resource: r,
                    access_level,
                    paths,
                }
            })
            .collect()
    }
}
