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

/// A string produced by `Display` straight into the JSON output (no intermediate `String`).
struct Collect<T>(T);

impl<T: std::fmt::Display> serde::Serialize for Collect<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// `2024-05-01T12:00:00.000Z`, as `to_rfc3339_opts(SecondsFormat::Millis, true)` writes it.
struct Millis(chrono::DateTime<chrono::Utc>);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use chrono::{Datelike, Timelike};
        let t = self.0.naive_utc();
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.nanosecond() / 1_000_000
        )
    }
}

/// `YYYY-MM-DD`.
struct Day(chrono::NaiveDate);

impl std::fmt::Display for Day {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use chrono::Datelike;
        write!(
            f,
            "{:04}-{:02}-{:02}",
            self.0.year(),
            self.0.month(),
            self.0.day()
        )
    }
}

/// The fields of GitLab's `UserBasic` entity, in its order.
fn user_basic_fields<S: serde::ser::SerializeStruct>(
    s: &mut S,
    base: &str,
    u: &User,
) -> Result<(), S::Error> {
    s.serialize_field("id", &u.id)?;
    s.serialize_field("username", &u.username)?;
    s.serialize_field("name", &u.name)?;
    s.serialize_field("state", &u.state)?;
    s.serialize_field("locked", &false)?;
    s.serialize_field(
        "avatar_url",
        &Collect(format_args!(
            "{base}/uploads/-/system/user/avatar/{}/avatar.png",
            u.id
        )),
    )?;
    s.serialize_field("web_url", &Collect(format_args!("{base}/{}", u.username)))
}

struct UserBasicOut<'a> {
    base: &'a str,
    user: &'a User,
}

impl serde::Serialize for UserBasicOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("UserBasic", 7)?;
        user_basic_fields(&mut st, self.base, self.user)?;
        st.end()
    }
}

/// A member as GitLab's member entity shows it, serialized without intermediate values
/// (member lists are the simulator's hot path).
pub(crate) struct MemberOut<'a> {
    base: &'a str,
    user: &'a User,
    membership: &'a Membership,
    access_level: u16,
    created_by: Option<&'a User>,
    member_role: Option<&'a crate::model::MemberRole>,
    show_email: bool,
}

impl serde::Serialize for MemberOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let m = self.membership;
        let mut st = s.serialize_struct("Member", 14)?;
        user_basic_fields(&mut st, self.base, self.user)?;
        st.serialize_field("access_level", &self.access_level)?;
        st.serialize_field("created_at", &Collect(Millis(m.created_at)))?;
        st.serialize_field("expires_at", &m.expires_at.map(|d| Collect(Day(d))))?;
        st.serialize_field("membership_state", m.state.as_str())?;
        st.serialize_field(
            "created_by",
            &self.created_by.map(|user| UserBasicOut {
                base: self.base,
                user,
            }),
        )?;
        if let Some(role) = self.member_role {
            st.serialize_field(
                "member_role",
                &json!({"id": role.id, "name": role.name, "description": null,
                   "group_id": role.group_id, "base_access_level": role.base_access_level}),
            )?;
        }
        if self.show_email {
            st.serialize_field("email", &self.user.email)?;
        }
        st.end()
    }
}

pub(crate) fn member_out<'a>(
    w: &'a World,
    base: &'a str,
    user_id: u64,
    m: &'a Membership,
    level: u16,
    show_email: bool,
) -> Option<MemberOut<'a>> {
    let user = w.users.get(&user_id)?;
    Some(MemberOut {
        base,
        user,
        membership: m,
        access_level: level,
        created_by: m.created_by.and_then(|c| w.users.get(&c)),
        member_role: m.member_role_id.and_then(|r| w.member_roles.get(&r)),
        show_email,
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
