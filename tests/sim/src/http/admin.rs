//! `/_sim`: the controls tests use. Read the request log and counters, change faults and
//! limits at run time, advance the simulated date, and change state behind the worker's back.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::json;

use super::{Faults, Sim, SimConfig, error, json_response, no_content};
use crate::model::{MemberRole, Membership, Resource, SamlGroupLink, UserKind};

pub(crate) fn router() -> Router<Arc<Sim>> {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/counts", get(counts))
        .route("/requests", get(requests).delete(reset_requests))
        .route("/config", get(get_config).put(put_config))
        .route("/faults", put(put_faults))
        .route("/clock", post(clock))
        .route("/state", get(summary))
        .route("/state/full", get(full_state))
        .route("/users", post(add_user))
        .route("/users/{id}", patch(patch_user))
        .route("/groups", post(add_group))
        .route("/groups/{id}", delete(delete_group))
        .route("/projects", post(add_project))
        .route("/projects/{id}", delete(delete_project))
        .route("/hook_faults", put(put_hook_faults))
        .route("/members", post(set_member).delete(delete_member))
        .route("/shares", post(add_share))
        .route("/tokens", post(add_token))
        .route("/member_roles", post(add_member_role))
        .route("/saml_links", post(add_saml_link))
}

async fn counts(State(sim): State<Arc<Sim>>) -> Response {
    json_response(StatusCode::OK, json!(sim.counts()))
}

async fn requests(State(sim): State<Arc<Sim>>) -> Response {
    json_response(StatusCode::OK, json!(sim.requests()))
}

async fn reset_requests(State(sim): State<Arc<Sim>>) -> Response {
    sim.reset_log();
    no_content()
}

async fn get_config(State(sim): State<Arc<Sim>>) -> Response {
    json_response(StatusCode::OK, json!(*sim.config.lock().unwrap()))
}

async fn put_config(State(sim): State<Arc<Sim>>, Json(cfg): Json<SimConfig>) -> Response {
    *sim.config.lock().unwrap() = cfg;
    no_content()
}

async fn put_hook_faults(
    State(sim): State<Arc<Sim>>,
    Json(f): Json<crate::hooks::HookFaults>,
) -> Response {
    sim.config.lock().unwrap().hook_faults = f;
    no_content()
}

async fn delete_group(State(sim): State<Arc<Sim>>, Path(id): Path<u64>) -> Response {
    let removed = sim.world.write().unwrap().remove_group(id);
    super::hooks::send_queued(&sim);
    if removed {
        no_content()
    } else {
        error(StatusCode::NOT_FOUND, json!({"message": "no such group"}))
    }
}

async fn delete_project(State(sim): State<Arc<Sim>>, Path(id): Path<u64>) -> Response {
    let removed = sim.world.write().unwrap().remove_project(id);
    super::hooks::send_queued(&sim);
    if removed {
        no_content()
    } else {
        error(StatusCode::NOT_FOUND, json!({"message": "no such project"}))
    }
}

async fn put_faults(State(sim): State<Arc<Sim>>, Json(f): Json<Faults>) -> Response {
    sim.config.lock().unwrap().faults = f;
    no_content()
}

#[derive(Deserialize)]
struct Clock {
    #[serde(default)]
    advance_days: i64,
    /// Run GitLab's daily expired-member removal after moving the date.
    #[serde(default)]
    run_expiry_cron: bool,
}

async fn clock(State(sim): State<Arc<Sim>>, Json(c): Json<Clock>) -> Response {
    let mut w = sim.world.write().unwrap();
    w.day_offset += c.advance_days;
    let removed = if c.run_expiry_cron {
        w.remove_expired()
    } else {
        0
    };
    json_response(
        StatusCode::OK,
        json!({"today": w.today().to_string(), "removed": removed}),
    )
}

async fn summary(State(sim): State<Arc<Sim>>) -> Response {
    let w = sim.world.read().unwrap();
    json_response(
        StatusCode::OK,
        json!({
            "mode": w.mode,
            "today": w.today().to_string(),
            "users": w.users.len(),
            "groups": w.groups.len(),
            "projects": w.projects.len(),
            "memberships": w.members.values().map(|m| m.len()).sum::<usize>(),
            "shares": w.shares.values().map(|m| m.len()).sum::<usize>(),
            "invitations": w.invitations.values().map(|m| m.len()).sum::<usize>(),
            "tokens": w.tokens.len(),
        }),
    )
}

