//! The instance's base URL and how API paths are built on it.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use url::Url;

use crate::error::Error;

/// Everything but unreserved characters is encoded, and `.` too: GitLab resolves a path with a
/// literal dot as a format suffix or a rename redirect and answers 404 (docs/gitlab.md, "Errors").
const PATH_SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

/// Encodes one path segment: `group/sub.project` → `group%2Fsub%2Eproject`.
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

/// An instance URL such as `https://gitlab.com` or `https://host/gitlab` (path prefix allowed).
#[derive(Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// The instance root without a trailing slash, e.g. `https://host/gitlab`.
    instance: String,
    /// `instance` + `/api/v4`.
    api: String,
    /// `api` parsed once: endpoints only set the path (no host parsing per request).
    api_url: Url,
    origin: url::Origin,
}

impl BaseUrl {
    /// Accepts the instance URL with or without a trailing slash or an `/api/v4` suffix, so
    /// `/api/v4` is always added exactly once.
    pub fn parse(input: &str) -> Result<Self, Error> {
        let invalid = |reason: &str| Error::InvalidBaseUrl {
            url: redact_userinfo(input),
            reason: reason.to_string(),
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(invalid(
                "it is empty; set GITLAB_URL to e.g. https://gitlab.com",
            ));
        }
        let url = Url::parse(trimmed).map_err(|e| {
            invalid(&format!(
                "{e}; expected an absolute URL such as https://gitlab.com"
            ))
        })?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(invalid("the scheme must be https (or http)"));
        }
        if url.host_str().is_none() {
            return Err(invalid("it has no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "it contains credentials; put the token in GITLAB_TOKEN or GITLAB_TOKEN_FILE instead",
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid("it must not have a query or fragment"));
        }
        let mut path = url.path().trim_end_matches('/').to_string();
        if let Some(stripped) = path.strip_suffix("/api/v4") {
            path = stripped.to_string();
        }
        let mut root = url.clone();
        root.set_path(&path);
        let instance = root.as_str().trim_end_matches('/').to_string();
        let api = format!("{instance}/api/v4");
        let api_url = Url::parse(&api).map_err(|e| invalid(&e.to_string()))?;
        Ok(Self {
            api,
            api_url,
            origin: url.origin(),
            instance,
        })
    }

    /// The instance root, e.g. `https://host/gitlab`.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The API root, e.g. `https://host/gitlab/api/v4`.
    pub fn api(&self) -> &str {
        &self.api
    }

    pub fn is_gitlab_com(&self) -> bool {
        matches!(&self.origin, url::Origin::Tuple(_, url::Host::Domain(h), _) if h == "gitlab.com")
    }

    /// `path` is an already-encoded API path starting with `/`, e.g. `/groups/a%2Fb/members`.
    pub fn endpoint(&self, path: &str) -> Result<Url, Error> {
        debug_assert!(path.starts_with('/'));
        if path.contains(['?', '#']) {
            return Err(Error::InvalidConfig(format!(
                "could not build a URL for {path}: a path cannot hold a query or fragment"
            )));
        }
        let mut url = self.api_url.clone();
        url.set_path(&format!("{}{}", self.api_url.path(), path));
        Ok(url)
    }

    /// A `Link` URL from GitLab is followed verbatim when it points at this instance. When a
    /// misconfigured `external_url` makes GitLab advertise another origin, its path and query are
    /// re-based on ours instead: the token is never sent to a host the operator did not name.
    pub fn follow(&self, link: &str) -> Option<Url> {
        let url = Url::parse(link).ok()?;
        if url.origin() == self.origin {
            return Some(url);
        }
        tracing::warn!(
            "GitLab's Link header points at another origin; following its path on the configured GITLAB_URL"
        );
        let mut rebased = Url::parse(&self.instance).ok()?;
        rebased.set_path(url.path());
        rebased.set_query(url.query());
        Some(rebased)
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BaseUrl({})", self.instance)
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.instance)
    }
}

fn redact_userinfo(input: &str) -> String {
    crate::secret::redact_url(input)
}

/// A group, project or user named by numeric id or by full path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdOrPath {
    Id(u64),
    Path(String),
}

impl IdOrPath {
    /// The encoded path segment. Numeric ids are preferred: they survive renames (no 301).
    pub fn segment(&self) -> String {
        match self {
            IdOrPath::Id(id) => id.to_string(),
            IdOrPath::Path(p) => encode_segment(p),
        }
    }

