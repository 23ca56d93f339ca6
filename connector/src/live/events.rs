//! What GitLab's hook payloads name (group webhooks and system hooks carry `event_name`): the
//! ids only. Role names, emails and dates in the payload are never used: they are re-read.

use serde_json::Value;

use super::Touch;
use crate::model::ResourceRef;

fn id(body: &Value, field: &str) -> Option<u64> {
    body.get(field)?.as_u64().filter(|v| *v > 0)
}

/// The touches of one delivery; empty for an event that says nothing about access (a push, a
/// failed login, an unknown or malformed event).
pub fn touches(body: &Value) -> Vec<Touch> {
    let Some(name) = body.get("event_name").and_then(Value::as_str) else {
        return vec![];
    };
    let member = |resource: Option<ResourceRef>, added: bool| -> Vec<Touch> {
        let (Some(resource), Some(user_id)) = (resource, id(body, "user_id")) else {
            return vec![];
        };
        let mut t = vec![Touch::Member { resource, user_id }];
        if added {
            // An accepted invitation becomes this member: the invitation is gone.
            t.push(Touch::Invitations { resource });
        }
        t
    };
    let group = id(body, "group_id").map(ResourceRef::Group);
    let project = id(body, "project_id").map(ResourceRef::Project);
    match name {
        "user_add_to_group" => member(group, true),
        "user_update_for_group"
        | "user_remove_from_group"
        | "user_access_request_to_group"
        | "user_access_request_denied_for_group" => member(group, false),
        "user_add_to_team" => member(project, true),
        "user_update_for_team" | "user_remove_from_team" => member(project, false),
        "user_create" | "user_rename" | "user_destroy" => id(body, "user_id")
            .map(|user_id| vec![Touch::User { user_id }])
            .unwrap_or_default(),
        "group_create" | "group_destroy" | "group_rename" | "subgroup_create"
        | "subgroup_destroy" => id(body, "group_id")
            .map(|group_id| vec![Touch::Group { group_id }])
            .unwrap_or_default(),
        "project_create" | "project_destroy" | "project_rename" | "project_transfer"
        | "project_update" => id(body, "project_id")
            .map(|project_id| vec![Touch::Project { project_id }])
            .unwrap_or_default(),
        // What the audit-event poll found (no webhook reports shares): the shared resource.
        n if n.starts_with("group_share_with_group_link_") => id(body, "group_id")
            .map(|group_id| vec![Touch::Group { group_id }])
            .unwrap_or_default(),
        n if n.starts_with("project_group_link_") => id(body, "project_id")
            .map(|project_id| vec![Touch::Project { project_id }])
            .unwrap_or_default(),
        _ => vec![],
    }
}

/// A share change in an audit event, as the delivery the processor reads (`event_name` and
/// the shared group's `group_id` or project's `project_id`); `None` for any other event.
/// GitLab records a group share on the shared group, a project share on the invited group
/// with the project as its target.
pub fn share_delivery(ev: &crate::api::AuditEvent) -> Option<Value> {
    let name = ev.name()?;
    if name.starts_with("group_share_with_group_link_") {
        let group = match ev.entity_type.as_deref() {
            Some("Group") => ev.entity_id?,
            _ => return None,
        };
        return Some(
            serde_json::json!({"event_name": name, "group_id": group, "audit_event_id": ev.id}),
        );
    }
    if name.starts_with("project_group_link_") {
        let project = match (ev.entity_type.as_deref(), ev.target_type()) {
            (Some("Project"), _) => ev.entity_id?,
            (_, Some("Project")) => ev.target_id()?,
            _ => return None,
        };
        return Some(
            serde_json::json!({"event_name": name, "project_id": project, "audit_event_id": ev.id}),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn member_events_name_the_membership_and_never_the_payload_role() {
        let t = touches(
            &json!({"event_name": "user_add_to_group", "group_id": 7, "user_id": 3, "group_access": "Owner"}),
        );
        assert_eq!(
            t,
            vec![
                Touch::Member {
                    resource: ResourceRef::Group(7),
                    user_id: 3
                },
                Touch::Invitations {
                    resource: ResourceRef::Group(7)
                }
            ]
        );
        let t = touches(
            &json!({"event_name": "user_remove_from_team", "project_id": 9, "user_id": 3, "access_level": "Developer"}),
        );
        assert_eq!(
            t,
            vec![Touch::Member {
                resource: ResourceRef::Project(9),
                user_id: 3
            }]
        );
    }

    #[test]
    fn structure_and_user_events() {
        assert_eq!(
            touches(
                &json!({"event_name": "subgroup_create", "group_id": 10, "parent_group_id": 7})
            ),
            vec![Touch::Group { group_id: 10 }]
        );
        assert_eq!(
            touches(&json!({"event_name": "project_destroy", "project_id": 4})),
            vec![Touch::Project { project_id: 4 }]
        );
        assert_eq!(
            touches(&json!({"event_name": "user_destroy", "user_id": 5})),
            vec![Touch::User { user_id: 5 }]
        );
    }

    #[test]
    fn share_changes_from_audit_events_touch_the_shared_resource() {
        let ev = |v: Value| -> crate::api::AuditEvent { serde_json::from_value(v).unwrap() };
        let group = ev(
            json!({"id": 9, "entity_id": 5, "entity_type": "Group", "details": {"event_name": "group_share_with_group_link_created", "target_id": 8, "target_type": "Group"}}),
        );
        let d = share_delivery(&group).unwrap();
        assert_eq!(touches(&d), vec![Touch::Group { group_id: 5 }]);
        let project = ev(
            json!({"id": 10, "entity_id": 8, "entity_type": "Group", "details": {"event_name": "project_group_link_created", "target_id": 42, "target_type": "Project"}}),
        );
        let d = share_delivery(&project).unwrap();
        assert_eq!(touches(&d), vec![Touch::Project { project_id: 42 }]);
        let other = ev(
            json!({"id": 11, "entity_id": 5, "entity_type": "Group", "details": {"event_name": "group_rename"}}),
        );
        assert!(share_delivery(&other).is_none());
        let unnamed = ev(
            json!({"id": 12, "entity_id": 5, "entity_type": "Group", "details": {"custom_message": "x"}}),
        );
        assert!(share_delivery(&unnamed).is_none());
    }

    #[test]
    fn malformed_or_unrelated_events_touch_nothing() {
        for body in [
            json!({"event_name": "user_add_to_group", "group_id": "7", "user_id": 3}),
            json!({"event_name": "user_add_to_group", "group_id": -7, "user_id": 3}),
            json!({"event_name": "user_add_to_group", "group_id": 0, "user_id": 3}),
            json!({"event_name": "user_failed_login", "user_id": 3}),
            json!({"event_name": ["x"]}),
            json!({"object_kind": "push"}),
            json!([1, 2]),
        ] {
            assert!(touches(&body).is_empty(), "{body}");
        }
    }
}
