//! `gitlab-worker config show`: every connector's effective settings and policy, and the
//! worker-wide settings, as JSON. No token, no password: URLs pass the redaction, tokens are
//! named by where they come from.

use std::path::Path;

use serde_json::{Value, json};

use super::{exit, fail};
use crate::config::{ConnectorSettings, Settings, TokenSource};
use crate::redact::redact_url;

fn token_source(t: &TokenSource) -> Value {
    match t {
        TokenSource::Env(name) => json!({"env": name}),
        TokenSource::EnvNamed(name) => json!({"env": name}),
        TokenSource::File(p) => json!({"file": p.display().to_string()}),
    }
}

fn connector(c: &ConnectorSettings) -> Value {
    let p = &c.policy;
    json!({
        "id": c.id.as_str(),
        "url": redact_url(&c.url.to_string()),
        "token": token_source(&c.token_source),
        "scope": c.scope,
        "instance": c.instance.map(|i| format!("{i:?}")),
        "rate_limit_per_minute": c.rate_limit_per_minute,
        "allow_create_users": c.allow_create_users,
        "rotate_when_days_left": c.rotate_when_days_left,
        "webhook_secret_file": c.webhook_secret_file.as_ref().map(|p| p.display().to_string()),
        "policy": {
            "max_grant_level": p.max_grant_level.name().unwrap_or("custom"),
            "max_jit_seconds": p.max_jit_seconds,
            "allow_permanent_grants": p.allow_permanent_grants,
            "account_actions": p.account_actions.iter().map(|a| a.as_str()).collect::<Vec<_>>(),
            "protected_users": p.protected_users,
            "always_protected": ["administrators", "the token's own user", "bots and service accounts"],
        },
    })
}

pub fn run(config: Option<&Path>) -> u8 {
    let s = match Settings::load(config, false) {
        Ok(s) => s,
        Err(e) => return fail(&e.into()),
    };
    let shown = json!({
        "database_url": redact_url(&s.database_url),
        "nats": {
            "url": redact_url(&s.nats.url),
            "subject_prefix": s.nats.subject_prefix,
            "auth": if s.nats.creds_file.is_some() { "creds file" }
                else if s.nats.user.is_some() { "user and password" }
                else if s.nats.token.is_some() { "token" }
                else { "none" },
            "ack_wait_seconds": s.nats.ack_wait.as_secs(),
            "max_deliver": s.nats.max_deliver,
            "stream_replicas": s.nats.stream_replicas,
        },
        "http_listen": s.http_listen.to_string(),
        "hooks_listen": s.hooks_listen.map(|a| a.to_string()),
        "reconcile_interval_seconds": s.reconcile_interval.map_or(0, |d| d.as_secs()),
        "audit_poll_seconds": s.audit_poll_interval.map_or(0, |d| d.as_secs()),
        "hook_check_interval_seconds": s.hook_check_interval.as_secs(),
        "evidence_signing_key_file": s.evidence_signing_key_file.as_ref().map(|p| p.display().to_string()),
        "concurrency": {"provision": s.pools.provision, "sync": s.pools.sync},
        "shutdown_grace_seconds": s.shutdown_grace.as_secs(),
        "spool_dir": s.spool_root.display().to_string(),
        "connectors": s.connectors.values().map(connector).collect::<Vec<_>>(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&shown).expect("plain data serializes")
    );
    exit::OK
}
