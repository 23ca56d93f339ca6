//! GitLab's pagination: offset (with `X-*` headers and `Link`, totals only up to 10,000
//! records, `per_page` capped at 100, a maximum offset on keyset-capable lists) and keyset
//! (`Link rel="next"` only).

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::{Json, Sim, error, header, url_pairs};

/// The request's pagination parameters and where it was sent.
pub(crate) struct PageRequest {
    pub page: u64,
    pub per_page: u64,
    /// The raw path (as sent, with `/api/v4`) and query pairs, for building `Link`s.
    pub path: String,
    pub query: Vec<(String, String)>,
}

impl PageRequest {
    pub fn new(path: &str, query: Option<&str>) -> Self {
        let query = query.map(url_pairs).unwrap_or_default();
        let get = |k: &str| {
            query
                .iter()
                .find(|(q, _)| q == k)
                .and_then(|(_, v)| v.parse::<i64>().ok())
        };
        let per_page = match get("per_page") {
            Some(n) if n >= 1 => (n as u64).min(100),
            _ => 20,
        };
        let page = match get("page") {
            Some(n) if n >= 1 => n as u64,
            _ => 1,
        };
        Self {
            page,
            per_page,
            path: path.to_string(),
            query,
        }
    }

    pub fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(q, _)| q == k)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter, coerced as Grape does.
    pub fn flag(&self, k: &str) -> bool {
        self.param(k).is_some_and(super::is_true)
    }

    pub fn is_keyset(&self) -> bool {
        self.param("pagination") == Some("keyset")
    }

    fn link(&self, sim: &Sim, set: &[(&str, String)]) -> String {
        let mut pairs: Vec<(String, String)> = self
            .query
            .iter()
            .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
            .cloned()
            .collect();
        pairs.extend(set.iter().map(|(k, v)| (k.to_string(), v.clone())));
        pairs.sort();
        let q = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
            .collect::<Vec<_>>()
            .join("&");
        format!("{}{}?{q}", sim.base_url(), self.path)
    }
}

const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

/// An offset page over `total` items; `render` turns the page's index range into JSON.
/// `keyset_type` names the record type on keyset-capable lists, where the offset cap applies.
pub(crate) fn offset<T: serde::Serialize>(
    sim: &Sim,
    req: &PageRequest,
    total: usize,
    keyset_type: Option<&str>,
    render: impl FnOnce(std::ops::Range<usize>) -> Vec<T>,
) -> Response {
    let offset = (req.page - 1) * req.per_page;
    let cap = sim.config.lock().unwrap().offset_cap;
    if let Some(kind) = keyset_type
        && cap > 0
        && offset > cap
    {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": format!("Offset pagination has a maximum allowed offset of {cap} for requests that return objects of type {kind}. Remaining records can be retrieved using keyset pagination.")}),
        );
    }
    let start = (offset as usize).min(total);
    let end = (start + req.per_page as usize).min(total);
    let items = render(start..end);
    let total_pages = (total as u64).div_ceil(req.per_page).max(1);
    let has_next = (end as u64) < total as u64;
    let mut headers = HeaderMap::new();
    headers.extend([
        header("x-page", req.page),
        header("x-per-page", req.per_page),
        header(
            "x-next-page",
            if has_next {
                (req.page + 1).to_string()
            } else {
                String::new()
            },
        ),
        header(
            "x-prev-page",
            if req.page > 1 {
                (req.page - 1).to_string()
            } else {
                String::new()
            },
        ),
    ]);
    let small = total <= 10_000;
    if small {
        headers.extend([
            header("x-total", total),
            header("x-total-pages", total_pages),
        ]);
    }
    let pp = req.per_page.to_string();
    let mut links = Vec::new();
    if req.page > 1 {
        links.push(format!(
            "<{}>; rel=\"prev\"",
            req.link(
                sim,
                &[
                    ("page", (req.page - 1).to_string()),
                    ("per_page", pp.clone())
                ]
            )
        ));
    }
    if has_next {
        links.push(format!(
            "<{}>; rel=\"next\"",
            req.link(
                sim,
                &[
                    ("page", (req.page + 1).to_string()),
                    ("per_page", pp.clone())
                ]
            )
        ));
    }
    links.push(format!(
        "<{}>; rel=\"first\"",
        req.link(sim, &[("page", "1".into()), ("per_page", pp.clone())])
    ));
    if small {
        links.push(format!(
            "<{}>; rel=\"last\"",
            req.link(sim, &[("page", total_pages.to_string()), ("per_page", pp)])
        ));
    }
    headers.insert("link", links.join(", ").parse().expect("valid header"));
    (StatusCode::OK, headers, Json(items)).into_response()
}

/// How a keyset list encodes its position.
pub(crate) enum Cursor {
    /// `id_after=N` (projects).
    IdAfter,
    /// An opaque `cursor` (users).
    Opaque,
}

fn encode_cursor(id: u64) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(format!("{{\"id\":\"{id}\",\"_kd\":\"n\"}}"))
}

/// The id an opaque keyset cursor points after (`None` for a cursor that is not ours).
pub(crate) fn cursor_id(c: &str) -> Option<u64> {
    decode_cursor(c)
}

fn decode_cursor(c: &str) -> Option<u64> {
    let bytes = base64::engine::general_purpose::URL_SAFE.decode(c).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("id")?.as_str()?.parse().ok()
}

/// A keyset page over ids sorted ascending (or descending with `sort=desc`).
pub(crate) fn keyset(
    sim: &Sim,
    req: &PageRequest,
    ids: &[u64],
    cursor: Cursor,
    render: impl FnOnce(&[u64]) -> Vec<Value>,
) -> Response {
    if req.param("order_by").unwrap_or("id") != "id" {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            json!({"error": "Keyset pagination is not supported for this order. Use order_by=id."}),
        );
    }
    let desc = req.param("sort") == Some("desc");
    let position = match cursor {
        Cursor::IdAfter => req
            .param(if desc { "id_before" } else { "id_after" })
            .and_then(|v| v.parse::<u64>().ok()),
        Cursor::Opaque => match req.param("cursor") {
            None => None,
            Some(c) => match decode_cursor(c) {
                Some(id) => Some(id),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        json!({"error": "cursor is invalid"}),
                    );
                }
            },
        },
    };
    // `ids` is ascending.
    let selected: Vec<u64> = if desc {
        let end = position.map_or(ids.len(), |p| ids.partition_point(|&i| i < p));
        ids[..end]
            .iter()
            .rev()
            .take(req.per_page as usize + 1)
            .copied()
            .collect()
    } else {
        let start = position.map_or(0, |p| ids.partition_point(|&i| i <= p));
        ids[start..]
            .iter()
            .take(req.per_page as usize + 1)
            .copied()
            .collect()
    };
    let has_next = selected.len() > req.per_page as usize;
    let page = &selected[..selected.len().min(req.per_page as usize)];
    let mut headers = HeaderMap::new();
    if has_next && let Some(last) = page.last() {
        let set: Vec<(&str, String)> = match cursor {
            Cursor::IdAfter => vec![(
                if desc { "id_before" } else { "id_after" },
                last.to_string(),
            )],
            Cursor::Opaque => vec![("cursor", encode_cursor(*last))],
        };
        headers.insert(
            "link",
            format!("<{}>; rel=\"next\"", req.link(sim, &set))
                .parse()
                .expect("valid header"),
        );
    }
    (StatusCode::OK, headers, Json(Value::Array(render(page)))).into_response()
}
