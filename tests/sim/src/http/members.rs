//! Direct members (`…/members`), effective members (`…/members/all/:user_id`) and their
//! writes, with GitLab's validation: 409 "Member already exists", the inherited floor, dates in
//! the past, owner-only owner changes, `member_role_id` dropped when a PUT omits it.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::groups::visible_group;
use super::pages::{self, PageRequest};
use super::projects::visible_project;
use super::{
    Caller, Params, Sim, error, field_error, forbidden, json_response, no_content, not_found,
    render,
};
use crate::hooks::MemberChange;
use crate::model::{Membership, Resource, World};

pub(crate) fn resolve<const PROJECT: bool>(
    w: &World,
    c: &Caller,
    id: &str,
) -> Result<Resource, Response> {
    if PROJECT {
        visible_project(w, c, id).map(Resource::Project)
    } else {
        visible_group(w, c, id).map(Resource::Group)
    }
}

pub(crate) fn role_name(level: u16) -> &'static str {
    match level {
        5 => "Minimal Access",
        10 => "Guest",
        15 => "Planner",
        20 => "Reporter",
        25 => "Security Manager",
        30 => "Developer",
        40 => "Maintainer",
        50 => "Owner",
        _ => "Custom",
    }
}

/// May the caller change memberships of `r` to `level`?
pub(crate) fn may_manage(w: &World, c: &Caller, r: Resource, level: u16) -> Result<(), Response> {
    if c.is_admin {
        return Ok(());
    }
    let mine = w.effective_level(c.user_id, r);
    if mine < 40 || (level >= 50 && mine < 50) {
        return Err(forbidden());
    }
    Ok(())
}

pub(crate) fn valid_level(w: &World, r: Resource, level: u16) -> bool {
    match level {
        10 | 15 | 20 | 25 | 30 | 40 | 50 => true,
        // Minimal Access exists on top-level groups only.
        5 => matches!(r, Resource::Group(g) if w.groups[&g].parent_id.is_none()),
        _ => false,
    }
}

fn show_email(w: &World, c: &Caller, r: Resource, user_id: u64) -> bool {
    if c.is_admin {
        return true;
    }
    let Some(g) = w.resource_group(r) else {
        return false;
    };
    let top = w.top_level(g);
    w.users
        .get(&user_id)
        .is_some_and(|u| u.enterprise_group_id == Some(top))
        && w.effective_level(c.user_id, Resource::Group(top)) >= 50
}

fn check_floor(w: &World, user_id: u64, r: Resource, level: u16) -> Result<(), Response> {
    if let Some((floor, g)) = w.inherited_floor(user_id, r)
        && level < floor
    {
        return Err(field_error(
            "access_level",
            &format!(
                "should be greater than or equal to {} inherited membership from group {}",
                role_name(floor),
                w.groups[&g].name
            ),
        ));
    }
    Ok(())
}

fn parse_level(p: &Params) -> Result<u16, Response> {
    if !p.has("access_level") {
        return Err(error(
            StatusCode::BAD_REQUEST,
            json!({"error": "access_level is missing"}),
        ));
    }
    match p.u64("access_level")? {
        Some(l) if l <= u16::MAX as u64 => Ok(l as u16),
        _ => Err(error(
            StatusCode::BAD_REQUEST,
            json!({"error": "access_level is invalid"}),
        )),
    }
}

pub(crate) async fn list<const PROJECT: bool>(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    let r = match resolve::<PROJECT>(&w, &c, &id) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let query = req.param("query").map(str::to_lowercase);
    let rows: Vec<(u64, &Membership)> = w
        .members
        .get(&r)
        .into_iter()
        .flatten()
        .filter(|(uid, _)| {
            query.as_ref().is_none_or(|q| {
                w.users.get(uid).is_some_and(|u| {
                    u.username.to_lowercase().contains(q) || u.name.to_lowercase().contains(q)
                })
            })
        })
        .map(|(u, m)| (*u, m))
        .collect();
    let base = sim.base_url();
    pages::offset(&sim, &req, rows.len(), None, |range| {
        rows[range]
            .iter()
            .filter_map(|(u, m)| {
                render::member_out(&w, base, *u, m, m.access_level, show_email(&w, &c, r, *u))
            })
            .collect()
    })
}

pub(crate) async fn show<const PROJECT: bool>(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path((id, user_id)): Path<(String, String)>,
) -> Response {
    let w = sim.world.read().unwrap();
    let r = match resolve::<PROJECT>(&w, &c, &id) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let uid = user_id.parse::<u64>().unwrap_or(0);
    match w.members.get(&r).and_then(|m| m.get(&uid)) {
        Some(m) => json_response(
            StatusCode::OK,
            render::member(
                &w,
                sim.base_url(),
                uid,
                m,
                m.access_level,
                show_email(&w, &c, r, uid),
            ),
        ),
        None => error(StatusCode::NOT_FOUND, json!({"message": "404 Not found"})),
    }
}

pub(crate) async fn show_all<const PROJECT: bool>(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path((id, user_id)): Path<(String, String)>,
) -> Response {
    let w = sim.world.read().unwrap();
    let r = match resolve::<PROJECT>(&w, &c, &id) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let uid = user_id.parse::<u64>().unwrap_or(0);
    match w.effective(uid, r) {
        Some(path) => {
            let m = &w.members[&path.from][&uid];
            json_response(
                StatusCode::OK,
                render::member(
                    &w,
                    sim.base_url(),
                    uid,
                    m,
                    path.level,
                    show_email(&w, &c, r, uid),
                ),
            )
        }
        None => error(StatusCode::NOT_FOUND, json!({"message": "404 Not found"})),
    }
}

