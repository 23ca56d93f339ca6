//! GitLab's JSON entities, shaped like its API (doc examples and entity code).

use serde_json::{Value, json};

use crate::model::{
    Group, Invitation, Membership, Project, Resource, Token, User, UserKind, World,
};

fn date(d: Option<chrono::NaiveDate>) -> Value {
    d.map_or(Value::Null, |d| json!(d.format("%Y-%m-%d").to_string()))
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> Value {
    t.map_or(Value::Null, |t| {
        json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    })
}

pub(crate) fn user_basic(base: &str, u: &User) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "name": u.name,
        "state": u.state,
        "locked": false,
        "avatar_url": format!("{base}/uploads/-/system/user/avatar/{}/avatar.png", u.id),
        "web_url": format!("{base}/{}", u.username),
    })
}

/// `GET /users/:id`, `/users` and `/user`: public fields, plus admin fields for admins and for
/// the token's own user.
pub(crate) fn user(base: &str, u: &User, admin_view: bool) -> Value {
    let mut v = user_basic(base, u);
    let o = v.as_object_mut().expect("object");
    o.insert("bot".into(), json!(u.is_bot()));
    o.insert("public_email".into(), Value::Null);
    o.insert("created_at".into(), time(Some(u.created_at)));
    if admin_view {
        o.insert("email".into(), json!(u.email));
        o.insert("is_admin".into(), json!(u.is_admin));
        o.insert("last_sign_in_at".into(), time(u.last_sign_in_at));
        o.insert("current_sign_in_at".into(), time(u.last_sign_in_at));
        o.insert("last_activity_on".into(), date(u.last_activity_on));
        o.insert("two_factor_enabled".into(), json!(u.two_factor_enabled));
        o.insert("external".into(), json!(u.external));
        o.insert("private_profile".into(), json!(false));
        o.insert("confirmed_at".into(), time(Some(u.created_at)));
        o.insert("identities".into(), json!([]));
        o.insert("namespace_id".into(), json!(u.id + 1_000_000_000));
        o.insert("note".into(), Value::Null);
        o.insert(
            "using_license_seat".into(),
            json!(u.kind == UserKind::Human && u.state == "active"),
        );
    }
    v
}

pub(crate) fn group(w: &World, base: &str, g: &Group) -> Value {
    let full_name = w
        .ancestors_and_self(g.id)
        .iter()
        .rev()
        .map(|a| w.groups[a].name.as_str())
        .collect::<Vec<_>>()
        .join(" / ");
    json!({
        "id": g.id,
        "web_url": format!("{base}/groups/{}", g.full_path),
        "name": g.name,
        "path": g.path,
        "description": "",
        "visibility": g.visibility,
        "full_name": full_name,
        "full_path": g.full_path,
        "parent_id": g.parent_id,
        "created_at": time(Some(g.created_at)),
    })
}

pub(crate) fn shared_with(w: &World, r: Resource) -> Value {
    let shares = w.shares.get(&r);
    Value::Array(
        shares
            .into_iter()
            .flatten()
            .filter_map(|(gid, s)| {
                let g = w.groups.get(gid)?;
                let mut v = json!({
                    "group_id": g.id,
                    "group_name": g.name,
                    "group_full_path": g.full_path,
                    "group_access_level": s.group_access,
                    "expires_at": date(s.expires_at),
                });
                if let Some(r) = s.member_role_id {
                    v["member_role_id"] = json!(r);
                }
                Some(v)
            })
            .collect(),
    )
}

