//! Pending invitations of email addresses to groups and projects.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use futures::TryStreamExt;
use futures::stream::BoxStream;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::common::{AccessLevel, date_or_timestamp, lenient_timestamp};
use super::members::Source;
use crate::client::{Client, ListSpec, PageItem, Request, encode_segment};
use crate::error::{Error, Route};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    #[serde(default)]
    pub id: Option<u64>,
    pub invite_email: String,
    pub access_level: AccessLevel,
    #[serde(default, with = "date_or_timestamp")]
    pub expires_at: Option<NaiveDate>,
    #[serde(default, with = "lenient_timestamp")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub user_name: Option<String>,
    #[serde(default)]
    pub created_by_name: Option<String>,
}

impl PageItem for Invitation {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateInvitation {
    pub email: String,
    pub access_level: AccessLevel,
    pub expires_at: Option<NaiveDate>,
    pub member_role_id: Option<u64>,
}

/// What a successful `POST …/invitations` said.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InvitationAccepted {
    /// Addresses queued for administrator approval instead of being invited.
    pub queued: BTreeMap<String, String>,
}

/// GitLab answers 201 even when entries failed; the body says `"status": "error"` with a
/// message per address (docs/gitlab.md, "Invitations").
pub(crate) fn parse_invitation_body(
    route: Route,
    body: &[u8],
) -> Result<InvitationAccepted, Error> {
    let v: Value = serde_json::from_slice(body).map_err(|e| Error::Decode {
        route,
        message: e.to_string(),
    })?;
    let to_map = |v: Option<&Value>| -> BTreeMap<String, String> {
        match v {
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), String::from),
                    )
                })
                .collect(),
            Some(Value::String(s)) => BTreeMap::from([(String::new(), s.clone())]),
            Some(other) => BTreeMap::from([(String::new(), other.to_string())]),
            None => BTreeMap::new(),
        }
    };
    if v.get("status").and_then(Value::as_str) == Some("error") {
        let mut errors = to_map(v.get("message"));
        if errors.is_empty() {
            errors.insert(
                String::new(),
                "GitLab reported an error without details".into(),
            );
        }
        return Err(Error::InvitationErrors { route, errors });
    }
    Ok(InvitationAccepted {
        queued: to_map(v.get("queued_users")),
    })
}

impl Client {
    /// `GET …/invitations`: pending invitations, optionally filtered by an exact email.
    pub fn invitations(
        &self,
        source: &Source,
        email: Option<&str>,
    ) -> BoxStream<'static, Result<Invitation, Error>> {
        let (t, base) = match source {
            Source::Group(r) => (
                "/groups/:id/invitations",
                format!("/groups/{}", r.segment()),
            ),
            Source::Project(r) => (
                "/projects/:id/invitations",
                format!("/projects/{}", r.segment()),
            ),
        };
        let mut req = Request::get(t, format!("{base}/invitations"));
        if let Some(e) = email {
            req = req.query("query", e);
        }
        crate::client::items_stream(self, ListSpec::offset(req))
    }

    async fn pending_invitation(
        &self,
        source: &Source,
        email: &str,
    ) -> Result<Option<Invitation>, Error> {
        let found: Vec<Invitation> = self.invitations(source, Some(email)).try_collect().await?;
        Ok(found
            .into_iter()
            .find(|i| i.invite_email.eq_ignore_ascii_case(email)))
    }

    /// `POST …/invitations`. A 201 with per-address errors is [`Error::InvitationErrors`].
    /// An email of an existing member *updates* that member (GitLab's behaviour): callers that
    /// care read the member first.
    pub async fn invite(
        &self,
        source: &Source,
        inv: &CreateInvitation,
    ) -> Result<InvitationAccepted, Error> {
        let (t, base) = match source {
            Source::Group(r) => (
                "/groups/:id/invitations",
                format!("/groups/{}", r.segment()),
            ),
            Source::Project(r) => (
                "/projects/:id/invitations",
                format!("/projects/{}", r.segment()),
            ),
        };
        let mut body = json!({ "email": inv.email, "access_level": inv.access_level });
        if let Some(d) = inv.expires_at {
            body["expires_at"] = json!(d.format("%Y-%m-%d").to_string());
        }
        if let Some(r) = inv.member_role_id {
            body["member_role_id"] = json!(r);
        }
        let req = Request::new(Method::POST, t, format!("{base}/invitations")).json(body);
        let route = req.route;
        self.write_with_reread(
            req,
            |r| parse_invitation_body(route, &r.body),
            || async {
                Ok(self
                    .pending_invitation(source, &inv.email)
                    .await?
                    .map(|_| InvitationAccepted::default()))
            },
        )
        .await
    }

    /// `DELETE …/invitations/:email`.
    pub async fn cancel_invitation(&self, source: &Source, email: &str) -> Result<(), Error> {
        let (t, base) = match source {
            Source::Group(r) => (
                "/groups/:id/invitations/:email",
                format!("/groups/{}", r.segment()),
            ),
            Source::Project(r) => (
                "/projects/:id/invitations/:email",
                format!("/projects/{}", r.segment()),
            ),
        };
        let req = Request::new(
            Method::DELETE,
            t,
            format!("{base}/invitations/{}", encode_segment(email)),
        );
        self.write_with_reread(
            req,
            |_| Ok(()),
            || async {
                Ok(self
                    .pending_invitation(source, email)
                    .await?
                    .is_none()
                    .then_some(()))
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R: Route = Route::new("POST", "/groups/:id/invitations");

    #[test]
    fn error_status_in_a_201_body_is_an_error() {
        let e = parse_invitation_body(
            R,
            br#"{"status":"error","message":{"a@example.com":"Invite email has already been taken","b@example.com":"Expires at cannot be a date in the past"}}"#,
        )
        .unwrap_err();
        match e {
            Error::InvitationErrors { errors, .. } => {
                assert_eq!(
                    errors["a@example.com"],
                    "Invite email has already been taken"
                );
                assert_eq!(errors.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_invitation_body(R, br#"{"status":"success"}"#).unwrap(),
            InvitationAccepted::default()
        );
    }
}
