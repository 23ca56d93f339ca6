//! Group webhooks as GitLab keeps and fires them: registered through `/groups/:id/hooks`, a
//! hook on a group also fires for its subgroups, and member events carry GitLab's payload
//! (`group_access` as a role *name*). Project memberships fire no group webhook, and neither
//! do shares (gitlab-org/gitlab#538418). System hooks are not simulated yet.

use chrono::{DateTime, Utc};
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

impl World {
    /// Queues the member event of a change to `r`'s direct member `user_id` (`m` is the
    /// membership after the change, or before a removal) for every group hook that sees it.
    pub fn member_changed(
        &mut self,
        r: Resource,
        user_id: u64,
        change: MemberChange,
        m: &Membership,
    ) {
        let Resource::Group(g) = r else {
            return;
        };
        let reach = self.ancestors_and_self(g);
        let hooks: Vec<(u64, String, Option<String>)> = self
            .group_hooks
            .values()
            .filter(|h| h.member_events && reach.contains(&h.group_id))
            .map(|h| (h.id, h.url.clone(), h.token.clone()))
            .collect();
        if hooks.is_empty() {
            return;
        }
        let (Some(group), Some(user)) = (self.groups.get(&g), self.users.get(&user_id)) else {
            return;
        };
        let now = self.now();
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
        for (hook_id, url, token) in hooks {
            self.hook_queue.push(Delivery {
                hook_id,
                url,
                token,
                event: "Member Hook",
                payload: payload.clone(),
            });
        }
    }
}
