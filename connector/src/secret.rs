//! A credential that never prints itself.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A GitLab personal access token (or any other credential).
///
/// `Debug` and `Display` print `[redacted]`; the value is only reachable through
/// [`Secret::expose`], which makes every place that handles the raw value easy to find.
/// It deliberately implements no `Serialize`, so it cannot end up in a result or snapshot.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value. Only the HTTP layer and the token-file writer should call this.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A URL made safe to print: its userinfo (user and password) and its query (where
/// `private_token=` and similar live) are replaced by `[redacted]`, whether or not the text
/// parses as a URL. Every URL the connector or the worker prints passes here.
pub fn redact_url(url: &str) -> String {
    let url = url.trim();
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => ("", url),
    };
    // The last `@` ends the userinfo even when the password holds `@`, `#`, `?` or `/`
    // unencoded; an `@` later in the URL only makes this redact more than it must.
    let (userinfo, rest) = match rest.rfind('@') {
        Some(at) => ("[redacted]@", &rest[at + 1..]),
        None => ("", rest),
    };
    let rest = match rest.find(['?', '#']) {
        Some(q) => format!("{}?[redacted]", &rest[..q]),
        None => rest.to_string(),
    };
    format!("{scheme}{userinfo}{rest}")
}

/// Prefixes of GitLab's token formats (personal, OAuth, runner, deploy, pipeline trigger, CI
/// build, incoming mail, service account OAuth, feed tokens).
const TOKEN_PREFIXES: [&str; 9] = [
    "glpat-", "gloas-", "glrt-", "gldt-", "glptt-", "glcbt-", "glimt-", "glsoat-", "glft-",
];

/// Text from GitLab or a proxy, made safe to keep in results, logs and snapshots: anything
/// shaped like a GitLab token, and `secret` itself where given, is replaced by `[redacted]`.
pub fn scrub(text: &str, secret: Option<&str>) -> String {
    let mut out = match secret.filter(|s| s.len() >= 8) {
        Some(s) if text.contains(s) => text.replace(s, "[redacted]"),
        _ => text.to_string(),
    };
    for prefix in TOKEN_PREFIXES {
        let mut from = 0;
        while let Some(pos) = out[from..].find(prefix).map(|p| p + from) {
            let body_start = pos + prefix.len();
            let mut body_len = out[body_start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.'))
                .unwrap_or(out.len() - body_start);
            // Routable tokens contain dots; a sentence's full stop after one does not belong.
            while body_len > 0 && out[body_start..body_start + body_len].ends_with('.') {
                body_len -= 1;
            }
            if body_len >= 8 {
                out.replace_range(pos..body_start + body_len, "[redacted]");
                from = pos + "[redacted]".len();
            } else {
                from = body_start;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_and_queries() {
        assert_eq!(
            redact_url("nats://worker:s3cret@nats.example.com:4222"),
            "nats://[redacted]@nats.example.com:4222"
        );
        assert_eq!(
            redact_url("https://gitlab.example.com/api/v4?private_token=glpat-xyz"),
            "https://gitlab.example.com/api/v4?[redacted]"
        );
        // Not a URL the parser accepts (an unencoded `#` and `@` in the password): still redacted.
        assert_eq!(
            redact_url("postgres://w:p@ss#word@db:5432/gitlab"),
            "postgres://[redacted]@db:5432/gitlab"
        );
        assert_eq!(
            redact_url("sqlite://x.db?mode=rwc"),
            "sqlite://x.db?[redacted]"
        );
        assert_eq!(redact_url("https://gitlab.com"), "https://gitlab.com");
    }

    #[test]
    fn token_shaped_text_is_scrubbed() {
        assert_eq!(
            scrub(
                "bad token glpat-abcdefgh12345678_x. and gloas-XYZ0123456789",
                None
            ),
            "bad token [redacted]. and [redacted]"
        );
        assert_eq!(scrub("glpat-short", None), "glpat-short");
        assert_eq!(
            scrub(
                "proxy echoed sim-secret-token-1 here",
                Some("sim-secret-token-1")
            ),
            "proxy echoed [redacted] here"
        );
    }

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("test-supersecretvalue");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "test-supersecretvalue");
    }
}