async fn full_state(State(sim): State<Arc<Sim>>) -> Response {
    json_response(StatusCode::OK, sim.world.read().unwrap().canonical_json())
}

#[derive(Deserialize)]
struct NewUser {
    username: String,
    #[serde(default = "human")]
    kind: UserKind,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    is_admin: bool,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    enterprise_group_id: Option<u64>,
    #[serde(default)]
    last_activity_on: Option<NaiveDate>,
}

fn human() -> UserKind {
    UserKind::Human
}

async fn add_user(State(sim): State<Arc<Sim>>, Json(n): Json<NewUser>) -> Response {
    let mut w = sim.world.write().unwrap();
    if w.index
        .user_by_username
        .contains_key(&n.username.to_lowercase())
    {
        return error(
            StatusCode::CONFLICT,
            json!({"message": "Username has already been taken"}),
        );
    }
    let id = w.add_user(&n.username, n.kind);
    let u = w.users.get_mut(&id).expect("added");
    if let Some(s) = n.state {
        u.state = s;
    }
    u.is_admin = n.is_admin;
    u.enterprise_group_id = n.enterprise_group_id;
    u.last_activity_on = n.last_activity_on;
    if let Some(e) = n.email {
        u.email = e;
    }
    w.reindex();
    w.user_event(id, true);
    drop(w);
    super::hooks::send_queued(&sim);
    json_response(StatusCode::CREATED, json!({"id": id}))
}

#[derive(Deserialize)]
struct UserPatch {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    last_activity_on: Option<NaiveDate>,
    #[serde(default)]
    email: Option<String>,
}

async fn patch_user(
    State(sim): State<Arc<Sim>>,
    Path(id): Path<u64>,
    Json(p): Json<UserPatch>,
) -> Response {
    let mut w = sim.world.write().unwrap();
    let Some(u) = w.users.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, json!({"message": "no such user"}));
    };
    if let Some(s) = p.state {
        u.state = s;
    }
    if let Some(d) = p.last_activity_on {
        u.last_activity_on = Some(d);
    }
    if let Some(e) = p.email {
        u.email = e;
    }
    w.reindex();
    no_content()
}

#[derive(Deserialize)]
struct NewGroup {
    path: String,
    #[serde(default)]
    parent_id: Option<u64>,
}

async fn add_group(State(sim): State<Arc<Sim>>, Json(n): Json<NewGroup>) -> Response {
    let mut w = sim.world.write().unwrap();
    if n.parent_id.is_some_and(|p| !w.groups.contains_key(&p)) {
        return error(
            StatusCode::NOT_FOUND,
            json!({"message": "no such parent group"}),
        );
    }
    let id = w.add_group(&n.path, n.parent_id);
    w.group_created(id);
    let body = json!({"id": id, "full_path": w.groups[&id].full_path});
    drop(w);
    super::hooks::send_queued(&sim);
    json_response(StatusCode::CREATED, body)
}

#[derive(Deserialize)]
struct NewProject {
    path: String,
    group_id: u64,
}

async fn add_project(State(sim): State<Arc<Sim>>, Json(n): Json<NewProject>) -> Response {
    let mut w = sim.world.write().unwrap();
    if !w.groups.contains_key(&n.group_id) {
        return error(StatusCode::NOT_FOUND, json!({"message": "no such group"}));
    }
    let id = w.add_project(&n.path, n.group_id);
    w.project_created(id);
    let body = json!({"id": id, "path_with_namespace": w.projects[&id].path_with_namespace});
    drop(w);
    super::hooks::send_queued(&sim);
    json_response(StatusCode::CREATED, body)
}

#[derive(Deserialize)]
struct SetMember {
    resource: Resource,
    user_id: u64,
    access_level: u16,
    #[serde(default)]
    expires_at: Option<NaiveDate>,
    #[serde(default)]
    member_role_id: Option<u64>,
    #[serde(default)]
    state: Option<crate::model::MemberState>,
}