pub(crate) async fn add<const PROJECT: bool>(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match Params::parse(q.as_deref(), &headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut w = sim.world.write().unwrap();
    let r = match resolve::<PROJECT>(&w, &c, &id) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let level = match parse_level(&p) {
        Ok(l) => l,
        Err(resp) => return resp,
    };
    let uid = match (p.u64("user_id"), p.str("username")) {
        (Ok(Some(u)), _) => w.users.contains_key(&u).then_some(u),
        (Ok(None), Some(name)) => w.index.user_by_username.get(&name.to_lowercase()).copied(),
        (Ok(None), None) => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({"error": "user_id, username are missing, exactly one parameter must be provided"}),
            );
        }
        (Err(resp), _) => return resp,
    };
    if let Err(resp) = may_manage(&w, &c, r, level) {
        return resp;
    }
    let Some(uid) = uid else {
        return not_found("User");
    };
    if !valid_level(&w, r, level) {
        return field_error("access_level", "is not included in the list");
    }
    if w.members.get(&r).is_some_and(|m| m.contains_key(&uid)) {
        return error(
            StatusCode::CONFLICT,
            json!({"message": "Member already exists"}),
        );
    }
    let expires_at = match p.date("expires_at") {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    if expires_at.is_some_and(|d| d < w.today()) {
        return field_error("expires_at", "cannot be a date in the past");
    }
    let member_role_id = match p.u64("member_role_id") {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if member_role_id.is_some_and(|id| !w.member_roles.contains_key(&id)) {
        return field_error("member_role", "not found");
    }
    if let Err(resp) = check_floor(&w, uid, r, level) {
        return resp;
    }
    let now = w.now();
    let m = Membership {
        access_level: level,
        expires_at,
        member_role_id,
        state: crate::model::MemberState::Active,
        created_by: Some(c.user_id),
        created_at: now,
    };
    let body = render::member(
        &w,
        sim.base_url(),
        uid,
        &m,
        level,
        show_email(&w, &c, r, uid),
    );
    w.member_changed(r, uid, MemberChange::Added, &m);
    w.members.entry(r).or_default().insert(uid, m);
    json_response(StatusCode::CREATED, body)
}

pub(crate) async fn edit<const PROJECT: bool>(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path((id, user_id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match Params::parse(q.as_deref(), &headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut w = sim.world.write().unwrap();
    let r = match resolve::<PROJECT>(&w, &c, &id) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let uid = user_id.parse::<u64>().unwrap_or(0);
    let Some(existing) = w.members.get(&r).and_then(|m| m.get(&uid)).cloned() else {
        return error(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
    };
    let level = match parse_level(&p) {
        Ok(l) => l,
        Err(resp) => return resp,
    };
    if let Err(resp) = may_manage(&w, &c, r, level.max(existing.access_level)) {
        return resp;
    }
    if !valid_level(&w, r, level) {
        return field_error("access_level", "is not included in the list");
    }
    let expires_at = if p.has("expires_at") {
        match p.date("expires_at") {
            Ok(d) => d,
            Err(resp) => return resp,
        }
    } else {
        existing.expires_at
    };
    if p.has("expires_at") && expires_at.is_some_and(|d| d < w.today()) {
        return field_error("expires_at", "cannot be a date in the past");
    }
    // "If no value is specified, removes all roles."
    let member_role_id = match p.u64("member_role_id") {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if member_role_id.is_some_and(|id| !w.member_roles.contains_key(&id)) {
        return field_error("member_role", "not found");
    }
    if let Err(resp) = check_floor(&w, uid, r, level) {
        return resp;
    }
    let m = Membership {
        access_level: level,
        expires_at,
        member_role_id,
        ..existing
    };
    let body = render::member(
        &w,
        sim.base_url(),
        uid,
        &m,
        level,
        show_email(&w, &c, r, uid),
    );
    w.member_changed(r, uid, MemberChange::Updated, &m);
    w.members.entry(r).or_default().insert(uid, m);
    json_response(StatusCode::OK, body)
}

pub(crate) async fn remove<const PROJECT: bool>(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path((id, user_id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Response {
    let p = match Params::parse(q.as_deref(), &HeaderMap::new(), &[]) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut w = sim.world.write().unwrap();
    let r = match resolve::<PROJECT>(&w, &c, &id) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let uid = user_id.parse::<u64>().unwrap_or(0);
    let Some(existing) = w.members.get(&r).and_then(|m| m.get(&uid)).cloned() else {
        // Inherited-only members are not direct members: 404.
        return error(StatusCode::NOT_FOUND, json!({"message": "404 Not found"}));
    };
    if uid != c.user_id
        && let Err(resp) = may_manage(&w, &c, r, existing.access_level)
    {
        return resp;
    }
    w.members.get_mut(&r).expect("exists").remove(&uid);
    w.member_changed(r, uid, MemberChange::Removed, &existing);
    // skip_subresources=false (the default) also removes direct memberships below a group.
    if let Resource::Group(g) = r
        && !p.bool("skip_subresources")
    {
        let below: Vec<Resource> = w
            .descendants(g)
            .into_iter()
            .map(Resource::Group)
            .chain(w.projects_of(g, true).into_iter().map(Resource::Project))
            .collect();
        for node in below {
            if let Some(gone) = w.members.get_mut(&node).and_then(|m| m.remove(&uid)) {
                w.member_changed(node, uid, MemberChange::Removed, &gone);
            }
        }
    }
    no_content()
}