    /// Parses `"42"` as an id and anything else as a path.
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        match s.parse::<u64>() {
            Ok(id) => IdOrPath::Id(id),
            Err(_) => IdOrPath::Path(s.trim_matches('/').to_string()),
        }
    }
}

impl From<u64> for IdOrPath {
    fn from(id: u64) -> Self {
        IdOrPath::Id(id)
    }
}

impl From<&str> for IdOrPath {
    fn from(s: &str) -> Self {
        IdOrPath::parse(s)
    }
}

impl From<String> for IdOrPath {
    fn from(s: String) -> Self {
        IdOrPath::parse(&s)
    }
}

impl fmt::Display for IdOrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdOrPath::Id(id) => write!(f, "{id}"),
            IdOrPath::Path(p) => f.write_str(p),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_v4_is_added_once() {
        for input in [
            "https://gitlab.com",
            "https://gitlab.com/",
            "https://gitlab.com/api/v4",
            "https://gitlab.com/api/v4/",
        ] {
            let b = BaseUrl::parse(input).unwrap();
            assert_eq!(b.api(), "https://gitlab.com/api/v4", "{input}");
            assert!(b.is_gitlab_com());
        }
    }

    #[test]
    fn path_prefix_is_kept() {
        let b = BaseUrl::parse("https://git.example.com/gitlab/").unwrap();
        assert_eq!(b.instance(), "https://git.example.com/gitlab");
        assert_eq!(
            b.endpoint("/groups/7/members").unwrap().as_str(),
            "https://git.example.com/gitlab/api/v4/groups/7/members"
        );
        assert!(!b.is_gitlab_com());
        let with_api = BaseUrl::parse("http://127.0.0.1:8080/gitlab/api/v4").unwrap();
        assert_eq!(with_api.api(), "http://127.0.0.1:8080/gitlab/api/v4");
    }

    #[test]
    fn bad_urls_are_explained_without_credentials() {
        let e = BaseUrl::parse("https://user:test-secret@gitlab.example.com")
            .unwrap_err()
            .to_string();
        assert!(e.contains("credentials"), "{e}");
        assert!(!e.contains("test-secret"), "{e}");
        let e = BaseUrl::parse("https://gitlab.example.com/?private_token=glpat-querysecret01")
            .unwrap_err()
            .to_string();
        assert!(e.contains("query"), "{e}");
        assert!(
            !e.contains("querysecret01"),
            "the query's token is printed: {e}"
        );
        assert!(BaseUrl::parse("gitlab.com").is_err());
        assert!(BaseUrl::parse("ftp://gitlab.com").is_err());
        assert!(BaseUrl::parse("").is_err());
    }

    #[test]
    fn paths_are_encoded_including_dots() {
        assert_eq!(encode_segment("group/sub.project"), "group%2Fsub%2Eproject");
        assert_eq!(encode_segment("a-b_c~d"), "a-b_c~d");
        assert_eq!(encode_segment("we ird+é"), "we%20ird%2B%C3%A9");
        assert_eq!(IdOrPath::parse("42").segment(), "42");
        assert_eq!(IdOrPath::parse("/org/team/").segment(), "org%2Fteam");
        let b = BaseUrl::parse("https://gitlab.com").unwrap();
        assert_eq!(
            b.endpoint(&format!(
                "/projects/{}",
                IdOrPath::parse("org/my.app").segment()
            ))
            .unwrap()
            .as_str(),
            "https://gitlab.com/api/v4/projects/org%2Fmy%2Eapp"
        );
        // Queries go in the request's query pairs, never in the path.
        assert!(b.endpoint("/users?search=x").is_err());
    }

    #[test]
    fn foreign_link_origins_are_rebased() {
        let b = BaseUrl::parse("https://git.example.com/gitlab").unwrap();
        let same = b
            .follow("https://git.example.com/gitlab/api/v4/projects?id_after=5&pagination=keyset")
            .unwrap();
        assert_eq!(same.query(), Some("id_after=5&pagination=keyset"));
        let other = b
            .follow("http://internal:8080/gitlab/api/v4/users?cursor=abc")
            .unwrap();
        assert_eq!(
            other.as_str(),
            "https://git.example.com/gitlab/api/v4/users?cursor=abc"
        );
    }
}
