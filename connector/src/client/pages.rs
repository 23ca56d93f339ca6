//! Pagination as one async stream of pages, whatever GitLab's strategy.
//!
//! - Offset (`per_page=100`): follow `Link rel="next"`, else `X-Next-Page`; stop on neither or an
//!   empty page. `X-Total`/`X-Total-Pages` are never read: GitLab omits them above 10,000
//!   records (docs/gitlab.md, "Pagination").
//! - Keyset (`pagination=keyset&order_by=id&sort=asc`): follow `Link rel="next"` verbatim.
//! - A 405 at the maximum offset switches an offset walk to keyset where the endpoint supports
//!   it, resuming after the last id read; elsewhere it is an error.
//!
//! One page is held at a time, so memory is bounded by the consumer, not the list.
//!
//! A walk always ends: a next page that was read before (a `Link` or `X-Next-Page` pointing
//! back) is `Error::PageLoop`, and a list that grows past what its `X-Total` allows, or past
//! [`MAX_PAGES`], is `Error::ListTooLong`. Either ends the read of that list with a clear error
//! (a sync records it and its snapshot is partial), never an endless loop.

use std::collections::HashSet;

use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use reqwest::header::HeaderMap;
use serde::de::DeserializeOwned;
use url::Url;

use super::{Client, Repeat, Request};
use crate::error::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Offset,
    Keyset,
}

/// How a keyset-capable list resumes after switching from offset at the offset cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resume {
    /// The endpoint filters with `id_after` (`GET /projects`).
    IdAfter,
    /// Restart in keyset order and drop the ids already yielded (`GET /users`).
    SkipThrough,
}

/// Items of paginated lists; keyset-capable ones expose their id for resuming.
pub trait PageItem {
    fn page_id(&self) -> Option<u64> {
        None
    }
}

