//! Effective access as GitLab computes it for `members/all` and permission checks, following
//! docs/access-rules.md: inheritance down the tree, shares capped at
//! `group_access` (not transitive), the highest level over all paths, minimal access not
//! inherited, expired and awaiting memberships giving nothing.

use crate::model::{Membership, Resource, World};

/// One way a user reaches a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    pub level: u16,
    /// The membership record the level comes from.
    pub from: Resource,
    pub user_id: u64,
}

impl World {
    fn active(&self, m: &Membership) -> bool {
        m.state == crate::model::MemberState::Active
            && m.expires_at.is_none_or(|d| d >= self.today())
    }

    fn direct(&self, r: Resource, user: u64) -> Option<&Membership> {
        self.members
            .get(&r)
            .and_then(|m| m.get(&user))
            .filter(|m| self.active(m))
    }

    /// The resource and the groups it inherits from, nearest first.
    pub fn chain(&self, r: Resource) -> Vec<Resource> {
        match r {
            Resource::Group(g) => self
                .ancestors_and_self(g)
                .into_iter()
                .map(Resource::Group)
                .collect(),
            Resource::Project(p) => {
                let mut v = vec![r];
                if let Some(g) = self.projects.get(&p).and_then(|p| p.group_id) {
                    v.extend(self.ancestors_and_self(g).into_iter().map(Resource::Group));
                }
                v
            }
        }
    }

    /// The user's level in group `b` for a share: an active direct membership in `b` or an
    /// ancestor (minimal access counts only on `b` itself).
    fn level_in_group(&self, b: u64, user: u64) -> Option<(u16, Resource)> {
        self.ancestors_and_self(b)
            .into_iter()
            .enumerate()
            .filter_map(|(i, g)| {
                let m = self.direct(Resource::Group(g), user)?;
                (i == 0 || m.access_level > 5).then_some((m.access_level, Resource::Group(g)))
            })
            .max_by_key(|(l, _)| *l)
    }

    /// The best path, or `None` when the user has no access.
    pub fn effective(&self, user: u64, r: Resource) -> Option<Path> {
        let today = self.today();
        let chain = self.chain(r);
        let mut best: Option<Path> = None;
        let mut consider = |level: u16, from: Resource| {
            if best.is_none_or(|b| level > b.level) {
                best = Some(Path {
                    level,
                    from,
                    user_id: user,
                });
            }
        };
        for (i, node) in chain.iter().enumerate() {
            if let Some(m) = self.direct(*node, user)
                && (i == 0 || m.access_level > 5)
            {
                consider(m.access_level, *node);
            }
        }
        for node in &chain {
            let Some(shares) = self.shares.get(node) else {
                continue;
            };
            for (b, share) in shares {
                if share.expires_at.is_some_and(|d| d < today) {
                    continue;
                }
                if let Some((lvl, from)) = self.level_in_group(*b, user) {
                    consider(lvl.min(share.group_access), from);
                }
            }
        }
        best
    }

    pub fn effective_level(&self, user: u64, r: Resource) -> u16 {
        self.effective(user, r).map_or(0, |p| p.level)
    }

    /// The highest level inherited from ancestor groups (not the resource itself, not shares):
    /// GitLab refuses a direct membership below it.
    pub fn inherited_floor(&self, user: u64, r: Resource) -> Option<(u16, u64)> {
        self.chain(r)
            .into_iter()
            .skip(1)
            .filter_map(|node| {
                let m = self.direct(node, user)?;
                let Resource::Group(g) = node else {
                    return None;
                };
                (m.access_level > 5).then_some((m.access_level, g))
            })
            .max_by_key(|(l, _)| *l)
    }

    /// Whether the user may see the group: access to it, or a membership below it.
    pub fn can_see_group(&self, user: u64, g: u64) -> bool {
        if self.effective_level(user, Resource::Group(g)) > 0 {
            return true;
        }
        self.descendants(g)
            .into_iter()
            .any(|d| self.effective_level(user, Resource::Group(d)) > 0)
            || self
                .projects_of(g, true)
                .into_iter()
                .any(|p| self.effective_level(user, Resource::Project(p)) >= 10)
    }

    pub fn can_see_project(&self, user: u64, p: u64) -> bool {
        self.effective_level(user, Resource::Project(p)) >= 10
    }
}
