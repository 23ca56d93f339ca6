//! Webhooks as GitLab keeps and fires them.
//!
//! - Group webhooks (`/groups/:id/hooks`): a hook on a group also fires for its subgroups.
//!   `Member Hook` for group members (`group_access` as a role *name*), `Subgroup Hook` for
//!   subgroups created and removed below the hook's group, `Project Hook` for projects created
//!   and removed. Project memberships fire no group webhook.
//! - System hooks (`/hooks`, administrators, self-managed): group and project member events
//!   (`user_*_to_group`, `user_*_team`; project events have no `expires_at`, and the email is
//!   redacted), `user_create`/`user_destroy`, `group_create`/`group_destroy`,
//!   `project_create`/`project_destroy`. No hook reports a block or a ban.
//! - Shares fire nothing at all (gitlab-org/gitlab#538418).
//! - A hook that fails 4 times in a row is paused (1 minute, doubling up to 24 hours); after
//!   40 it is disabled. A paused or disabled hook's events are not sent.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{Membership, Resource, World};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHook {
    pub id: u64,
    pub group_id: u64,
    pub url: String,
    /// Sent as `X-Gitlab-Token`; never shown by the API.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    pub member_events: bool,
    pub subgroup_events: bool,
    pub project_events: bool,
    pub push_events: bool,
    pub enable_ssl_verification: bool,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SystemHook {
    pub id: u64,
    pub url: String,
    #[serde(skip_serializing)]
    pub token: Option<String>,
    pub push_events: bool,
    pub tag_push_events: bool,
    pub merge_requests_events: bool,
    pub repository_update_events: bool,
    pub enable_ssl_verification: bool,
    pub created_at: DateTime<Utc>,
}

/// A hook's failures in a row and its pause.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookHealth {
    pub failures: u32,
    pub disabled_until: Option<DateTime<Utc>>,
    /// After 40 failures in a row: until someone tests or edits it.
    pub disabled: bool,
}

/// GitLab's thresholds: paused after this many failures in a row, disabled after the second.
pub const FAILURES_TO_PAUSE: u32 = 4;
pub const FAILURES_TO_DISABLE: u32 = 40;

impl HookHealth {
    pub fn alert_status(&self, now: DateTime<Utc>) -> &'static str {
        if self.disabled {
            "disabled"
        } else if self.disabled_until.is_some_and(|t| t > now) {
            "temporarily_disabled"
        } else {
            "executable"
        }
    }

    pub fn sends(&self, now: DateTime<Utc>) -> bool {
        self.alert_status(now) == "executable"
    }

    pub fn failed(&mut self, now: DateTime<Utc>) {
        self.failures += 1;
        if self.failures >= FAILURES_TO_DISABLE {
            self.disabled = true;
        } else if self.failures >= FAILURES_TO_PAUSE {
            let minutes = 1i64 << (self.failures - FAILURES_TO_PAUSE).min(11);
            self.disabled_until = Some(now + Duration::minutes(minutes.min(24 * 60)));
        }
    }

    pub fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// Fault controls for deliveries (`PUT /_sim/hook_faults`): each delivery is dropped with
/// probability `drop` (never sent: GitLab.com drops calls over its rate limit silently), sent
/// twice with `duplicate`, and waits `delay_ms` first (a random part of it with `reorder`, so
/// later events can arrive first).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HookFaults {
    #[serde(default)]
    pub drop: f64,
    #[serde(default)]
    pub duplicate: f64,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default)]
    pub reorder: bool,
}

/// An audit event as `GET /groups/:id/audit_events` and `GET /audit_events` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub id: u64,
    pub author_id: u64,
    pub entity_id: u64,
    /// `Group` or `Project`.
    pub entity_type: String,
    pub details: Value,
    pub created_at: DateTime<Utc>,
}

/// One event to deliver to one hook.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub hook_id: u64,
    pub url: String,
    pub token: Option<String>,
    /// `X-Gitlab-Event`.
    pub event: &'static str,
    pub payload: Value,
}

/// What happened to a membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChange {
    Added,
    Updated,
    Removed,
}

type Target = (u64, String, Option<String>);

impl World {
    /// Group hooks on `group` or an ancestor that take the events `wants` selects.
    fn group_hook_targets(&self, group: u64, wants: fn(&GroupHook) -> bool) -> Vec<Target> {
        let reach = self.ancestors_and_self(group);
        self.group_hooks
            .values()
            .filter(|h| wants(h) && reach.contains(&h.group_id))
            .map(|h| (h.id, h.url.clone(), h.token.clone()))
            .collect()
    }

