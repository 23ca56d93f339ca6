//! The pages: each reads the stored history through [`crate::history`] and renders HTML (or
//! the same CSV as `gitlab-worker access … --format csv`).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::Ui;
use super::html::{esc, page, url};
use crate::history::{
    self, AccessAnswer, ChangeRow, HistoryError, HistoryQuery, Ident, PathInfo, ResourceInfo,
    ResourceSel, Timeline, UserSel, parse_time, render, role,
};

/// A page's answer or why there is none.
pub struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = page(
            "Cannot answer",
            &format!(
                "<p class=\"error\">{}</p><p><a href=\"/\">Back to the snapshots</a></p>",
                esc(&self.1)
            ),
        );
        (
            self.0,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

impl From<HistoryError> for Failure {
    fn from(e: HistoryError) -> Self {
        match e {
            HistoryError::BadSelector(m) => Failure(StatusCode::BAD_REQUEST, m),
            HistoryError::Store(e) => {
                tracing::error!("auditors' page: {e}");
                Failure(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the stored history cannot be read; the worker's log says why".into(),
                )
            }
            HistoryError::UnknownScope { .. } => Failure(StatusCode::BAD_REQUEST, e.to_string()),
            other => Failure(StatusCode::NOT_FOUND, other.to_string()),
        }
    }
}

fn bad(m: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, m.into())
}

fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

