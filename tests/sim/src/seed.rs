//! Deterministic, realistic organisations: power-law group and project sizes, nested
//! subgroups, a few shares, expiring and awaiting memberships, bots and service accounts,
//! blocked users, pending invitations, custom roles and SAML group links.

use chrono::Duration;
use serde::Serialize;

use crate::model::{
    MemberRole, MemberState, Membership, Mode, Resource, SamlGroupLink, UserKind, World,
};

#[derive(Debug, Clone, Serialize)]
pub struct SeedSpec {
    pub seed: u64,
    pub users: usize,
    /// Groups in the scope's tree, the top-level group included.
    pub groups: usize,
    pub projects: usize,
    /// Maximum subgroup nesting below the top-level group.
    pub depth: usize,
    pub memberships: usize,
    pub shares: usize,
    pub mode: Mode,
}

impl SeedSpec {
    pub fn small(seed: u64, mode: Mode) -> Self {
        Self {
            seed,
            users: 60,
            groups: 12,
            projects: 30,
            depth: 3,
            memberships: 400,
            shares: 6,
            mode,
        }
    }
}

pub struct Seeded {
    pub world: World,
    /// The connector's token: an admin's on self-managed, a top-level group owner's on GitLab.com.
    pub token: String,
    /// The top-level group's full path.
    pub scope: String,
}

const FIRST: [&str; 16] = [
    "ada",
    "alan",
    "grace",
    "linus",
    "margaret",
    "ken",
    "barbara",
    "dennis",
    "frances",
    "edsger",
    "radia",
    "tim",
    "hedy",
    "john",
    "katherine",
    "donald",
];
const LAST: [&str; 12] = [
    "lovelace", "turing", "hopper", "torvalds", "hamilton", "thompson", "liskov", "ritchie",
    "allen", "dijkstra", "perlman", "lee",
];

/// Picks indices with weights 1/(rank+1)^s over a shuffled order: a few large, many small.
/// `scale[i]` multiplies index i's weight.
struct PowerLaw {
    cumulative: Vec<f64>,
    order: Vec<usize>,
}

impl PowerLaw {
    fn new(n: usize, s: f64, rng: &mut fastrand::Rng) -> Self {
        Self::scaled(&vec![1.0; n], s, rng)
    }

    fn scaled(scale: &[f64], s: f64, rng: &mut fastrand::Rng) -> Self {
        let n = scale.len();
        let mut order: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut order);
        let mut acc = 0.0;
        let cumulative = (0..n)
            .map(|rank| {
                acc += scale[order[rank]] / ((rank + 1) as f64).powf(s);
                acc
            })
            .collect();
        Self { cumulative, order }
    }

    fn pick(&self, rng: &mut fastrand::Rng) -> usize {
        let total = *self.cumulative.last().expect("non-empty");
        let x = rng.f64() * total;
        let rank = self
            .cumulative
            .partition_point(|&c| c < x)
            .min(self.order.len() - 1);
        self.order[rank]
    }
}

