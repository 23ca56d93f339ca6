//! Pending invitations. `POST` answers 201 even when addresses fail (`"status": "error"` with a
//! message per address) and updates an existing member invited by email.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::members::{may_manage, resolve, valid_level};
use super::pages::{self, PageRequest};
use super::{Caller, Params, Sim, bad_request, error, json_response, no_content, render};
use crate::model::{Invitation, Membership};

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
    if let Err(resp) = may_manage(&w, &c, r, 0) {
        return resp;
    }
    let query = req.param("query").map(str::to_lowercase);
    let rows: Vec<&Invitation> = w
        .invitations
        .get(&r)
        .into_iter()
        .flat_map(|m| m.values())
        .filter(|i| query.as_ref().is_none_or(|q| i.email.to_lowercase() == *q))
        .collect();
    pages::offset(&sim, &req, rows.len(), None, |range| {
        rows[range]
            .iter()
            .map(|i| render::invitation(&w, i))
            .collect()
    })
}

fn valid_email(e: &str) -> bool {
    let mut parts = e.split('@');
    matches!((parts.next(), parts.next(), parts.next()), (Some(l), Some(d), None) if !l.is_empty() && d.contains('.') && !e.contains(char::is_whitespace))
}

pub(crate) async fn create<const PROJECT: bool>(
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
    if !p.has("access_level") {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "access_level is missing"}),
        );
    }
    let level = match p.u64("access_level") {
        Ok(Some(l)) if [5, 10, 15, 20, 25, 30, 40, 50, 60].contains(&l) => l as u16,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({"error": "access_level does not have a valid value"}),
            );
        }
        Err(resp) => return resp,
    };
    let emails: Vec<String> = p
        .str("email")
        .map(|e| {
            e.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let user_ids: Vec<String> = p
        .str("user_id")
        .map(|e| {
            e.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if emails.is_empty() && user_ids.is_empty() {
        return bad_request("Must provide either email or user_id as a parameter");
    }
    if emails.iter().any(|e| !valid_email(e)) {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "email contains an invalid email address"}),
        );
    }
    if let Err(resp) = may_manage(&w, &c, r, level) {
        return resp;
    }
    let expires_at = match p.date("expires_at") {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let member_role_id = p.u64("member_role_id").ok().flatten();
    let today = w.today();
    let now = w.now();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    let mut targets: Vec<(String, Option<u64>)> = emails
        .iter()
        .map(|e| {
            (
                e.clone(),
                w.index.user_by_email.get(&e.to_lowercase()).copied(),
            )
        })
        .collect();
    for u in &user_ids {
        match u.parse::<u64>().ok().filter(|id| w.users.contains_key(id)) {
            Some(id) => targets.push((w.users[&id].username.clone(), Some(id))),
            None => {
                errors.insert(u.clone(), "User not found".into());
            }
        }
    }
    for (key, user) in targets {
        if expires_at.is_some_and(|d| d < today) {
            errors.insert(key, "Expires at cannot be a date in the past".into());
            continue;
        }
        if !valid_level(&w, r, level) {
            errors.insert(key, "Access level is not included in the list".into());
            continue;
        }
        match user {
            Some(uid) => {
                if w.users[&uid].kind == crate::model::UserKind::ProjectBot {
                    errors.insert(
                        key,
                        "User project bots cannot be added to other groups / projects".into(),
                    );
                    continue;
                }
                // An existing user is added (or, if already a member, updated) directly.
                let members = w.members.entry(r).or_default();
                match members.get_mut(&uid) {
                    Some(m) => {
                        m.access_level = level;
                        if expires_at.is_some() {
                            m.expires_at = expires_at;
                        }
                    }
                    None => {
                        members.insert(
                            uid,
                            Membership {
                                access_level: level,
                                expires_at,
                                member_role_id,
                                state: crate::model::MemberState::Active,
                                created_by: Some(c.user_id),
                                created_at: now,
                            },
                        );
                    }
                }
            }
            None => {
                let lower = key.to_lowercase();
                if w.invitations
                    .get(&r)
                    .is_some_and(|i| i.contains_key(&lower))
                {
                    errors.insert(key, "Invite email has already been taken".into());
                    continue;
                }
                let id = w.next_id();
                w.invitations.entry(r).or_default().insert(
                    lower,
                    Invitation {
                        id,
                        email: key,
                        access_level: level,
                        expires_at,
                        member_role_id,
                        created_at: now,
                        created_by: Some(c.user_id),
                    },
                );
            }
        }
    }
    if errors.is_empty() {
        json_response(StatusCode::CREATED, json!({"status": "success"}))
    } else {
        json_response(
            StatusCode::CREATED,
            json!({"status": "error", "message": errors}),
        )
    }
}

pub(crate) async fn remove<const PROJECT: bool>(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path((id, email)): Path<(String, String)>,
) -> Response {
    let mut w = sim.world.write().unwrap();
    let r = match resolve::<PROJECT>(&w, &c, &id) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    if let Err(resp) = may_manage(&w, &c, r, 0) {
        return resp;
    }
    match w
        .invitations
        .get_mut(&r)
        .and_then(|i| i.remove(&email.to_lowercase()))
    {
        Some(_) => no_content(),
        None => error(
            StatusCode::NOT_FOUND,
            json!({"message": "404 Member Not Found"}),
        ),
    }
}
