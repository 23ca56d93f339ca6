//! Groups, their trees and projects, and the top-level-group governance endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{OriginalUri, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::pages::{self, PageRequest};
use super::{Caller, Sim, error, forbidden, json_response, not_found, render};
use crate::model::{Mode, Resource, World};

pub(crate) fn visible_group(w: &World, c: &Caller, r: &str) -> Result<u64, Response> {
    match w.group_by_ref(r) {
        Some(g) if c.is_admin || w.can_see_group(c.user_id, g) => Ok(g),
        _ => Err(not_found("Group")),
    }
}

/// The group named by `r`, when it is a top-level group the caller owns (or the caller is an
/// admin): the governance endpoints of GitLab.com.
fn owned_top_level(w: &World, c: &Caller, r: &str) -> Result<u64, Response> {
    let g = visible_group(w, c, r)?;
    top_level_owner(w, c, g)?;
    Ok(g)
}

/// Owner of the top-level group `g` (or admin); top-level-only endpoints.
fn top_level_owner(w: &World, c: &Caller, g: u64) -> Result<(), Response> {
    if w.groups[&g].parent_id.is_some() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            json!({"message": "400 Bad request - This endpoint is only available for top-level groups"}),
        ));
    }
    if c.is_admin || w.effective_level(c.user_id, Resource::Group(g)) >= 50 {
        Ok(())
    } else {
        Err(forbidden())
    }
}

fn sort_groups(w: &World, ids: &mut [u64], req: &PageRequest) {
    match req.param("order_by") {
        Some("id") => ids.sort_unstable(),
        Some("path") => ids.sort_by(|a, b| w.groups[a].full_path.cmp(&w.groups[b].full_path)),
        _ => ids.sort_by(|a, b| (&w.groups[a].name, a).cmp(&(&w.groups[b].name, b))),
    }
    if req.param("sort") == Some("desc") {
        ids.reverse();
    }
}

pub(crate) async fn list(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    let top_only = req.flag("top_level_only");
    let search = req.param("search").map(str::to_lowercase);
    let mut ids: Vec<u64> = w
        .groups
        .values()
        .filter(|g| !top_only || g.parent_id.is_none())
        .filter(|g| {
            search.as_ref().is_none_or(|s| {
                g.name.to_lowercase().contains(s) || g.path.to_lowercase().contains(s)
            })
        })
        .filter(|g| c.is_admin || w.can_see_group(c.user_id, g.id))
        .map(|g| g.id)
        .collect();
    sort_groups(&w, &mut ids, &req);
    let base = sim.base_url();
    pages::offset(&sim, &req, ids.len(), Some("Group"), |r| {
        ids[r]
            .iter()
            .map(|g| render::group(&w, base, &w.groups[g]))
            .collect()
    })
}

