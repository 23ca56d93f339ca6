//! `/projects` and `/projects/:id`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{OriginalUri, Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::groups::sort_projects;
use super::pages::{self, Cursor, PageRequest};
use super::{Caller, Sim, json_response, not_found, render};
use crate::model::{Resource, World};

pub(crate) fn visible_project(w: &World, c: &Caller, r: &str) -> Result<u64, Response> {
    match w.project_by_ref(r) {
        Some(p) if c.is_admin || w.can_see_project(c.user_id, p) => Ok(p),
        _ => Err(not_found("Project")),
    }
}

pub(crate) async fn list(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    OriginalUri(uri): OriginalUri,
) -> Response {
    let req = PageRequest::new(uri.path(), uri.query());
    let w = sim.world.read().unwrap();
    let membership = req.flag("membership");
    let archived = req.param("archived").map(|a| a == "true");
    let ids: Vec<u64> = w
        .projects
        .keys()
        .copied()
        .filter(|p| archived.is_none_or(|a| w.projects[p].archived == a))
        .filter(|p| {
            if membership || !c.is_admin {
                w.effective_level(c.user_id, Resource::Project(*p)) >= 10
            } else {
                true
            }
        })
        .collect();
    let base = sim.base_url();
    let render = |slice: &[u64]| -> Vec<Value> {
        slice
            .iter()
            .map(|p| render::project(&w, base, &w.projects[p]))
            .collect()
    };
    if req.is_keyset() {
        return pages::keyset(&sim, &req, &ids, Cursor::IdAfter, render);
    }
    let mut ordered = ids;
    sort_projects(&w, &mut ordered, &req);
    pages::offset(&sim, &req, ordered.len(), Some("Project"), |r| {
        render(&ordered[r])
    })
}

pub(crate) async fn show(
    State(sim): State<Arc<Sim>>,
    Extension(c): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let w = sim.world.read().unwrap();
    match visible_project(&w, &c, &id) {
        Ok(p) => json_response(
            StatusCode::OK,
            render::project(&w, sim.base_url(), &w.projects[&p]),
        ),
        Err(r) => r,
    }
}