    fn system_hook_targets(&self) -> Vec<Target> {
        self.system_hooks
            .values()
            .map(|h| (h.id, h.url.clone(), h.token.clone()))
            .collect()
    }

    fn queue(&mut self, targets: Vec<Target>, event: &'static str, payload: &Value) {
        for (hook_id, url, token) in targets {
            self.hook_queue.push(Delivery {
                hook_id,
                url,
                token,
                event,
                payload: payload.clone(),
            });
        }
    }

    /// Queues the member events of a change to `r`'s direct member `user_id` (`m` is the
    /// membership after the change, or before a removal).
    pub fn member_changed(
        &mut self,
        r: Resource,
        user_id: u64,
        change: MemberChange,
        m: &Membership,
    ) {
        let Some(user) = self.users.get(&user_id) else {
            return;
        };
        let now = self.now();
        match r {
            Resource::Group(g) => {
                let Some(group) = self.groups.get(&g) else {
                    return;
                };
                let payload = json!({
                    "created_at": m.created_at,
                    "updated_at": now,
                    "group_name": group.name,
                    "group_path": group.path,
                    "group_id": g,
                    "user_username": user.username,
                    "user_name": user.name,
                    "user_email": user.email,
                    "user_id": user_id,
                    "group_access": crate::http::role_name(m.access_level),
                    "group_plan": null,
                    "expires_at": m.expires_at.map(|d| format!("{d}T00:00:00Z")),
                    "event_name": match change {
                        MemberChange::Added => "user_add_to_group",
                        MemberChange::Updated => "user_update_for_group",
                        MemberChange::Removed => "user_remove_from_group",
                    },
                });
                let hooks = self.group_hook_targets(g, |h| h.member_events);
                self.queue(hooks, "Member Hook", &payload);
                let system = self.system_hook_targets();
                self.queue(system, "System Hook", &payload);
            }
            Resource::Project(p) => {
                let Some(project) = self.projects.get(&p) else {
                    return;
                };
                let payload = json!({
                    "created_at": m.created_at,
                    "updated_at": now,
                    "event_name": match change {
                        MemberChange::Added => "user_add_to_team",
                        MemberChange::Updated => "user_update_for_team",
                        MemberChange::Removed => "user_remove_from_team",
                    },
                    "access_level": crate::http::role_name(m.access_level),
                    "project_id": p,
                    "project_name": project.name,
                    "project_path": project.path,
                    "project_path_with_namespace": project.path_with_namespace,
                    "user_email": "[REDACTED]",
                    "user_name": user.name,
                    "user_username": user.username,
                    "user_id": user_id,
                    "project_visibility": project.visibility,
                });
                let system = self.system_hook_targets();
                self.queue(system, "System Hook", &payload);
            }
        }
    }

    /// Queues the events of a group just created.
    pub fn group_created(&mut self, id: u64) {
        self.group_event(id, true);
    }

    fn group_event(&mut self, id: u64, created: bool) {
        let Some(g) = self.groups.get(&id).cloned() else {
            return;
        };
        let now = self.now();
        if let Some(parent) = g.parent_id.and_then(|p| self.groups.get(&p)).cloned() {
            let payload = json!({
                "created_at": g.created_at,
                "updated_at": now,
                "event_name": if created { "subgroup_create" } else { "subgroup_destroy" },
                "name": g.name,
                "path": g.path,
                "full_path": g.full_path,
                "group_id": g.id,
                "parent_group_id": parent.id,
                "parent_name": parent.name,
                "parent_path": parent.path,
                "parent_full_path": parent.full_path,
            });
            let hooks = self.group_hook_targets(parent.id, |h| h.subgroup_events);
            self.queue(hooks, "Subgroup Hook", &payload);
        }
        let payload = json!({
            "created_at": g.created_at,
            "updated_at": now,
            "event_name": if created { "group_create" } else { "group_destroy" },
            "name": g.name,
            "path": g.path,
            "full_path": g.full_path,
            "group_id": g.id,
        });
        let system = self.system_hook_targets();
        self.queue(system, "System Hook", &payload);
    }

    /// Queues the events of a project just created.
    pub fn project_created(&mut self, id: u64) {
        self.project_event(id, true);
    }

