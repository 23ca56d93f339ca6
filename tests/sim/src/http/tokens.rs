//! Personal access tokens: self-inspection, rotation (with reuse detection in auth), the admin
//! list and revocation.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::pages::{self, PageRequest};
use super::{Caller, Params, Sim, error, forbidden, json_response, no_content, render};

pub(crate) async fn show_self(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
) -> Response {
    let w = sim.world.read().unwrap();
    json_response(
        StatusCode::OK,
        render::token(&w.tokens[&c.token_id], w.today()),
    )
}

pub(crate) async fn rotate_self(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let p = match Params::parse(q.as_deref(), &headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut w = sim.world.write().unwrap();
    let today = w.today();
    let expires_at = match p.date("expires_at") {
        Ok(Some(d)) => d,
        // "If the token requires an expiration date, defaults to 1 week."
        Ok(None) => today + chrono::Duration::days(7),
        Err(r) => return r,
    };
    if expires_at <= today {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"message": "400 Bad request - Expiration date must be in the future"}),
        );
    }
    if expires_at > today + chrono::Duration::days(365) {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"message": "400 Bad request - Expiration date must not be more than 365 days from now"}),
        );
    }
    let old = w.tokens[&c.token_id].clone();
    let id = w.next_id();
    let value = format!("sim-{:016x}{:08x}", fastrand::u64(..), id);
    let now = w.now();
    w.tokens
        .get_mut(&c.token_id)
        .expect("caller's token")
        .revoked = true;
    let token = crate::model::Token {
        id,
        user_id: old.user_id,
        name: old.name.clone(),
        value: value.clone(),
        scopes: old.scopes.clone(),
        expires_at: Some(expires_at),
        revoked: false,
        created_at: now,
        last_used_at: None,
        family: old.family,
    };
    let mut body = render::token(&token, today);
    body["token"] = json!(value);
    w.index.token_by_value.insert(value, id);
    w.tokens.insert(id, token);
    json_response(StatusCode::OK, body)
}

pub(crate) async fn list(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    let user_filter = req.param("user_id").and_then(|v| v.parse::<u64>().ok());
    if user_filter.is_some_and(|u| u != c.user_id) && !c.is_admin {
        return forbidden();
    }
    let today = w.today();
    let tokens: Vec<_> = w
        .tokens
        .values()
        .filter(|t| match user_filter {
            Some(u) => t.user_id == u,
            None => c.is_admin || t.user_id == c.user_id,
        })
        .filter(|t| match req.param("state") {
            Some("active") => t.is_active(today),
            Some("inactive") => !t.is_active(today),
            _ => true,
        })
        .filter(|t| match req.param("revoked") {
            Some(v) => super::is_true(v) == t.revoked,
            None => true,
        })
        .collect();
    pages::offset(&sim, &req, tokens.len(), None, |r| {
        tokens[r].iter().map(|t| render::token(t, today)).collect()
    })
}

fn visible_token(w: &crate::model::World, c: &Caller, id: &str) -> Result<u64, Response> {
    let id = id
        .parse::<u64>()
        .ok()
        .filter(|id| w.tokens.contains_key(id));
    match id {
        Some(id) if c.is_admin || w.tokens[&id].user_id == c.user_id => Ok(id),
        _ => Err(error(
            StatusCode::NOT_FOUND,
            json!({"message": "404 Not Found"}),
        )),
    }
}

pub(crate) async fn show(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let w = sim.world.read().unwrap();
    match visible_token(&w, &c, &id) {
        Ok(id) => json_response(StatusCode::OK, render::token(&w.tokens[&id], w.today())),
        Err(r) => r,
    }
}

pub(crate) async fn revoke(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let mut w = sim.world.write().unwrap();
    match visible_token(&w, &c, &id) {
        Ok(id) => {
            w.tokens.get_mut(&id).expect("visible").revoked = true;
            no_content()
        }
        Err(r) => r,
    }
}
