//! Audit events (Premium): a group's (`GET /groups/:id/audit_events`, its owners) or the
//! instance's (`GET /audit_events`, administrators, self-managed). The live-access poll reads
//! them for what no webhook reports: shares.

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use serde::Deserialize;

use super::common::lenient_timestamp;
use crate::client::{Client, IdOrPath, ListSpec, PageItem, Request};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct AuditEvent {
    pub id: u64,
    #[serde(default)]
    pub entity_id: Option<u64>,
    #[serde(default)]
    pub entity_type: Option<String>,
    #[serde(default)]
    pub details: serde_json::Value,
    #[serde(default, with = "lenient_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub event_name: Option<String>,
    #[serde(default)]
    pub event_type: Option<String>,
}

impl PageItem for AuditEvent {}

impl AuditEvent {
    /// The event's type name (`details.event_name` in the REST API, `event_name` or
    /// `event_type` in other renderings).
    pub fn name(&self) -> Option<&str> {
        self.details
            .get("event_name")
            .and_then(|v| v.as_str())
            .or(self.event_name.as_deref())
            .or(self.event_type.as_deref())
    }

    /// `details.target_id` when it is a number (GitLab sends numbers, or paths for some types).
    pub fn target_id(&self) -> Option<u64> {
        let t = self.details.get("target_id")?;
        t.as_u64().or_else(|| t.as_str()?.parse().ok())
    }

    pub fn target_type(&self) -> Option<&str> {
        self.details.get("target_type").and_then(|v| v.as_str())
    }
}

impl Client {
    /// Audit events created at or after `after`: a group's, or the instance's for `None`.
    pub fn audit_events(
        &self,
        group: Option<&IdOrPath>,
        after: DateTime<Utc>,
    ) -> BoxStream<'static, Result<AuditEvent, Error>> {
        let req = match group {
            Some(g) => Request::get(
                "/groups/:id/audit_events",
                format!("/groups/{}/audit_events", g.segment()),
            ),
            None => Request::get("/audit_events", "/audit_events"),
        }
        .query("created_after", after.format("%Y-%m-%dT%H:%M:%SZ"));
        crate::client::items_stream(self, ListSpec::offset(req))
    }
}