pub(crate) fn project(w: &World, base: &str, p: &Project) -> Value {
    let namespace = match (p.group_id, p.namespace_user_id) {
        (Some(g), _) => {
            let g = &w.groups[&g];
            json!({"id": g.id, "name": g.name, "path": g.path, "kind": "group",
                   "full_path": g.full_path, "parent_id": g.parent_id,
                   "web_url": format!("{base}/groups/{}", g.full_path)})
        }
        (None, Some(u)) => {
            let u = &w.users[&u];
            json!({"id": u.id + 1_000_000_000, "name": u.name, "path": u.username, "kind": "user",
                   "full_path": u.username, "parent_id": null,
                   "web_url": format!("{base}/{}", u.username)})
        }
        (None, None) => Value::Null,
    };
    json!({
        "id": p.id,
        "description": null,
        "name": p.name,
        "name_with_namespace": p.path_with_namespace.replace('/', " / "),
        "path": p.path,
        "path_with_namespace": p.path_with_namespace,
        "created_at": time(Some(p.created_at)),
        "default_branch": "main",
        "web_url": format!("{base}/{}", p.path_with_namespace),
        "namespace": namespace,
        "archived": p.archived,
        "visibility": p.visibility,
        "shared_with_groups": shared_with(w, Resource::Project(p.id)),
    })
}

#[derive(serde::Serialize)]
pub(crate) struct UserBasicOut<'a> {
    id: u64,
    username: &'a str,
    name: &'a str,
    state: &'a str,
    locked: bool,
    avatar_url: String,
    web_url: String,
}

impl<'a> UserBasicOut<'a> {
    fn new(base: &str, u: &'a User) -> Self {
        Self {
            id: u.id,
            username: &u.username,
            name: &u.name,
            state: &u.state,
            locked: false,
            avatar_url: format!("{base}/uploads/-/system/user/avatar/{}/avatar.png", u.id),
            web_url: format!("{base}/{}", u.username),
        }
    }
}

/// A member as GitLab's member entity shows it (typed: lists are the simulator's hot path).
#[derive(serde::Serialize)]
pub(crate) struct MemberOut<'a> {
    #[serde(flatten)]
    user: UserBasicOut<'a>,
    access_level: u16,
    created_at: String,
    expires_at: Option<String>,
    membership_state: &'static str,
    created_by: Option<UserBasicOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    member_role: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
}

pub(crate) fn member_out<'a>(
    w: &'a World,
    base: &str,
    user_id: u64,
    m: &Membership,
    level: u16,
    show_email: bool,
) -> Option<MemberOut<'a>> {
    let u = w.users.get(&user_id)?;
    Some(MemberOut {
        user: UserBasicOut::new(base, u),
        access_level: level,
        created_at: m
            .created_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        expires_at: m.expires_at.map(|d| d.format("%Y-%m-%d").to_string()),
        membership_state: m.state.as_str(),
        created_by: m
            .created_by
            .and_then(|c| w.users.get(&c))
            .map(|c| UserBasicOut::new(base, c)),
        member_role: m
            .member_role_id
            .and_then(|r| w.member_roles.get(&r))
            .map(|role| {
                json!({"id": role.id, "name": role.name, "description": null,
                   "group_id": role.group_id, "base_access_level": role.base_access_level})
            }),
        email: show_email.then_some(u.email.as_str()),
    })
}

/// A member; `level` overrides the record's level (`members/all`).
pub(crate) fn member(
    w: &World,
    base: &str,
    user_id: u64,
    m: &Membership,
    level: u16,
    show_email: bool,
) -> Value {
    member_out(w, base, user_id, m, level, show_email).map_or(Value::Null, |out| {
        serde_json::to_value(out).expect("serializable")
    })
}

pub(crate) fn invitation(w: &World, i: &Invitation) -> Value {
    json!({
        "id": i.id,
        "invite_email": i.email,
        "created_at": time(Some(i.created_at)),
        "access_level": i.access_level,
        "expires_at": date(i.expires_at),
        "user_name": null,
        "created_by_name": i.created_by.and_then(|c| w.users.get(&c)).map(|u| u.name.clone()),
    })
}

pub(crate) fn token(t: &Token, today: chrono::NaiveDate) -> Value {
    json!({
        "id": t.id,
        "name": t.name,
        "revoked": t.revoked,
        "created_at": time(Some(t.created_at)),
        "description": null,
        "scopes": t.scopes,
        "user_id": t.user_id,
        "last_used_at": time(t.last_used_at),
        "active": t.is_active(today),
        "expires_at": date(t.expires_at),
    })
}
