//! The simulated GitLab's state: users, groups, projects, memberships, shares, invitations,
//! custom roles, SAML group links and personal access tokens.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// GitLab.com: no admin API for customers, per-endpoint rate limits, billable and
    /// enterprise users for top-level group owners.
    GitlabCom,
    /// Self-managed: an instance administrator, admin-only endpoints.
    SelfManaged,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserKind {
    Human,
    ServiceAccount,
    ProjectBot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub username: String,
    pub name: String,
    pub email: String,
    /// `active`, `blocked`, `deactivated`, `banned`, `ldap_blocked`, …
    pub state: String,
    pub kind: UserKind,
    pub is_admin: bool,
    pub external: bool,
    pub two_factor_enabled: bool,
    pub created_at: DateTime<Utc>,
    pub last_sign_in_at: Option<DateTime<Utc>>,
    pub last_activity_on: Option<NaiveDate>,
    /// The top-level group whose verified domain owns this account (GitLab.com).
    pub enterprise_group_id: Option<u64>,
}

impl User {
    pub fn is_bot(&self) -> bool {
        self.kind != UserKind::Human
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub id: u64,
    pub name: String,
    pub path: String,
    pub full_path: String,
    pub parent_id: Option<u64>,
    pub visibility: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Project {
    pub id: u64,
    pub name: String,
    pub path: String,
    /// The group, or the owner's personal namespace (`namespace_user_id`).
    pub group_id: Option<u64>,
    pub namespace_user_id: Option<u64>,
    pub path_with_namespace: String,
    pub archived: bool,
    pub visibility: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Resource {
    Group(u64),
    Project(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub access_level: u16,
    pub expires_at: Option<NaiveDate>,
    pub member_role_id: Option<u64>,
    pub state: MemberState,
    pub created_by: Option<u64>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    Active,
    /// Over the free-user limit or pending owner approval: no access.
    Awaiting,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Active => "active",
            MemberState::Awaiting => "awaiting",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub group_access: u16,
    pub expires_at: Option<NaiveDate>,
    pub member_role_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    pub id: u64,
    pub email: String,
    pub access_level: u16,
    pub expires_at: Option<NaiveDate>,
    pub member_role_id: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub created_by: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRole {
    pub id: u64,
    pub name: String,
    pub base_access_level: u16,
    /// The top-level group it belongs to (GitLab.com); `None` for instance roles.
    pub group_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamlGroupLink {
    pub name: String,
    pub access_level: u16,
    pub member_role_id: Option<u64>,
    pub provider: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Token {
    pub id: u64,
    pub user_id: u64,
    pub name: String,
    /// The secret; only returned once, at creation or rotation.
    pub value: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<NaiveDate>,
    pub revoked: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// Tokens created by rotating one another share a family.
    pub family: u64,
}

impl Token {
    /// PATs expire at 00:00 UTC on `expires_at`.
    pub fn is_expired(&self, today: NaiveDate) -> bool {
        self.expires_at.is_some_and(|d| d <= today)
    }
    pub fn is_active(&self, today: NaiveDate) -> bool {
        !self.revoked && !self.is_expired(today)
    }
}

/// The whole simulated instance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    pub mode: Mode,
    /// Days added to the real date: tests advance time for expiries.
    pub day_offset: i64,
    pub users: BTreeMap<u64, User>,
    pub groups: BTreeMap<u64, Group>,
    pub projects: BTreeMap<u64, Project>,
    #[serde(skip)]
    pub members: HashMap<Resource, BTreeMap<u64, Membership>>,
    /// Resource → (invited group → share).
    #[serde(skip)]
    pub shares: HashMap<Resource, BTreeMap<u64, Share>>,
    #[serde(skip)]
    pub invitations: HashMap<Resource, BTreeMap<String, Invitation>>,
    pub member_roles: BTreeMap<u64, MemberRole>,
    pub saml_links: HashMap<u64, Vec<SamlGroupLink>>,
    pub tokens: BTreeMap<u64, Token>,
    #[serde(skip)]
    pub index: Index,
    /// Group webhooks (`/groups/:id/hooks`).
    #[serde(skip)]
    pub group_hooks: BTreeMap<u64, crate::hooks::GroupHook>,
    /// System hooks (`/hooks`, administrators).
    #[serde(skip)]
    pub system_hooks: BTreeMap<u64, crate::hooks::SystemHook>,
    /// Each hook's failures and pause, by hook id.
    #[serde(skip)]
    pub hook_health: BTreeMap<u64, crate::hooks::HookHealth>,
    /// Hook deliveries waiting to be sent (the server sends them after each request).
    #[serde(skip)]
    pub hook_queue: Vec<crate::hooks::Delivery>,
    /// Audit events (Premium): what no hook reports, such as shares.
    #[serde(skip)]
    pub audit_events: Vec<crate::hooks::AuditEvent>,
    next_id: u64,
}

/// Lookups derived from the state; rebuilt with [`World::reindex`].
#[derive(Debug, Clone, Default)]
pub struct Index {
    pub group_by_path: HashMap<String, u64>,
    pub project_by_path: HashMap<String, u64>,
    pub user_by_username: HashMap<String, u64>,
    pub user_by_email: HashMap<String, u64>,
    pub token_by_value: HashMap<String, u64>,
    pub subgroups: HashMap<u64, Vec<u64>>,
    pub group_projects: HashMap<u64, Vec<u64>>,
    pub tree_projects: TreeProjectsCache,
}

/// [`World::projects_of`] results by (group, include_subgroups), emptied whenever the tree
/// changes. GitLab answers each page of a project list from an indexed query; recomputing the
/// whole tree for every page made the simulator's CPU, not the client, the bottleneck of the
/// benchmark (500 pages × 50,000 projects).
#[derive(Default)]
pub struct TreeProjectsCache(std::sync::Mutex<HashMap<(u64, bool), SharedIds>>);

type SharedIds = std::sync::Arc<Vec<u64>>;

impl TreeProjectsCache {
    fn clear(&mut self) {
        self.0.get_mut().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl Clone for TreeProjectsCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for TreeProjectsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TreeProjectsCache")
    }
}

impl World {
    pub fn new(mode: Mode) -> Self {
        Self {
            mode,
            day_offset: 0,
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            projects: BTreeMap::new(),
            members: HashMap::new(),
            shares: HashMap::new(),
            invitations: HashMap::new(),
            member_roles: BTreeMap::new(),
            saml_links: HashMap::new(),
            tokens: BTreeMap::new(),
            index: Index::default(),
            group_hooks: BTreeMap::new(),
            system_hooks: BTreeMap::new(),
            hook_health: BTreeMap::new(),
            hook_queue: Vec::new(),
            audit_events: Vec::new(),
            next_id: 1,
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + Duration::days(self.day_offset)
    }

    pub fn today(&self) -> NaiveDate {
        self.now().date_naive()
    }

    /// Midnight UTC of the simulated day: the reference of seeded (historic) timestamps, so
    /// the same seed gives the same state all day.
    pub fn midnight(&self) -> DateTime<Utc> {
        self.today()
            .and_hms_opt(0, 0, 0)
            .expect("valid time")
            .and_utc()
    }

    fn sorted_keys<V>(m: &HashMap<Resource, V>) -> Vec<Resource> {
        let mut keys: Vec<Resource> = m.keys().copied().collect();
        keys.sort();
        keys
    }

    /// The whole state as JSON with every collection in a stable order.
    pub fn canonical_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("serializable");
        v["members"] = Self::sorted_keys(&self.members)
            .into_iter()
            .flat_map(|r| {
                self.members[&r].iter().map(
                    move |(u, m)| serde_json::json!({"resource": r, "user_id": u, "membership": m}),
                )
            })
            .collect();
        v["shares"] = Self::sorted_keys(&self.shares)
            .into_iter()
            .flat_map(|r| {
                self.shares[&r].iter().map(
                    move |(g, s)| serde_json::json!({"resource": r, "group_id": g, "share": s}),
                )
            })
            .collect();
        v["invitations"] = Self::sorted_keys(&self.invitations)
            .into_iter()
            .flat_map(|r| {
                self.invitations[&r]
                    .values()
                    .map(move |i| serde_json::json!({"resource": r, "invitation": i}))
            })
            .collect();
        v
    }

    /// Ids are unique across every kind, which makes mix-ups visible in tests.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub fn reindex(&mut self) {
        let mut ix = Index::default();
        for g in self.groups.values() {
            ix.group_by_path.insert(g.full_path.to_lowercase(), g.id);
            if let Some(p) = g.parent_id {
                ix.subgroups.entry(p).or_default().push(g.id);
            }
        }
        for p in self.projects.values() {
            ix.project_by_path
                .insert(p.path_with_namespace.to_lowercase(), p.id);
            if let Some(g) = p.group_id {
                ix.group_projects.entry(g).or_default().push(p.id);
            }
        }
        for u in self.users.values() {
            ix.user_by_username.insert(u.username.to_lowercase(), u.id);
            ix.user_by_email.insert(u.email.to_lowercase(), u.id);
        }
        for t in self.tokens.values() {
            ix.token_by_value.insert(t.value.clone(), t.id);
        }
        self.index = ix;
    }

    // ---- construction (also used by the admin endpoint and tests) ----

    pub fn add_user(&mut self, username: &str, kind: UserKind) -> u64 {
        let id = self.next_id();
        let now = self.midnight();
        let user = User {
            id,
            username: username.to_string(),
            name: title_case(username),
            email: format!("{username}@example.com"),
            state: "active".into(),
            kind,
            is_admin: false,
            external: false,
            two_factor_enabled: false,
            created_at: now - Duration::days(400),
            last_sign_in_at: None,
            last_activity_on: None,
            enterprise_group_id: None,
        };
        self.index
            .user_by_username
            .insert(username.to_lowercase(), id);
        self.index
            .user_by_email
            .insert(user.email.to_lowercase(), id);
        self.users.insert(id, user);
        id
    }

    pub fn add_group(&mut self, path: &str, parent_id: Option<u64>) -> u64 {
        let id = self.next_id();
        let full_path = match parent_id {
            Some(p) => format!("{}/{path}", self.groups[&p].full_path),
            None => path.to_string(),
        };
        self.index
            .group_by_path
            .insert(full_path.to_lowercase(), id);
        if let Some(p) = parent_id {
            self.index.subgroups.entry(p).or_default().push(id);
        }
        self.index.tree_projects.clear();
        let now = self.midnight();
        self.groups.insert(
            id,
            Group {
                id,
                name: title_case(path),
                path: path.to_string(),
                full_path,
                parent_id,
                visibility: "private".into(),
                created_at: now - Duration::days(300),
            },
        );
        id
    }

    pub fn add_project(&mut self, path: &str, group_id: u64) -> u64 {
        let id = self.next_id();
        let pwn = format!("{}/{path}", self.groups[&group_id].full_path);
        self.index.project_by_path.insert(pwn.to_lowercase(), id);
        self.index
            .group_projects
            .entry(group_id)
            .or_default()
            .push(id);
        self.index.tree_projects.clear();
        let now = self.midnight();
        self.projects.insert(
            id,
            Project {
                id,
                name: path.to_string(),
                path: path.to_string(),
                group_id: Some(group_id),
                namespace_user_id: None,
                path_with_namespace: pwn,
                archived: false,
                visibility: "private".into(),
                created_at: now - Duration::days(200),
            },
        );
        id
    }

    pub fn add_personal_project(&mut self, path: &str, user_id: u64) -> u64 {
        let id = self.next_id();
        let pwn = format!("{}/{path}", self.users[&user_id].username);
        self.index.project_by_path.insert(pwn.to_lowercase(), id);
        let now = self.midnight();
        self.projects.insert(
            id,
            Project {
                id,
                name: path.to_string(),
                path: path.to_string(),
                group_id: None,
                namespace_user_id: Some(user_id),
                path_with_namespace: pwn,
                archived: false,
                visibility: "private".into(),
                created_at: now - Duration::days(100),
            },
        );
        self.set_member(Resource::Project(id), user_id, 50, None);
        id
    }

    pub fn set_member(
        &mut self,
        r: Resource,
        user_id: u64,
        level: u16,
        expires_at: Option<NaiveDate>,
    ) {
        let now = self.midnight();
        self.members.entry(r).or_default().insert(
            user_id,
            Membership {
                access_level: level,
                expires_at,
                member_role_id: None,
                state: MemberState::Active,
                created_by: None,
                created_at: now - Duration::days(30),
            },
        );
    }

    pub fn share(
        &mut self,
        r: Resource,
        with_group: u64,
        group_access: u16,
        expires_at: Option<NaiveDate>,
    ) {
        self.shares.entry(r).or_default().insert(
            with_group,
            Share {
                group_access,
                expires_at,
                member_role_id: None,
            },
        );
    }

    pub fn add_token(
        &mut self,
        user_id: u64,
        name: &str,
        value: &str,
        scopes: &[&str],
        expires_at: Option<NaiveDate>,
    ) -> u64 {
        let id = self.next_id();
        let now = self.midnight();
        self.tokens.insert(
            id,
            Token {
                id,
                user_id,
                name: name.to_string(),
                value: value.to_string(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                expires_at,
                revoked: false,
                created_at: now,
                last_used_at: None,
                family: id,
            },
        );
        self.index.token_by_value.insert(value.to_string(), id);
        id
    }

    // ---- lookups ----

    pub fn group_by_ref(&self, r: &str) -> Option<u64> {
        match r.parse::<u64>() {
            Ok(id) => self.groups.contains_key(&id).then_some(id),
            Err(_) => self.index.group_by_path.get(&r.to_lowercase()).copied(),
        }
    }

    pub fn project_by_ref(&self, r: &str) -> Option<u64> {
        match r.parse::<u64>() {
            Ok(id) => self.projects.contains_key(&id).then_some(id),
            Err(_) => self.index.project_by_path.get(&r.to_lowercase()).copied(),
        }
    }

    /// The group and its ancestors, nearest first.
    pub fn ancestors_and_self(&self, group_id: u64) -> Vec<u64> {
        let mut chain = Vec::with_capacity(8);
        let mut cur = Some(group_id);
        while let Some(g) = cur {
            chain.push(g);
            cur = self.groups.get(&g).and_then(|g| g.parent_id);
        }
        chain
    }

    pub fn top_level(&self, group_id: u64) -> u64 {
        *self.ancestors_and_self(group_id).last().expect("non-empty")
    }

    /// Every descendant group, depth first, in id order per level.
    pub fn descendants(&self, group_id: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut stack = vec![group_id];
        while let Some(g) = stack.pop() {
            if let Some(children) = self.index.subgroups.get(&g) {
                for c in children.iter().rev() {
                    out.push(*c);
                    stack.push(*c);
                }
            }
        }
        out
    }

    /// Projects of the group (and of its descendants with `include_subgroups`), sorted by id;
    /// memoized until the tree changes.
    pub fn projects_of_cached(
        &self,
        group_id: u64,
        include_subgroups: bool,
    ) -> std::sync::Arc<Vec<u64>> {
        let key = (group_id, include_subgroups);
        let cache = &self.index.tree_projects.0;
        if let Some(ids) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return ids.clone();
        }
        let ids = std::sync::Arc::new(self.projects_of(group_id, include_subgroups));
        cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, ids.clone());
        ids
    }

    /// Projects of the group (and of its descendants with `include_subgroups`), sorted by id.
    pub fn projects_of(&self, group_id: u64, include_subgroups: bool) -> Vec<u64> {
        let mut groups = vec![group_id];
        if include_subgroups {
            groups.extend(self.descendants(group_id));
        }
        let mut out: Vec<u64> = groups
            .iter()
            .filter_map(|g| self.index.group_projects.get(g))
            .flatten()
            .copied()
            .collect();
        out.sort_unstable();
        out
    }

    pub fn resource_group(&self, r: Resource) -> Option<u64> {
        match r {
            Resource::Group(g) => Some(g),
            Resource::Project(p) => self.projects.get(&p).and_then(|p| p.group_id),
        }
    }

    /// Runs GitLab's daily `remove_expired_members_worker` and `remove_expired_group_links_worker`.
    pub fn remove_expired(&mut self) -> usize {
        let today = self.today();
        let mut removed = 0;
        for members in self.members.values_mut() {
            let before = members.len();
            members.retain(|_, m| m.expires_at.is_none_or(|d| d >= today));
            removed += before - members.len();
        }
        for shares in self.shares.values_mut() {
            let before = shares.len();
            shares.retain(|_, s| s.expires_at.is_none_or(|d| d >= today));
            removed += before - shares.len();
        }
        removed
    }
}

fn title_case(s: &str) -> String {
    s.split(['-', '_', '.'])
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => String::new(),
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