fn csv(name: &str, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct AtQuery {
    pub at: Option<String>,
    pub connector: Option<String>,
}

fn at_of(q: &Option<String>) -> Result<DateTime<Utc>, Failure> {
    match q.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(Utc::now()),
        Some(s) => parse_time(s).map_err(bad),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// `?at=…` for links that keep the time asked about.
fn at_param(at: &Option<String>) -> String {
    match at.as_deref().filter(|s| !s.is_empty()) {
        Some(a) => format!("?at={}", url(a)),
        None => String::new(),
    }
}

impl Ui {
    async fn timeline(&self, connector: Option<&str>) -> Result<Timeline<'_>, Failure> {
        let c = match connector {
            Some(c) if self.connectors.iter().any(|k| k == c) => c.to_string(),
            Some(c) => return Err(bad(format!("no connector {c:?} here"))),
            None => self.default_connector().await?,
        };
        Ok(Timeline::load(&self.store, &c, None).await?)
    }

    async fn default_connector(&self) -> Result<String, Failure> {
        if self.connectors.len() == 1 {
            return Ok(self.connectors[0].clone());
        }
        let stored = self
            .store
            .list_snapshots(None)
            .await
            .map_err(|e| Failure::from(HistoryError::Store(e)))?;
        stored.last().map(|s| s.connector.clone()).ok_or_else(|| {
            Failure(
                StatusCode::NOT_FOUND,
                "no snapshot is stored yet; run a sync first".into(),
            )
        })
    }
}

/// The "as of" form and the line naming what the answer stands on.
fn basis_box(a: &AccessAnswer, at: &Option<String>, csv_href: &str) -> String {
    let b = &a.based_on;
    let completeness = if b.complete {
        "<span class=\"ok\">complete</span>".to_string()
    } else {
        "<span class=\"partial\">partial: some lists could not be read</span>".to_string()
    };
    let live = match b.change_batches {
        0 => String::new(),
        n => format!(
            ", with {n} live change batch(es) up to {}",
            b.last_change_at.map(time).unwrap_or_default()
        ),
    };
    let value = at.as_deref().unwrap_or_default();
    format!(
        r#"<form class="inline" method="get"><label for="at">As of</label>
<input id="at" name="at" type="datetime-local" step="1" value="{v}">
<button type="submit">Show</button> <span class="muted">(UTC; empty for now)</span></form>
<p class="basis">As of {asof}: snapshot <code>{id}</code> finished {fin} ({completeness}){live}; sha256 <code>{sha}</code>.</p>
<p class="actions"><a id="csv" href="{csv_href}">Download CSV</a>
Evidence for this snapshot: <code>gitlab-worker evidence export {id} --out DIR</code></p>"#,
        v = esc(&value.chars().take(19).collect::<String>()),
        asof = time(a.as_of),
        id = esc(&b.snapshot_id),
        fin = time(b.finished_at),
        sha = esc(&b.sha256[..b.sha256.len().min(16)]),
    )
}

fn resource_link(r: &ResourceInfo, at: &Option<String>) -> String {
    format!(
        "<a href=\"/resources/{}/{}{}\">{}</a>",
        r.kind,
        r.id,
        at_param(at),
        esc(r.path.as_deref().unwrap_or(&format!("{} {}", r.kind, r.id)))
    )
}

/// A path as the chain it comes through: user → group → subgroup → project.
fn chain(user: &str, p: &PathInfo, at: &Option<String>) -> String {
    let arrow = "<span class=\"arrow\">→</span>";
    let mut out = format!("<span class=\"chain\">{}", esc(user));
    for (i, node) in p.chain.iter().enumerate() {
        let sep = if p.via == gitlab_connector::model::Via::Shared && i == 1 {
            "<span class=\"arrow\">⇒ shared into</span>"
        } else {
            arrow
        };
        let _ = write!(out, "{sep}{}", resource_link(node, at));
    }
    let how = match p.via {
        gitlab_connector::model::Via::Direct => "direct",
        gitlab_connector::model::Via::Inherited => "inherited",
        gitlab_connector::model::Via::Shared => "shared",
    };
    let _ = write!(
        out,
        "</span> <span class=\"muted\">({how}, {}{})</span>",
        role(p.access_level),
        p.expires_at
            .map(|d| format!(", until {d}"))
            .unwrap_or_default()
    );
    out
}

fn access_table(a: &AccessAnswer, by_user: bool, at: &Option<String>) -> String {
    if a.rows.is_empty() {
        return "<p>No access at that time.</p>".into();
    }
    let mut out = String::from("<table id=\"access\"><thead><tr>");
    out.push_str(if by_user {
        "<th>Resource</th>"
    } else {
        "<th>User</th><th>State</th>"
    });
    out.push_str(
        "<th>Level</th><th>Since</th><th>Last activity</th><th>Paths</th></tr></thead><tbody>",
    );
    for r in &a.rows {
        let who = r
            .username
            .clone()
            .unwrap_or_else(|| format!("user {}", r.user_id));
        out.push_str("<tr>");
        if by_user {
            let _ = write!(out, "<td>{}</td>", resource_link(&r.resource, at));
        } else {
            let _ = write!(
                out,
                "<td><a href=\"/users/{}{}\">{}</a></td><td>{} {}{}{}</td>",
                r.user_id,
                at_param(at),
                esc(&who),
                esc(r.user.user_state.as_deref().unwrap_or("")),
                esc(r.user.user_kind.as_deref().unwrap_or("")),
                if r.user.is_admin == Some(true) {
                    ", admin"
                } else {
                    ""
                },
                match r.user.two_factor_enabled {
                    Some(true) => ", 2FA",
                    Some(false) => ", no 2FA",
                    None => "",
                }
            );
        }
        let paths: Vec<String> = r.paths.iter().map(|p| chain(&who, p, at)).collect();
        let _ = write!(
            out,
            "<td>{} {}</td><td>{}{}</td><td>{}</td><td>{}</td></tr>",
            r.access_level,
            r.role,
            time(r.since),
            if r.since_history_start {
                " <span class=\"muted\">or earlier</span>"
            } else {
                ""
            },
            r.user
                .last_activity_on
                .map(|d| d.to_string())
                .unwrap_or_else(|| "—".into()),
            paths.join("<br>")
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// `.csv` at the end of the last path segment asks for CSV.
fn split_csv(id: &str) -> (&str, bool) {
    match id.strip_suffix(".csv") {
        Some(id) => (id, true),
        None => (id, false),
    }
}

pub async fn user(
    State(ui): State<Arc<Ui>>,
    Path(id): Path<String>,
    Query(q): Query<AtQuery>,
) -> Result<Response, Failure> {
    let (id, as_csv) = split_csv(&id);
    let id: u64 = id
        .parse()
        .map_err(|_| bad("a user page is /users/<numeric id>"))?;
    let at = at_of(&q.at)?;
    let t = ui.timeline(q.connector.as_deref()).await?;
    let a = history::user_access(&t, &UserSel::Id(id), at).await?;
    if as_csv {
        return Ok(csv(
            &format!("user-{id}-access.csv"),
            render::access_csv(&a),
        ));
    }
    let u = &a.subject["user"];
    let name = a.subject["username"].as_str().unwrap_or_default();
    let facts = format!(
        "<p>{} · {} · {} · admin: {} · 2FA: {} · last activity: {}</p>",
        esc(u["name"].as_str().unwrap_or_default()),
        esc(u["user_state"].as_str().unwrap_or_default()),
        esc(u["user_kind"].as_str().unwrap_or_default()),
        if u["is_admin"] == true { "yes" } else { "no" },
        match u["two_factor_enabled"].as_bool() {
            Some(true) => "on",
            Some(false) => "off",
            None => "unknown",
        },
        esc(u["last_activity_on"].as_str().unwrap_or("—")),
    );
    let csv_href = format!("/users/{id}.csv{}", at_param(&q.at));
    let body = format!(
        "{facts}{}<h2>What {} can reach</h2>{}<p><a href=\"/changes?user=id:{id}\">Changes of {}</a></p>",
        basis_box(&a, &q.at, &csv_href),
        esc(name),
        access_table(&a, true, &q.at),
        esc(name)
    );
    Ok(html(page(&format!("User {name}"), &body)))
}

pub async fn resource(
    State(ui): State<Arc<Ui>>,
    Path((kind, id)): Path<(String, String)>,
    Query(q): Query<AtQuery>,
) -> Result<Response, Failure> {
    let (id, as_csv) = split_csv(&id);
    let id: u64 = id
        .parse()
        .map_err(|_| bad("a resource page is /resources/group/<id> or /resources/project/<id>"))?;
    let sel = match kind.as_str() {
        "group" => ResourceSel::Group(Ident::Id(id)),
        "project" => ResourceSel::Project(Ident::Id(id)),
        _ => return Err(bad("a resource is a group or a project")),
    };
    let at = at_of(&q.at)?;
    let t = ui.timeline(q.connector.as_deref()).await?;
    let a = history::who(&t, &sel, at).await?;
    if as_csv {
        return Ok(csv(
            &format!("{kind}-{id}-access.csv"),
            render::access_csv(&a),
        ));
    }
    let path = a.subject["path"].as_str().unwrap_or_default().to_string();
    let csv_href = format!("/resources/{kind}/{id}.csv{}", at_param(&q.at));
    let body = format!(
        "{}<h2>Who has access</h2>{}<p><a href=\"/changes?resource={kind}:{id}\">Changes on {}</a></p>",
        basis_box(&a, &q.at, &csv_href),
        access_table(&a, false, &q.at),
        esc(&path)
    );
    Ok(html(page(
        &format!(
            "{} {path}",
            if kind == "group" { "Group" } else { "Project" }
        ),
        &body,
    )))
}

#[derive(Debug, Default, Deserialize)]
pub struct ChangesQuery {
    pub user: Option<String>,
    pub resource: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub connector: Option<String>,
}

fn nonempty(s: &Option<String>) -> Option<&str> {
    s.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

fn changes_table(rows: &[ChangeRow]) -> String {
    if rows.is_empty() {
        return "<p>No change in that window.</p>".into();
    }
    let level = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .and_then(|v| v.get("access_level"))
            .and_then(serde_json::Value::as_u64)
            .map_or_else(|| "none".to_string(), |l| format!("{l} {}", role(l as u16)))
    };
    let mut out = String::from(
        "<table id=\"changes\"><thead><tr><th>Time</th><th>User</th><th>Resource</th><th>Change</th><th>Before</th><th>After</th><th>Cause</th></tr></thead><tbody>",
    );
    for r in rows {
        let user = match r.user_id {
            Some(u) => format!(
                "<a href=\"/users/{u}\">{}</a>",
                esc(r.username.as_deref().unwrap_or(&format!("user {u}")))
            ),
            None => "—".into(),
        };
        let res = r
            .resource
            .as_ref()
            .map(|x| resource_link(x, &None))
            .unwrap_or_else(|| "—".into());
        let mut cause = esc(r.cause);
        if let Some(j) = &r.job_id {
            let _ = write!(cause, " · job <code>{}</code>", esc(j));
        }
        if let Some(s) = &r.snapshot_id {
            let _ = write!(
                cause,
                " · snapshot <code>{}</code>",
                esc(&s[..s.len().min(13)])
            );
        }
        if let Some(b) = r.batch_id {
            let _ = write!(cause, " · batch {b}");
        }
        if let Some(by) = &r.requested_by {
            let _ = write!(cause, " · requested by {}", esc(by));
        }
        if let Some(why) = &r.reason {
            let _ = write!(cause, " · reason: {}", esc(why));
        }
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{user}</td><td>{res}</td><td>{}</td><td>{}</td><td>{}</td><td>{cause}</td></tr>",
            time(r.time),
            esc(r.action.as_deref().unwrap_or(&r.record)),
            level(&r.before),
            level(&r.after),
        );
    }
    out.push_str("</tbody></table>");
    out
}

pub async fn changes(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<ChangesQuery>,
) -> Result<Response, Failure> {
    let t = ui.timeline(q.connector.as_deref()).await?;
    let query = HistoryQuery {
        user: nonempty(&q.user).map(UserSel::parse).transpose()?,
        resource: nonempty(&q.resource).map(ResourceSel::parse).transpose()?,
        since: nonempty(&q.since)
            .map(parse_time)
            .transpose()
            .map_err(bad)?,
        until: nonempty(&q.until)
            .map(parse_time)
            .transpose()
            .map_err(bad)?,
    };
    let h = history::history(&t, &query).await?;
    let v = |s: &Option<String>| esc(nonempty(s).unwrap_or_default());
    let body = format!(
        r#"<form class="inline" method="get">
<label>User <input name="user" value="{}" placeholder="username or id:N" maxlength="200"></label>
<label>Resource <input name="resource" value="{}" placeholder="group:PATH" maxlength="300"></label>
<label>Since <input name="since" value="{}" placeholder="2026-01-01" maxlength="40"></label>
<label>Until <input name="until" value="{}" placeholder="now" maxlength="40"></label>
<button type="submit">Filter</button></form>
<p class="muted">The history starts {}: nothing before it is known.</p>{}"#,
        v(&q.user),
        v(&q.resource),
        v(&q.since),
        v(&q.until),
        time(h.history_starts),
        changes_table(&h.rows)
    );
    Ok(html(page("Changes", &body)))
}

#[derive(Debug, Default, Deserialize)]
pub struct DiffQuery {
    pub from: Option<String>,
    pub to: Option<String>,
}

pub async fn diff(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<DiffQuery>,
) -> Result<Response, Failure> {
    let (Some(from), Some(to)) = (nonempty(&q.from), nonempty(&q.to)) else {
        return Err(bad("choose two snapshots: /diff?from=A&to=B"));
    };
    let find = |id: &str| {
        let store = ui.store.clone();
        let id = id.to_string();
        async move {
            store
                .find_snapshot(&id)
                .await
                .map_err(|e| Failure(StatusCode::NOT_FOUND, e.to_string()))
        }
    };
    let (a, b) = (find(from).await?, find(to).await?);
    let t = Timeline::load(&ui.store, &a.connector, Some(&a.scope)).await?;
    let rows = history::snapshot_diff(&t, &a, &b).await?;
    let body = format!(
        "<p>From snapshot <code>{}</code> ({}) to <code>{}</code> ({}): {} access change(s).</p>{}",
        esc(&a.snapshot_id),
        time(a.finished_at),
        esc(&b.snapshot_id),
        time(b.finished_at),
        rows.len(),
        changes_table(&rows)
    );
    Ok(html(page("Difference between two snapshots", &body)))
}

#[derive(Debug, Default, Deserialize)]
pub struct SearchQuery {
    pub q: Option<String>,
    pub connector: Option<String>,
}

pub async fn search(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<SearchQuery>,
) -> Result<Response, Failure> {
    let text = nonempty(&q.q).unwrap_or_default();
    if text.chars().count() > 200 {
        return Err(bad("a search is at most 200 characters"));
    }
    let t = ui.timeline(q.connector.as_deref()).await?;
    let found = history::search(&t, text, 50).await?;
    let mut body = format!(
        "<p>Names starting with <code>{}</code>, as of now.</p>",
        esc(text)
    );
    if found.is_empty() {
        body.push_str("<p>Nothing found.</p>");
    }
    body.push_str("<ul id=\"results\">");
    for f in &found {
        let _ = write!(
            body,
            "<li>{} <a href=\"{}\">{}</a></li>",
            f.kind,
            f.href(),
            esc(&f.name)
        );
    }
    body.push_str("</ul>");
    Ok(html(page("Search", &body)))
}

pub async fn snapshots(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<AtQuery>,
) -> Result<Response, Failure> {
    let t = ui.timeline(q.connector.as_deref()).await?;
    let mut rows = String::new();
    let mut options = String::new();
    let mut prev: Option<&str> = None;
    for s in &t.snapshots {
        let linked = match (prev, s.prev_sha256.as_deref()) {
            (None, _) => "<span class=\"muted\">first</span>",
            (Some(p), Some(q)) if p == q => "<span class=\"ok\">linked</span>",
            _ => "<span class=\"broken\">not linked</span>",
        };
        prev = Some(&s.sha256);
        let _ = write!(
            options,
            "<option value=\"{id}\">{} · {}</option>",
            time(s.finished_at),
            esc(&s.snapshot_id[..s.snapshot_id.len().min(13)]),
            id = esc(&s.snapshot_id)
        );
        let _ = write!(
            rows,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{linked}</td></tr>",
            esc(&s.snapshot_id),
            time(s.finished_at),
            if s.complete {
                "<span class=\"ok\">complete</span>"
            } else {
                "<span class=\"partial\">partial</span>"
            },
            s.record_count,
            esc(&s.sha256[..s.sha256.len().min(16)]),
        );
    }
    let body = format!(
        r#"<p>Connector <code>{}</code>, scope <code>{}</code>. Each snapshot's sha256 covers its records; each names the one before it (the chain).</p>
<table id="snapshots"><thead><tr><th>Snapshot</th><th>Finished</th><th>Completeness</th><th>Records</th><th>sha256</th><th>Chain</th></tr></thead><tbody>{rows}</tbody></table>
<h2>Difference between two snapshots</h2>
<form class="inline" method="get" action="/diff"><label>From <select name="from">{options}</select></label>
<label>To <select name="to">{options}</select></label><button type="submit">Compare</button></form>"#,
        esc(&t.connector),
        esc(&t.scope),
    );
    Ok(html(page("Snapshots", &body)))
}
