//! `PRIVATE-TOKEN` (or `Authorization: Bearer`) authentication, with GitLab's 401 bodies and
//! scope checks.

use std::sync::Arc;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{Sim, error};

/// The authenticated user of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: u64,
    pub token_id: u64,
    pub is_admin: bool,
}

fn oauth_error(description: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(
            "www-authenticate",
            "Bearer realm=\"Protected by OAuth 2.0\", error=\"invalid_token\", error_description=\""
                .to_string()
                + description + "\"",
        )],
        axum::Json(json!({"error": "invalid_token", "error_description": description})),
    )
        .into_response()
}

pub(crate) fn authenticate(
    sim: &Arc<Sim>,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) -> Result<Caller, Response> {
    let value = headers
        .get("private-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_string)
        });
    let unauthorized = || {
        error(
            StatusCode::UNAUTHORIZED,
            json!({"message": "401 Unauthorized"}),
        )
    };
    let Some(value) = value else {
        return Err(unauthorized());
    };
    let bare = path.split('?').next().unwrap_or(path);
    let is_rotate = bare.ends_with("/rotate") && bare.starts_with("/personal_access_tokens/");
    // Most requests only read; the world's write lock is taken only to revoke a family or to
    // refresh `last_used_at`, which GitLab also updates at most every 10 minutes.
    struct Seen {
        id: u64,
        user_id: u64,
        family: u64,
        revoked: bool,
        api: bool,
        read_api: bool,
        self_rotate: bool,
    }
    let (token, is_admin, stale) = {
        let world = sim.world.read().unwrap();
        let today = world.today();
        let Some(token_id) = world.index.token_by_value.get(&value).copied() else {
            return Err(unauthorized());
        };
        let t = &world.tokens[&token_id];
        if !t.revoked && t.is_expired(today) {
            return Err(oauth_error(
                "Token is expired. You can either do re-authorization or token refresh.",
            ));
        }
        let user = world.users.get(&t.user_id);
        if !t.revoked && user.is_none_or(|u| u.state != "active") {
            return Err(unauthorized());
        }
        let is_admin =
            user.is_some_and(|u| u.is_admin) && world.mode == crate::model::Mode::SelfManaged;
        let stale = t
            .last_used_at
            .is_none_or(|l| world.now() - l > chrono::Duration::minutes(10));
        let has = |s: &str| t.scopes.iter().any(|x| x == s);
        let seen = Seen {
            id: t.id,
            user_id: t.user_id,
            family: t.family,
            revoked: t.revoked,
            api: has("api"),
            read_api: has("read_api"),
            self_rotate: has("self_rotate"),
        };
        (seen, is_admin, stale)
    };
    if token.revoked {
        if is_rotate {
            // Reuse detection: rotating a revoked token revokes its whole family.
            let mut world = sim.world.write().unwrap();
            for t in world.tokens.values_mut() {
                if t.family == token.family {
                    t.revoked = true;
                }
            }
        }
        return Err(oauth_error(
            "Token was revoked. You have to re-authorize from the user.",
        ));
    }
    let token_id = token.id;
    let allowed = if *method == Method::GET || *method == Method::HEAD {
        token.api || token.read_api
    } else if is_rotate && bare == "/personal_access_tokens/self/rotate" {
        token.api || token.self_rotate
    } else {
        token.api
    };
    if !allowed {
        return Err(error(
            StatusCode::FORBIDDEN,
            json!({
                "error": "insufficient_scope",
                "error_description": "The request requires higher privileges than provided by the access token.",
                "scope": "api"
            }),
        ));
    }
    if stale {
        let mut world = sim.world.write().unwrap();
        let now = world.now();
        if let Some(t) = world.tokens.get_mut(&token_id) {
            t.last_used_at = Some(now);
        }
    }
    Ok(Caller {
        user_id: token.user_id,
        token_id,
        is_admin,
    })
}