pub(crate) async fn show(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    let g = match visible_group(&w, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let base = sim.base_url();
    let mut v = render::group(&w, base, &w.groups[&g]);
    v["shared_with_groups"] = render::shared_with(&w, Resource::Group(g));
    if req.param("with_projects").is_none_or(super::is_true) {
        // Deprecated and capped at 100, as GitLab does.
        v["projects"] = Value::Array(
            w.projects_of(g, false)
                .into_iter()
                .take(100)
                .map(|p| render::project(&w, base, &w.projects[&p]))
                .collect(),
        );
        v["shared_projects"] = json!([]);
    }
    json_response(StatusCode::OK, v)
}

fn group_list(sim: &Sim, w: &World, c: &Caller, req: &PageRequest, mut ids: Vec<u64>) -> Response {
    ids.retain(|g| c.is_admin || w.can_see_group(c.user_id, *g));
    sort_groups(w, &mut ids, req);
    let base = sim.base_url();
    pages::offset(sim, req, ids.len(), None, |r| {
        ids[r]
            .iter()
            .map(|g| render::group(w, base, &w.groups[g]))
            .collect()
    })
}

pub(crate) async fn descendants(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    match visible_group(&w, &c, &id) {
        Ok(g) => group_list(&sim, &w, &c, &req, w.descendants(g)),
        Err(r) => r,
    }
}

pub(crate) async fn subgroups(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    match visible_group(&w, &c, &id) {
        Ok(g) => group_list(
            &sim,
            &w,
            &c,
            &req,
            w.index.subgroups.get(&g).cloned().unwrap_or_default(),
        ),
        Err(r) => r,
    }
}

pub(crate) fn sort_projects(w: &World, ids: &mut [u64], req: &PageRequest) {
    match req.param("order_by") {
        Some("id") => ids.sort_unstable(),
        Some("name") => ids.sort_by(|a, b| (&w.projects[a].name, a).cmp(&(&w.projects[b].name, b))),
        Some("path") => ids.sort_by(|a, b| (&w.projects[a].path, a).cmp(&(&w.projects[b].path, b))),
        // GitLab's default: created_at.
        _ => ids.sort_by_key(|p| (w.projects[p].created_at, *p)),
    }
    let default_desc = !matches!(
        req.param("order_by"),
        Some("id") | Some("name") | Some("path")
    );
    let desc = match req.param("sort") {
        Some("desc") => true,
        Some("asc") => false,
        _ => default_desc,
    };
    if desc {
        ids.reverse();
    }
}

pub(crate) async fn projects(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    let g = match visible_group(&w, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let include_subgroups = req.flag("include_subgroups");
    let mut ids = w.projects_of_cached(g, include_subgroups).to_vec();
    if req.param("with_shared").is_none_or(super::is_true) {
        for (r, shares) in &w.shares {
            if let Resource::Project(p) = r
                && shares.contains_key(&g)
                && !ids.contains(p)
            {
                ids.push(*p);
            }
        }
    }
    if let Some(a) = req.param("archived") {
        let want = a == "true";
        ids.retain(|p| w.projects[p].archived == want);
    }
    ids.retain(|p| c.is_admin || w.can_see_project(c.user_id, *p));
    sort_projects(&w, &mut ids, &req);
    let base = sim.base_url();
    pages::offset(&sim, &req, ids.len(), None, |r| {
        ids[r]
            .iter()
            .map(|p| render::project(&w, base, &w.projects[p]))
            .collect()
    })
}

pub(crate) async fn billable_members(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    let g = match owned_top_level(&w, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    // user → membership_type, the most direct kind first.
    let mut users: BTreeMap<u64, &str> = BTreeMap::new();
    let mut groups = vec![g];
    groups.extend(w.descendants(g));
    let projects = w.projects_of(g, true);
    let resources = groups
        .iter()
        .map(|g| Resource::Group(*g))
        .chain(projects.iter().map(|p| Resource::Project(*p)));
    for r in resources {
        for uid in w.members.get(&r).into_iter().flat_map(|m| m.keys()) {
            let kind = if matches!(r, Resource::Group(_)) {
                "group_member"
            } else {
                "project_member"
            };
            let e = users.entry(*uid).or_insert(kind);
            if *e == "project_member" && kind == "group_member" {
                *e = kind;
            }
        }
        for invited in w.shares.get(&r).into_iter().flat_map(|s| s.keys()) {
            for uid in w
                .members
                .get(&Resource::Group(*invited))
                .into_iter()
                .flat_map(|m| m.keys())
            {
                users
                    .entry(*uid)
                    .or_insert(if matches!(r, Resource::Group(_)) {
                        "group_invite"
                    } else {
                        "project_invite"
                    });
            }
        }
    }
    let rows: Vec<(u64, &str)> = users
        .into_iter()
        .filter(|(u, _)| w.users.get(u).is_some_and(|u| !u.is_bot()))
        .collect();
    let base = sim.base_url();
    pages::offset(&sim, &req, rows.len(), None, |r| {
        rows[r]
            .iter()
            .map(|(uid, kind)| {
                let u = &w.users[uid];
                let mut v = render::user_basic(base, u);
                v["last_activity_on"] = json!(u.last_activity_on.map(|d| d.to_string()));
                v["last_login_at"] = json!(
                    u.last_sign_in_at
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                );
                v["membership_type"] = json!(kind);
                v["removable"] = json!(kind.ends_with("_member"));
                v["created_at"] = json!(
                    u.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                );
                v["is_last_owner"] = json!(false);
                v["email"] = if u.enterprise_group_id == Some(g) {
                    json!(u.email)
                } else {
                    Value::Null
                };
                v
            })
            .collect()
    })
}

pub(crate) async fn enterprise_users(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
    Path(id): Path<String>,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    if w.mode != Mode::GitlabCom {
        return error(StatusCode::NOT_FOUND, json!({"error": "404 Not Found"}));
    }
    let g = match owned_top_level(&w, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let ids: Vec<u64> = w
        .users
        .values()
        .filter(|u| u.enterprise_group_id == Some(g))
        .filter(|u| {
            req.param("username")
                .is_none_or(|n| u.username.eq_ignore_ascii_case(n))
        })
        .filter(|u| !req.flag("active") || u.state == "active")
        .filter(|u| !req.flag("blocked") || u.state.contains("blocked"))
        .map(|u| u.id)
        .collect();
    let base = sim.base_url();
    pages::offset(&sim, &req, ids.len(), None, |r| {
        ids[r]
            .iter()
            .map(|u| render::user(base, &w.users[u], true))
            .collect()
    })
}

pub(crate) async fn saml_group_links(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let w = sim.world.read().unwrap();
    let g = match owned_top_level(&w, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let links: Vec<Value> = w
        .saml_links
        .get(&g)
        .into_iter()
        .flatten()
        .map(|l| json!({"name": l.name, "access_level": l.access_level, "member_role_id": l.member_role_id, "provider": l.provider}))
        .collect();
    json_response(StatusCode::OK, Value::Array(links))
}

fn role_json(r: &crate::model::MemberRole) -> Value {
    json!({"id": r.id, "name": r.name, "description": null, "group_id": r.group_id,
           "base_access_level": r.base_access_level, "read_code": true, "read_vulnerability": false})
}

pub(crate) async fn member_roles(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let w = sim.world.read().unwrap();
    if w.mode != Mode::GitlabCom {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"message": "400 Bad request - GitLab.com only; use GET /member_roles on self-managed"}),
        );
    }
    let g = match owned_top_level(&w, &c, &id) {
        Ok(g) => g,
        Err(r) => return r,
    };
    let roles: Vec<Value> = w
        .member_roles
        .values()
        .filter(|r| r.group_id == Some(g))
        .map(role_json)
        .collect();
    json_response(StatusCode::OK, Value::Array(roles))
}

pub(crate) async fn instance_member_roles(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
) -> Response {
    let w = sim.world.read().unwrap();
    if !c.is_admin {
        return forbidden();
    }
    let roles: Vec<Value> = w
        .member_roles
        .values()
        .filter(|r| r.group_id.is_none())
        .map(role_json)
        .collect();
    json_response(StatusCode::OK, Value::Array(roles))
}
