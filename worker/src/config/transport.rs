//! Transports that carry secrets in the clear, warned about at start.

use super::Settings;
use crate::redact::redact_url;

impl Settings {
    /// Transports that send secrets in the clear: an `http://` GitLab (the token travels in
    /// every request) or NATS without TLS to a host that is not this machine. Logged at start.
    pub fn cleartext_warnings(&self) -> Vec<String> {
        let gitlab: Vec<(&str, String)> = self
            .connectors
            .values()
            .map(|c| (c.id.as_str(), c.url.to_string()))
            .collect();
        let tls = self.nats.url.starts_with("tls://") || self.nats.tls_ca_file.is_some();
        cleartext_warnings(&gitlab, &self.nats.url, tls)
    }
}

fn cleartext_warnings(gitlab: &[(&str, String)], nats: &str, nats_tls: bool) -> Vec<String> {
    let mut out = Vec::new();
    for (id, url) in gitlab {
        if url.starts_with("http://") {
            out.push(format!(
                "connector {id:?}: GITLAB_URL {} is plain http: the token is sent unencrypted; use https",
                redact_url(url)
            ));
        }
    }
    if !nats_tls && !is_loopback_url(nats) {
        out.push(format!(
            "NATS_URL {} is not TLS and not on this machine: jobs, results and NATS credentials cross the network unencrypted; use tls://",
            redact_url(nats)
        ));
    }
    out
}

/// Whether every host of a (possibly comma-separated) NATS URL is on this machine.
fn is_loopback_url(urls: &str) -> bool {
    urls.split(',').all(|u| {
        let rest = u.trim().split("://").nth(1).unwrap_or(u.trim());
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.split(']').next())
            .unwrap_or_else(|| host.split(':').next().unwrap_or(""));
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

#[cfg(test)]
mod tests {
    use super::{cleartext_warnings, is_loopback_url};

    #[test]
    fn cleartext_transports_are_warned_about_without_their_secrets() {
        let w = cleartext_warnings(
            &[
                ("corp", "http://gitlab.internal".into()),
                ("com", "https://gitlab.com".into()),
            ],
            "nats://u:natssecret@nats.example.com:4222",
            false,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("corp") && w[0].contains("plain http"));
        assert!(w[1].contains("not TLS") && !w[1].contains("natssecret"));
        assert!(cleartext_warnings(&[], "nats://127.0.0.1:4222", false).is_empty());
        assert!(cleartext_warnings(&[], "nats://nats.example.com:4222", true).is_empty());
    }

    #[test]
    fn only_this_machine_counts_as_loopback() {
        assert!(is_loopback_url("nats://127.0.0.1:4222"));
        assert!(is_loopback_url("nats://u:p@localhost:4222"));
        assert!(is_loopback_url("nats://[::1]:4222"));
        assert!(!is_loopback_url("nats://nats.example.com:4222"));
        assert!(!is_loopback_url(
            "nats://127.0.0.1:4222,nats://10.0.0.2:4222"
        ));
    }
}