pub fn generate(spec: &SeedSpec) -> Seeded {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    let mut w = World::new(spec.mode);
    let today = w.today();
    let now = w.midnight();

    // The connector's own account and token.
    let connector = match spec.mode {
        Mode::SelfManaged => {
            let id = w.add_user("root", UserKind::Human);
            w.users.get_mut(&id).expect("added").is_admin = true;
            id
        }
        Mode::GitlabCom => w.add_user("service_account_group_connector", UserKind::ServiceAccount),
    };
    let token = format!("sim-{:016x}{:016x}", rng.u64(..), rng.u64(..));
    w.add_token(
        connector,
        "governance-connector",
        &token,
        &["api"],
        Some(today + Duration::days(300)),
    );

    // Groups: the scope's tree, plus one organisation outside it.
    let top = w.add_group("org", None);
    let mut depth_of = vec![(top, 0usize)];
    for i in 1..spec.groups.max(1) {
        let eligible: Vec<(u64, usize)> = depth_of
            .iter()
            .copied()
            .filter(|(_, d)| *d < spec.depth)
            .collect();
        let (parent, d) = if eligible.is_empty() {
            (top, 0)
        } else {
            eligible[rng.usize(..eligible.len())]
        };
        let id = w.add_group(&format!("team-{i}"), Some(parent));
        depth_of.push((id, d + 1));
    }
    let other = w.add_group("other-org", None);
    let other_sub = w.add_group("platform", Some(other));
    let groups: Vec<u64> = depth_of.iter().map(|(g, _)| *g).collect();
    if spec.mode == Mode::GitlabCom {
        w.set_member(Resource::Group(top), connector, 50, None);
    }

    // Users.
    let mut humans = Vec::with_capacity(spec.users);
    let mut bots = Vec::new();
    for i in 0..spec.users {
        let kind = match i % 50 {
            0 => UserKind::ServiceAccount,
            25 => UserKind::ProjectBot,
            _ => UserKind::Human,
        };
        let username = match kind {
            UserKind::Human => format!(
                "{}.{}{}",
                FIRST[i % FIRST.len()],
                LAST[(i / FIRST.len()) % LAST.len()],
                i
            ),
            UserKind::ServiceAccount => format!("service_account_group_{top}_{:08x}", rng.u32(..)),
            UserKind::ProjectBot => format!(
                "project_{}_bot_{:032x}",
                rng.u32(1..1_000_000),
                rng.u128(..)
            ),
        };
        let id = w.add_user(&username, kind);
        let u = w.users.get_mut(&id).expect("added");
        let roll = rng.u32(..1000);
        u.state = match roll {
            0..30 => "blocked",
            30..40 => "deactivated",
            40..45 => "banned",
            45..50 => "ldap_blocked",
            _ => "active",
        }
        .to_string();
        u.two_factor_enabled = kind == UserKind::Human && rng.u8(..10) < 6;
        u.external = rng.u8(..100) < 2;
        if kind == UserKind::Human {
            let days = rng.i64(0..240);
            u.last_activity_on = Some(today - Duration::days(days));
            u.last_sign_in_at = Some(now - Duration::days(days) - Duration::hours(rng.i64(0..24)));
            if spec.mode == Mode::GitlabCom && rng.bool() {
                u.enterprise_group_id = Some(top);
            }
            humans.push(id);
        } else {
            bots.push(id);
        }
    }
    let everyone: Vec<u64> = humans.iter().chain(bots.iter()).copied().collect();

    // Projects, mostly in the large groups.
    let group_law = PowerLaw::new(groups.len(), 1.0, &mut rng);
    for i in 0..spec.projects {
        let g = groups[group_law.pick(&mut rng)];
        let id = w.add_project(&format!("svc-{i}"), g);
        if rng.u8(..100) < 3 {
            w.projects.get_mut(&id).expect("added").archived = true;
        }
    }
    w.add_project("infra", other_sub);
    if let Some(&u) = humans.first() {
        w.add_personal_project("scratch", u);
    }
    let projects = w.projects_of(top, true);

    // Custom roles and SAML group links.
    let role_group = (spec.mode == Mode::GitlabCom).then_some(top);
    let mut roles = Vec::new();
    for (name, base) in [("Security Auditor", 10u16), ("Release Manager", 30)] {
        let id = w.next_id();
        w.member_roles.insert(
            id,
            MemberRole {
                id,
                name: name.into(),
                base_access_level: base,
                group_id: role_group,
            },
        );
        roles.push((id, base));
    }
    if spec.mode == Mode::GitlabCom {
        w.saml_links.insert(
            top,
            vec![
                SamlGroupLink {
                    name: "engineering".into(),
                    access_level: 30,
                    member_role_id: None,
                    provider: None,
                },
                SamlGroupLink {
                    name: "auditors".into(),
                    access_level: 10,
                    member_role_id: Some(roles[0].0),
                    provider: None,
                },
            ],
        );
    }

    // Memberships: a power law over groups and projects.
    let resources: Vec<Resource> = groups
        .iter()
        .map(|g| Resource::Group(*g))
        .chain(projects.iter().map(|p| Resource::Project(*p)))
        .collect();
    if !everyone.is_empty() && !resources.is_empty() {
        // Direct members concentrate on projects and small groups: a group's weight shrinks with
        // the size of what it contains, as in real organisations (few people are members of the
        // top-level group itself).
        let scale: Vec<f64> = resources
            .iter()
            .map(|r| match r {
                Resource::Group(g) => {
                    1.0 / (1 + w.descendants(*g).len() + w.projects_of(*g, true).len()) as f64
                }
                Resource::Project(_) => 1.0,
            })
            .collect();
        let law = PowerLaw::scaled(&scale, 0.9, &mut rng);
        let mut placed = 0;
        // Minimal Access exists on the top-level group only (1% of users, GitLab.com style).
        for &u in humans.iter().step_by(100).take(spec.memberships / 50) {
            w.members
                .entry(Resource::Group(top))
                .or_default()
                .entry(u)
                .or_insert_with(|| Membership {
                    access_level: 5,
                    expires_at: None,
                    member_role_id: None,
                    state: MemberState::Active,
                    created_by: Some(connector),
                    created_at: now - Duration::days(90),
                });
            placed += 1;
        }
        let mut attempts = 0;
        while placed < spec.memberships && attempts < spec.memberships * 4 {
            attempts += 1;
            let r = resources[law.pick(&mut rng)];
            let is_project = matches!(r, Resource::Project(_));
            let user = if is_project && rng.u8(..100) < 3 && !bots.is_empty() {
                bots[rng.usize(..bots.len())]
            } else {
                everyone[rng.usize(..everyone.len())]
            };
            let entry = w.members.entry(r).or_default();
            if entry.contains_key(&user) {
                continue;
            }
            let roll = rng.u32(..1000);
            let mut level = match roll {
                0..150 => 10,
                150..170 => 15,
                170..370 => 20,
                370..770 => 30,
                770..950 => 40,
                _ => 50,
            };
            if is_project && level == 50 {
                level = 40;
            }
            let expiry_roll = rng.u8(..100);
            let expires_at = match expiry_roll {
                0..4 => Some(today + Duration::days(rng.i64(1..90))),
                4..5 => Some(today - Duration::days(rng.i64(1..4))),
                _ => None,
            };
            let state = if rng.u16(..1000) < 10 {
                MemberState::Awaiting
            } else {
                MemberState::Active
            };
            let member_role_id = (rng.u16(..1000) < 10)
                .then(|| roles.iter().find(|(_, b)| *b <= level).map(|(id, _)| *id))
                .flatten();
            entry.insert(
                user,
                Membership {
                    access_level: level,
                    expires_at,
                    member_role_id,
                    state,
                    created_by: Some(connector),
                    created_at: now - Duration::days(rng.i64(1..700)),
                },
            );
            placed += 1;
        }
    }
    // Noise outside the scope.
    for u in everyone.iter().take(5) {
        w.set_member(Resource::Group(other), *u, 30, None);
    }

    // Shares: groups and projects shared with other groups of the tree.
    if groups.len() > 1 {
        for _ in 0..spec.shares {
            let invited = groups[rng.usize(..groups.len())];
            let access = [10u16, 20, 30, 40][rng.usize(..4)];
            let expires_at = (rng.u8(..10) == 0).then(|| today + Duration::days(rng.i64(5..60)));
            if !projects.is_empty() && rng.u8(..10) < 3 {
                let p = projects[rng.usize(..projects.len())];
                w.share(Resource::Project(p), invited, access, expires_at);
            } else {
                let target = groups[rng.usize(..groups.len())];
                // Not a group into itself or its own ancestors.
                if target != invited && !w.ancestors_and_self(invited).contains(&target) {
                    w.share(Resource::Group(target), invited, access, expires_at);
                }
            }
        }
    }

    // Pending invitations.
    let invites = (spec.memberships / 200).max(1);
    for i in 0..invites {
        let r = resources[rng.usize(..resources.len())];
        let id = w.next_id();
        let email = format!("invitee{i}@partner.example.org");
        w.invitations.entry(r).or_default().insert(
            email.clone(),
            crate::model::Invitation {
                id,
                email,
                access_level: [10u16, 20, 30][rng.usize(..3)],
                expires_at: (rng.bool()).then(|| today + Duration::days(30)),
                member_role_id: None,
                created_at: now - Duration::days(2),
                created_by: Some(connector),
            },
        );
    }

    w.reindex();
    Seeded {
        world: w,
        token,
        scope: "org".into(),
    }
}
