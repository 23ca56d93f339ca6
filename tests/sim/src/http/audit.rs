//! Audit events (Premium): `GET /groups/:id/audit_events` (the group's own events; its owners
//! and administrators) and `GET /audit_events` (the instance's; administrators, self-managed),
//! newest first, offset-paginated, filtered by `created_after` / `created_before` (ISO 8601).
//! The simulator records shares in them (`World::share_audited`), which no webhook reports.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{OriginalUri, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::json;

use super::pages::{self, PageRequest};
use super::{Caller, Sim, error, forbidden};
use crate::hooks::AuditEvent;
use crate::model::{Mode, Resource};

fn time(req: &PageRequest, k: &str) -> Result<Option<DateTime<Utc>>, Response> {
    match req.param(k) {
        None => Ok(None),
        Some(v) => DateTime::parse_from_rfc3339(v)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| {
                error(
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("{k} is invalid")}),
                )
            }),
    }
}

fn page(sim: &Sim, req: &PageRequest, keep: impl Fn(&AuditEvent) -> bool) -> Response {
    let (after, before) = match (time(req, "created_after"), time(req, "created_before")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let w = sim.world.read().unwrap();
    let mut events: Vec<&AuditEvent> = w
        .audit_events
        .iter()
        .filter(|e| keep(e))
        .filter(|e| after.is_none_or(|t| e.created_at >= t))
        .filter(|e| before.is_none_or(|t| e.created_at <= t))
        .collect();
    events.sort_by_key(|e| std::cmp::Reverse(e.id));
    pages::offset(sim, req, events.len(), None, |r| {
        events[r].iter().map(|e| json!(e)).collect()
    })
}

pub(crate) async fn group_events(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let g = {
        let w = sim.world.read().unwrap();
        let g = match super::groups::visible_group(&w, &c, &id) {
            Ok(g) => g,
            Err(r) => return r,
        };
        if !c.is_admin && w.effective_level(c.user_id, Resource::Group(g)) < 50 {
            return forbidden();
        }
        g
    };
    let req = PageRequest::new(uri.path(), uri.query());
    page(&sim, &req, |e| e.entity_type == "Group" && e.entity_id == g)
}

pub(crate) async fn instance_events(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    if !c.is_admin || sim.world.read().unwrap().mode == Mode::GitlabCom {
        return forbidden();
    }
    let req = PageRequest::new(uri.path(), uri.query());
    page(&sim, &req, |_| true)
}