    fn project_event(&mut self, id: u64, created: bool) {
        let Some(p) = self.projects.get(&id).cloned() else {
            return;
        };
        let now = self.now();
        let payload = json!({
            "created_at": p.created_at,
            "updated_at": now,
            "event_name": if created { "project_create" } else { "project_destroy" },
            "name": p.name,
            "path": p.path,
            "path_with_namespace": p.path_with_namespace,
            "project_id": p.id,
            "project_namespace_id": p.group_id,
            "owners": [],
            "project_visibility": p.visibility,
        });
        if let Some(g) = p.group_id {
            let hooks = self.group_hook_targets(g, |h| h.project_events);
            self.queue(hooks, "Project Hook", &payload);
        }
        let system = self.system_hook_targets();
        self.queue(system, "System Hook", &payload);
    }

    /// Removes a project with its members, shares and invitations, queueing its events.
    pub fn remove_project(&mut self, id: u64) -> bool {
        if !self.projects.contains_key(&id) {
            return false;
        }
        self.project_event(id, false);
        self.projects.remove(&id);
        let r = Resource::Project(id);
        self.members.remove(&r);
        self.shares.remove(&r);
        self.invitations.remove(&r);
        self.reindex();
        true
    }

    /// Removes a group with its subgroups and projects (GitLab's immediate deletion), and the
    /// shares with them; queues the events of the group (GitLab reports the one deleted).
    pub fn remove_group(&mut self, id: u64) -> bool {
        if !self.groups.contains_key(&id) {
            return false;
        }
        self.group_event(id, false);
        let mut gone = vec![id];
        let mut i = 0;
        while i < gone.len() {
            let children: Vec<u64> = self
                .groups
                .values()
                .filter(|g| g.parent_id == Some(gone[i]))
                .map(|g| g.id)
                .collect();
            gone.extend(children);
            i += 1;
        }
        let projects: Vec<u64> = self
            .projects
            .values()
            .filter(|p| p.group_id.is_some_and(|g| gone.contains(&g)))
            .map(|p| p.id)
            .collect();
        for p in projects {
            self.projects.remove(&p);
            let r = Resource::Project(p);
            self.members.remove(&r);
            self.shares.remove(&r);
            self.invitations.remove(&r);
        }
        for g in &gone {
            self.groups.remove(g);
            let r = Resource::Group(*g);
            self.members.remove(&r);
            self.shares.remove(&r);
            self.invitations.remove(&r);
        }
        for links in self.shares.values_mut() {
            links.retain(|with, _| !gone.contains(with));
        }
        self.group_hooks.retain(|_, h| !gone.contains(&h.group_id));
        self.reindex();
        true
    }

    /// Records the audit event of a share created (GitLab: `group_share_with_group_link_created`
    /// on the shared group; `project_group_link_created` on the invited group, the project as
    /// its target). Shares fire no webhook: this is the only trace between full syncs.
    pub fn share_audited(&mut self, r: Resource, with_group: u64, author_id: u64) {
        let id = self.next_id();
        let now = self.now();
        let invited = self
            .groups
            .get(&with_group)
            .map(|g| g.full_path.clone())
            .unwrap_or_default();
        let (entity_id, event_name, target_id, target_type, target_details) = match r {
            Resource::Group(g) => (
                g,
                "group_share_with_group_link_created",
                with_group,
                "Group",
                invited,
            ),
            Resource::Project(p) => (
                with_group,
                "project_group_link_created",
                p,
                "Project",
                self.projects
                    .get(&p)
                    .map(|p| p.path_with_namespace.clone())
                    .unwrap_or_default(),
            ),
        };
        let entity_path = self
            .groups
            .get(&entity_id)
            .map(|g| g.full_path.clone())
            .unwrap_or_default();
        self.audit_events.push(AuditEvent {
            id,
            author_id,
            entity_id,
            entity_type: "Group".into(),
            details: json!({
                "event_name": event_name,
                "author_name": self.users.get(&author_id).map(|u| u.name.clone()),
                "target_id": target_id,
                "target_type": target_type,
                "target_details": target_details,
                "custom_message": match r {
                    Resource::Group(_) => format!("Invited {} to the group", self.groups.get(&with_group).map(|g| g.full_path.as_str()).unwrap_or("")),
                    Resource::Project(_) => "Added project group link".to_string(),
                },
                "entity_path": entity_path,
            }),
            created_at: now,
        });
    }

    /// Queues `user_create` or `user_destroy` for a user (before it is removed).
    pub fn user_event(&mut self, id: u64, created: bool) {
        let Some(u) = self.users.get(&id).cloned() else {
            return;
        };
        let now = self.now();
        let payload = json!({
            "created_at": u.created_at,
            "updated_at": now,
            "event_name": if created { "user_create" } else { "user_destroy" },
            "email": u.email,
            "name": u.name,
            "username": u.username,
            "user_id": u.id,
        });
        let system = self.system_hook_targets();
        self.queue(system, "System Hook", &payload);
    }
}