impl PageItem for serde_json::Value {
    fn page_id(&self) -> Option<u64> {
        self.get("id").and_then(serde_json::Value::as_u64)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ListSpec {
    pub request: Request,
    pub strategy: Strategy,
    /// Set for lists that support keyset ordered by id.
    pub keyset: Option<Resume>,
}

impl ListSpec {
    pub fn offset(request: Request) -> Self {
        Self {
            request,
            strategy: Strategy::Offset,
            keyset: None,
        }
    }

    pub fn keyset(request: Request, resume: Resume) -> Self {
        Self {
            request,
            strategy: Strategy::Keyset,
            keyset: Some(resume),
        }
    }
}

/// No list GitLab serves is longer than this many pages (ten million items at 100 a page).
pub const MAX_PAGES: u64 = 100_000;

enum Next {
    First,
    Url(Url),
    Done,
}

struct Walk {
    client: Client,
    spec: ListSpec,
    next: Next,
    last_id: Option<u64>,
    skip_through: Option<u64>,
    /// Pages already read (their URLs), to stop a pagination that loops.
    seen: HashSet<String>,
    /// Items read so far.
    read: u64,
}

impl Walk {
    fn first_request(&self) -> Request {
        let mut req = self.spec.request.clone();
        req.query
            .push(("per_page", self.client.config().per_page.to_string()));
        if self.spec.strategy == Strategy::Keyset {
            req.query
                .retain(|(k, _)| !matches!(*k, "order_by" | "sort" | "pagination" | "page"));
            req.query.push(("pagination", "keyset".into()));
            req.query.push(("order_by", "id".into()));
            req.query.push(("sort", "asc".into()));
            if self.spec.keyset == Some(Resume::IdAfter)
                && let Some(id) = self.last_id
            {
                req.query.push(("id_after", id.to_string()));
            }
        }
        req
    }

    async fn step<T: DeserializeOwned + PageItem>(
        mut self,
    ) -> Result<Option<(Vec<T>, Self)>, Error> {
        loop {
            let req = match &self.next {
                Next::Done => return Ok(None),
                Next::First => self.first_request(),
                Next::Url(url) => {
                    let mut req = self.spec.request.clone();
                    req.url = Some(url.clone());
                    req
                }
            };
            let route = req.route;
            let resp = match self.client.execute(req, Repeat::Idempotent).await {
                Ok(r) => r,
                Err(Error::OffsetLimit { message, .. })
                    if self.spec.strategy == Strategy::Offset && self.spec.keyset.is_some() =>
                {
                    tracing::info!(%route, %message, "offset cap reached; continuing with keyset pagination");
                    self.spec.strategy = Strategy::Keyset;
                    if self.spec.keyset == Some(Resume::SkipThrough) {
                        self.skip_through = self.last_id;
                    }
                    self.next = Next::First;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut items: Vec<T> = resp.json(route)?;
            let raw_len = items.len();
            self.read += raw_len as u64;
            self.seen.insert(resp.url.to_string());
            if self.seen.len() as u64 > MAX_PAGES {
                return Err(Error::ListTooLong {
                    route,
                    read: self.read,
                    limit: MAX_PAGES * u64::from(self.client.config().per_page),
                });
            }
            // `X-Total` (sent up to 10,000 records): a list may grow while it is read, by a page
            // at most between two reads; anything beyond is a server that does not stop.
            if let Some(total) = header_u64(&resp.headers, "x-total") {
                let slack = u64::from(self.client.config().per_page);
                if self.read > total.saturating_add(slack) {
                    return Err(Error::ListTooLong {
                        route,
                        read: self.read,
                        limit: total,
                    });
                }
            }
            if let Some(skip) = self.skip_through {
                items.retain(|i| i.page_id().is_none_or(|id| id > skip));
            }
            if let Some(id) = items.iter().filter_map(PageItem::page_id).max() {
                self.last_id = Some(self.last_id.map_or(id, |l| l.max(id)));
            }
            self.next = if raw_len == 0 {
                Next::Done
            } else {
                match next_link(&resp.headers).and_then(|l| self.client.base_url().follow(&l)) {
                    Some(url) => Next::Url(url),
                    None if self.spec.strategy == Strategy::Offset => {
                        match next_page_header(&resp.headers) {
                            Some(page) => Next::Url(with_page(&resp.url, page)),
                            None => Next::Done,
                        }
                    }
                    None => Next::Done,
                }
            };
            if let Next::Url(url) = &self.next
                && self.seen.contains(url.as_str())
            {
                return Err(Error::PageLoop {
                    route,
                    page: crate::secret::redact_url(url.as_str()),
                });
            }
            return Ok(Some((items, self)));
        }
    }
}

/// A stream of pages.
pub(crate) fn pages<T>(client: &Client, spec: ListSpec) -> BoxStream<'static, Result<Vec<T>, Error>>
where
    T: DeserializeOwned + PageItem + Send + 'static,
{
    let walk = Walk {
        client: client.clone(),
        spec,
        next: Next::First,
        last_id: None,
        skip_through: None,
        seen: HashSet::new(),
        read: 0,
    };
    stream::try_unfold(walk, |w| w.step::<T>()).boxed()
}

/// A stream of items, one page fetched at a time.
pub(crate) fn items<T>(client: &Client, spec: ListSpec) -> BoxStream<'static, Result<T, Error>>
where
    T: DeserializeOwned + PageItem + Send + 'static,
{
    pages::<T>(client, spec)
        .map_ok(|page| stream::iter(page.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}

/// The `rel="next"` target of a `Link` header (several headers or comma-joined values).
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(value) = value.to_str() else { continue };
        for part in split_links(value) {
            let mut pieces = part.split(';');
            let target = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim();
                p.strip_prefix("rel=")
                    .map(|r| r.trim_matches('"').split_whitespace().any(|r| r == "next"))
                    .unwrap_or(false)
            });
            if is_next && target.starts_with('<') && target.ends_with('>') {
                return Some(target[1..target.len() - 1].to_string());
            }
        }
    }
    None
}

/// Splits a Link header on the commas between entries (not inside `<…>`).
fn split_links(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

fn next_page_header(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("x-next-page")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

fn with_page(url: &Url, page: u64) -> Url {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(k, _)| k != "page")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut next = url.clone();
    {
        let mut q = next.query_pairs_mut();
        q.clear();
        for (k, v) in &pairs {
            q.append_pair(k, v);
        }
        q.append_pair("page", &page.to_string());
    }
    next
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn link_header_next_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            HeaderValue::from_static(
                r#"<https://gitlab.example.com/api/v4/projects?page=1&per_page=3>; rel="prev", <https://gitlab.example.com/api/v4/projects?id_after=5,6&per_page=3>; rel="next", <https://gitlab.example.com/api/v4/projects?page=1>; rel="first""#,
            ),
        );
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://gitlab.example.com/api/v4/projects?id_after=5,6&per_page=3")
        );
        let mut none = HeaderMap::new();
        none.insert(
            reqwest::header::LINK,
            HeaderValue::from_static(r#"<https://x/api/v4/p?page=1>; rel="first""#),
        );
        assert_eq!(next_link(&none), None);
    }

    #[test]
    fn next_page_replaces_the_page_parameter() {
        let u = Url::parse("https://x/api/v4/groups/1/members?per_page=100&page=2").unwrap();
        assert_eq!(
            with_page(&u, 3).as_str(),
            "https://x/api/v4/groups/1/members?per_page=100&page=3"
        );
    }
}