async fn set_member(State(sim): State<Arc<Sim>>, Json(s): Json<SetMember>) -> Response {
    let mut w = sim.world.write().unwrap();
    if !w.users.contains_key(&s.user_id) {
        return error(StatusCode::NOT_FOUND, json!({"message": "no such user"}));
    }
    let now = w.now();
    let m = Membership {
        access_level: s.access_level,
        expires_at: s.expires_at,
        member_role_id: s.member_role_id,
        state: s.state.unwrap_or(crate::model::MemberState::Active),
        created_by: None,
        created_at: now,
    };
    let existed = w
        .members
        .get(&s.resource)
        .is_some_and(|ms| ms.contains_key(&s.user_id));
    let change = if existed {
        crate::hooks::MemberChange::Updated
    } else {
        crate::hooks::MemberChange::Added
    };
    w.member_changed(s.resource, s.user_id, change, &m);
    w.members
        .entry(s.resource)
        .or_default()
        .insert(s.user_id, m);
    drop(w);
    super::hooks::send_queued(&sim);
    no_content()
}

#[derive(Deserialize)]
struct DeleteMember {
    resource: Resource,
    user_id: u64,
}

async fn delete_member(State(sim): State<Arc<Sim>>, Json(d): Json<DeleteMember>) -> Response {
    let mut w = sim.world.write().unwrap();
    match w
        .members
        .get_mut(&d.resource)
        .and_then(|m| m.remove(&d.user_id))
    {
        Some(gone) => {
            w.member_changed(
                d.resource,
                d.user_id,
                crate::hooks::MemberChange::Removed,
                &gone,
            );
            drop(w);
            super::hooks::send_queued(&sim);
            no_content()
        }
        None => error(
            StatusCode::NOT_FOUND,
            json!({"message": "no such membership"}),
        ),
    }
}

#[derive(Deserialize)]
struct NewShare {
    resource: Resource,
    group_id: u64,
    group_access: u16,
    #[serde(default)]
    expires_at: Option<NaiveDate>,
}

async fn add_share(State(sim): State<Arc<Sim>>, Json(s): Json<NewShare>) -> Response {
    let mut w = sim.world.write().unwrap();
    w.share(s.resource, s.group_id, s.group_access, s.expires_at);
    let author = w.users.values().find(|u| u.is_admin).map_or(0, |u| u.id);
    w.share_audited(s.resource, s.group_id, author);
    no_content()
}

#[derive(Deserialize)]
struct NewToken {
    user_id: u64,
    #[serde(default = "token_name")]
    name: String,
    scopes: Vec<String>,
    #[serde(default)]
    expires_at: Option<NaiveDate>,
    #[serde(default)]
    value: Option<String>,
}

fn token_name() -> String {
    "sim".into()
}

async fn add_token(State(sim): State<Arc<Sim>>, Json(n): Json<NewToken>) -> Response {
    let mut w = sim.world.write().unwrap();
    let value = n
        .value
        .unwrap_or_else(|| format!("sim-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)));
    let scopes: Vec<&str> = n.scopes.iter().map(String::as_str).collect();
    let id = w.add_token(n.user_id, &n.name, &value, &scopes, n.expires_at);
    json_response(StatusCode::CREATED, json!({"id": id, "token": value}))
}

#[derive(Deserialize)]
struct NewRole {
    name: String,
    base_access_level: u16,
    #[serde(default)]
    group_id: Option<u64>,
}

async fn add_member_role(State(sim): State<Arc<Sim>>, Json(n): Json<NewRole>) -> Response {
    let mut w = sim.world.write().unwrap();
    let id = w.next_id();
    w.member_roles.insert(
        id,
        MemberRole {
            id,
            name: n.name,
            base_access_level: n.base_access_level,
            group_id: n.group_id,
        },
    );
    json_response(StatusCode::CREATED, json!({"id": id}))
}

#[derive(Deserialize)]
struct NewSamlLink {
    group_id: u64,
    name: String,
    access_level: u16,
    #[serde(default)]
    provider: Option<String>,
}

async fn add_saml_link(State(sim): State<Arc<Sim>>, Json(n): Json<NewSamlLink>) -> Response {
    let mut w = sim.world.write().unwrap();
    w.saml_links
        .entry(n.group_id)
        .or_default()
        .push(SamlGroupLink {
            name: n.name,
            access_level: n.access_level,
            member_role_id: None,
            provider: n.provider,
        });
    no_content()
}
