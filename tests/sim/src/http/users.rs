//! `/user`, `/users`, `/users/:id` and the admin user actions.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::pages::{self, Cursor, PageRequest};
use super::{Caller, Params, Sim, error, forbidden, json_response, no_content, not_found, render};
use crate::model::{Mode, UserKind};

pub(crate) async fn current(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
) -> Response {
    let w = sim.world.read().unwrap();
    json_response(
        StatusCode::OK,
        render::user(sim.base_url(), &w.users[&c.user_id], true),
    )
}

pub(crate) async fn list(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    // Flags are read once, not per user: this list is paged a thousand times at 100k users.
    let (active, blocked, humans, no_bots, external) = (
        req.flag("active"),
        req.flag("blocked"),
        req.flag("humans"),
        req.flag("without_project_bots"),
        req.flag("external"),
    );
    let username = req.param("username").map(str::to_lowercase);
    let search = req.param("search").map(str::to_lowercase);
    let keep = |u: &&crate::model::User| {
        username
            .as_ref()
            .is_none_or(|n| u.username.to_lowercase() == *n)
            && search.as_ref().is_none_or(|s| {
                u.username.to_lowercase().contains(s)
                    || u.name.to_lowercase().contains(s)
                    || (c.is_admin && u.email.to_lowercase() == *s)
            })
            && (!active || u.state == "active")
            && (!blocked || u.state.contains("blocked") || u.state == "banned")
            && (!humans || u.kind == UserKind::Human)
            && (!no_bots || u.kind != UserKind::ProjectBot)
            && (!external || u.external)
    };
    // An ascending keyset page needs only the users after the cursor: scanned from there, not
    // from the start (same page, same `next` link). Anything else filters the whole table.
    let window = req.is_keyset()
        && req.param("sort") != Some("desc")
        && req.param("order_by").unwrap_or("id") == "id";
    let after = match req.param("cursor") {
        None => Some(None),
        Some(cur) => pages::cursor_id(cur).map(Some),
    };
    let ids: Vec<u64> = match (window, after) {
        // A username names one user at most: looked up by its index, as GitLab does, not by
        // lowercasing every user (that scan was a third of the simulator's CPU in the
        // throughput benchmark, where every job looks its user up).
        _ if username.is_some() => username
            .as_ref()
            .and_then(|n| w.index.user_by_username.get(n))
            .and_then(|id| w.users.get(id))
            .filter(keep)
            .map(|u| u.id)
            .into_iter()
            .collect(),
        (true, Some(after)) => {
            let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
            w.users
                .range((from, std::ops::Bound::Unbounded))
                .map(|(_, u)| u)
                .filter(keep)
                .take(req.per_page as usize + 1)
                .map(|u| u.id)
                .collect()
        }
        _ => w.users.values().filter(keep).map(|u| u.id).collect(),
    };
    let base = sim.base_url();
    let render = |slice: &[u64]| -> Vec<Value> {
        slice
            .iter()
            .map(|id| render::user(base, &w.users[id], c.is_admin))
            .collect()
    };
    if req.is_keyset() {
        return pages::keyset(&sim, &req, &ids, Cursor::Opaque, render);
    }
    let mut ordered = ids;
    if req.param("sort") != Some("asc") {
        ordered.reverse();
    }
    pages::offset(&sim, &req, ordered.len(), Some("User"), |r| {
        render(&ordered[r])
    })
}

pub(crate) async fn show(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let w = sim.world.read().unwrap();
    match id.parse::<u64>().ok().and_then(|id| w.users.get(&id)) {
        Some(u) => json_response(
            StatusCode::OK,
            render::user(sim.base_url(), u, c.is_admin || c.user_id == u.id),
        ),
        None => not_found("User"),
    }
}

pub(crate) async fn create(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !c.is_admin {
        return forbidden();
    }
    let p = match Params::parse(q.as_deref(), &headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let missing: Vec<&str> = ["email", "name", "username"]
        .into_iter()
        .filter(|k| p.str(k).is_none_or(|v| v.trim().is_empty()))
        .collect();
    if !missing.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": missing.iter().map(|m| format!("{m} is missing")).collect::<Vec<_>>().join(", ")}),
        );
    }
    if !["password", "reset_password", "force_random_password"]
        .iter()
        .any(|k| p.has(k))
    {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "password, reset_password, force_random_password are missing, at least one parameter must be provided"}),
        );
    }
    let (email, username, name) = (
        p.str("email").unwrap(),
        p.str("username").unwrap(),
        p.str("name").unwrap(),
    );
    if !email.contains('@') {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"message": {"email": ["is invalid"]}}),
        );
    }
    let mut w = sim.world.write().unwrap();
    if w.index
        .user_by_username
        .contains_key(&username.to_lowercase())
    {
        return error(
            StatusCode::CONFLICT,
            json!({"message": "Username has already been taken"}),
        );
    }
    if w.index.user_by_email.contains_key(&email.to_lowercase()) {
        return error(
            StatusCode::CONFLICT,
            json!({"message": "Email has already been taken"}),
        );
    }
    let id = w.add_user(&username, UserKind::Human);
    let user = w.users.get_mut(&id).expect("just added");
    user.name = name;
    user.email = email.clone();
    user.external = p.bool("external");
    user.last_activity_on = None;
    w.index.user_by_email.retain(|_, v| *v != id);
    w.index.user_by_email.insert(email.to_lowercase(), id);
    w.user_event(id, true);
    json_response(
        StatusCode::CREATED,
        render::user(sim.base_url(), &w.users[&id], true),
    )
}

pub(crate) async fn action(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let mut w = sim.world.write().unwrap();
    let gitlab_com = w.mode == Mode::GitlabCom;
    let Some(id) = id.parse::<u64>().ok().filter(|id| w.users.contains_key(id)) else {
        return not_found("User");
    };
    if !c.is_admin || gitlab_com {
        return forbidden();
    }
    let today = w.today();
    let user = w.users.get_mut(&id).expect("checked");
    let deny = |m: &str| error(StatusCode::FORBIDDEN, json!({"message": m}));
    let next = match action.as_str() {
        "block" => match user.state.as_str() {
            "ldap_blocked" => {
                return deny("403 Forbidden - LDAP blocked users cannot be modified by the API");
            }
            _ if user.is_bot() && user.kind == UserKind::ProjectBot => {
                return deny("403 Forbidden - An internal user cannot be blocked");
            }
            _ => "blocked",
        },
        "unblock" => match user.state.as_str() {
            "ldap_blocked" => {
                return deny("403 Forbidden - LDAP blocked users cannot be unblocked by the API");
            }
            "deactivated" => {
                return deny("403 Forbidden - Deactivated users cannot be unblocked by the API");
            }
            _ => "active",
        },
        "deactivate" => {
            if user.state.contains("blocked") {
                return deny("403 Forbidden - A blocked user cannot be deactivated by the API");
            }
            if user.state == "deactivated" {
                return json_response(StatusCode::CREATED, json!(true));
            }
            // GitLab only deactivates dormant users (no activity for 90 days).
            if user
                .last_activity_on
                .is_some_and(|d| (today - d).num_days() < 90)
            {
                return deny(
                    "403 Forbidden - The user you are trying to deactivate has been active in the past 90 days and cannot be deactivated",
                );
            }
            "deactivated"
        }
        "activate" => match user.state.as_str() {
            s if s.contains("blocked") => {
                return deny("403 Forbidden - A blocked user must be unblocked to be activated");
            }
            _ => "active",
        },
        "ban" => match user.state.as_str() {
            "active" => "banned",
            "banned" => return deny("403 Forbidden - You cannot ban banned users."),
            _ => return deny("403 Forbidden - You cannot ban blocked users."),
        },
        "unban" => match user.state.as_str() {
            "banned" => "active",
            _ => return deny("403 Forbidden - You cannot unban active users."),
        },
        _ => return error(StatusCode::NOT_FOUND, json!({"error": "404 Not Found"})),
    };
    user.state = next.to_string();
    json_response(StatusCode::CREATED, json!(true))
}

pub(crate) async fn remove(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let mut w = sim.world.write().unwrap();
    let Some(id) = id.parse::<u64>().ok().filter(|id| w.users.contains_key(id)) else {
        return not_found("User");
    };
    if !c.is_admin || w.mode == Mode::GitlabCom {
        return forbidden();
    }
    w.user_event(id, false);
    w.users.remove(&id);
    for members in w.members.values_mut() {
        members.remove(&id);
    }
    w.tokens.retain(|_, t| t.user_id != id);
    w.reindex();
    no_content()
}
