//! The job envelope: every kind parses; malformed and unknown input is rejected with a message
//! that names the problem, never a panic, and what addresses the answer is salvaged.

use chrono::{TimeZone, Utc};
use gitlab_connector::api::AccessLevel;
use gitlab_connector::client::IdOrPath;
use gitlab_connector::provision::{TargetRef, UserRef};
use gitlab_worker::jobs::deprovision::DeprovisionAction;
use gitlab_worker::jobs::grant::GrantExpiry;
use gitlab_worker::jobs::{
    JobKind, JobParams, JobResult, JobStatus, deprovision, grant, invite, parse_job, revoke,
    rotate, sync,
};
use serde_json::{Value, json};

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap()
}

fn job(kind: &str, params: Value) -> Value {
    json!({"schema": "gitlab-connector.job.v1", "job_id": "req-1", "connector": "default", "kind": kind, "params": params})
}

fn parse(v: &Value) -> Result<gitlab_worker::jobs::Job, gitlab_worker::jobs::Rejection> {
    parse_job(serde_json::to_string(v).unwrap().as_bytes(), now())
}

#[test]
fn every_kind_parses() {
    let grant = parse(&job("grant", json!({"user": {"username": "jdoe"}, "target": {"group": "acme/platform"}, "access_level": "developer", "duration_seconds": 3600}))).unwrap();
    assert_eq!(grant.kind(), JobKind::Grant);
    assert!(!grant.dry_run);
    assert_eq!(
        grant.params,
        JobParams::Grant(grant::Params {
            user: UserRef::Username("jdoe".into()),
            target: TargetRef::Group(IdOrPath::Path("acme/platform".into())),
            access_level: AccessLevel::DEVELOPER,
            expiry: Some(GrantExpiry::Duration(3600)),
            member_role_id: None,
        })
    );
    let at = parse(&job("grant", json!({"user": {"id": 7}, "target": {"project": 42}, "access_level": 40, "expires_at": "2026-11-23T18:00:00+01:00", "member_role_id": 3}))).unwrap();
    assert!(
        matches!(at.params, JobParams::Grant(grant::Params { expiry: Some(GrantExpiry::At(t)), member_role_id: Some(3), .. }) if t == Utc.with_ymd_and_hms(2026, 11, 23, 17, 0, 0).unwrap())
    );
    let sync = parse(&job("sync", json!({}))).unwrap();
    assert_eq!(sync.params, JobParams::Sync(sync::Params { scope: None }));
    let mut no_params = job("sync", json!(null));
    no_params.as_object_mut().unwrap().remove("params");
    assert_eq!(
        parse(&no_params).unwrap().params,
        JobParams::Sync(sync::Params { scope: None })
    );
    let revoke = parse(&job("revoke", json!({"grant_job_id": "req-0"}))).unwrap();
    assert!(matches!(
        revoke.params,
        JobParams::Revoke(revoke::Params::ByGrant { ref grant_job_id }) if grant_job_id.as_str() == "req-0"
    ));
    let revoke = parse(&job(
        "revoke",
        json!({"user": {"email": "j@x.org"}, "target": {"group": 5}}),
    ))
    .unwrap();
    assert!(matches!(
        revoke.params,
        JobParams::Revoke(revoke::Params::ByMembership {
            user: UserRef::Email(_),
            ..
        })
    ));
    let invite = parse(&job("invite", json!({"email": "a@b.co", "target": {"group": "acme"}, "access_level": 30, "expires_at": "2026-12-01"}))).unwrap();
    assert!(matches!(
        invite.params,
        JobParams::Invite(invite::Params {
            expires_at: Some(_),
            ..
        })
    ));
    let deprov = parse(&job("deprovision", json!({"user": {"id": 9}}))).unwrap();
    assert_eq!(
        deprov.params,
        JobParams::Deprovision(deprovision::Params {
            user: UserRef::Id(9),
            actions: vec![
                DeprovisionAction::RemoveMemberships,
                DeprovisionAction::CancelInvitations
            ]
        })
    );
    let deprov = parse(&job(
        "deprovision",
        json!({"user": {"id": 9}, "actions": ["block", "revoke_tokens"]}),
    ))
    .unwrap();
    assert!(
        matches!(deprov.params, JobParams::Deprovision(deprovision::Params { ref actions, .. }) if actions == &vec![DeprovisionAction::Block, DeprovisionAction::RevokeTokens])
    );
    let rotate = parse(&job("rotate_token", json!({"min_days_left": 14}))).unwrap();
    assert_eq!(
        rotate.params,
        JobParams::RotateToken(rotate::Params {
            min_days_left: Some(14)
        })
    );
    let mut dry = job("sync", json!({"scope": "acme"}));
    dry["dry_run"] = json!(true);
    dry["requested_by"] = json!("alice@example.com");
    dry["reason"] = json!("INC-42");
    let dry = parse(&dry).unwrap();
    assert!(dry.dry_run);
    assert_eq!(dry.reason.as_deref(), Some("INC-42"));
}

#[test]
fn thirty_malformed_jobs_are_rejected_with_a_precise_message() {
    let base = || {
        job(
            "grant",
            json!({"user": {"id": 1}, "target": {"group": "g"}, "access_level": 30}),
        )
    };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = base();
        f(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not valid JSON"),
        (b"".to_vec(), "not valid JSON"),
        (b"[1,2]".to_vec(), "must be a JSON object, not an array"),
        (b"\"grant\"".to_vec(), "must be a JSON object, not a string"),
        (with(&|v| { v.as_object_mut().unwrap().remove("schema"); }), "`schema` is missing"),
        (with(&|v| v["schema"] = json!("gitlab-connector.job.v2")), "is not supported"),
        (with(&|v| { v.as_object_mut().unwrap().remove("job_id"); }), "`job_id` is missing"),
        (with(&|v| v["job_id"] = json!("")), "`job_id` is empty"),
        (with(&|v| v["job_id"] = json!("has space")), "Nats-Msg-Id"),
        (with(&|v| v["job_id"] = json!(42)), "`job_id` must be a string, not a number"),
        (with(&|v| { v.as_object_mut().unwrap().remove("connector"); }), "`connector` is missing"),
        (with(&|v| v["connector"] = json!("prod.eu")), "NATS subjects"),
        (with(&|v| v["kind"] = json!("promote")), "`kind` \"promote\" is not a job kind"),
        (with(&|v| { v.as_object_mut().unwrap().remove("kind"); }), "`kind` is missing"),
        (with(&|v| v["dry_run"] = json!("yes")), "`dry_run` must be true or false"),
        (with(&|v| v["dryrun"] = json!(true)), "unknown field `dryrun` in the job envelope"),
        (with(&|v| v["params"] = json!([1])), "`params` must be an object"),
        (with(&|v| v["params"]["acess_level"] = json!(30)), "unknown field `acess_level` in `params` of a grant job"),
        (with(&|v| { v["params"].as_object_mut().unwrap().remove("user"); }), "`user` is missing"),
        (with(&|v| v["params"]["user"] = json!({"id": 1, "username": "x"})), "exactly one of `id`, `username`, `email`"),
        (with(&|v| v["params"]["user"] = json!({"login": "x"})), "unknown field `login` in `user`"),
        (with(&|v| v["params"]["user"] = json!({"id": -3})), "`user.id` must be a positive whole number"),
        (with(&|v| v["params"]["user"] = json!({"email": "not-an-email"})), "is not an email address"),
        (with(&|v| v["params"]["user"] = json!("jdoe")), "`user` must be an object"),
        (with(&|v| { v["params"].as_object_mut().unwrap().remove("target"); }), "`target` is missing"),
        (with(&|v| v["params"]["target"] = json!({"namespace": "g"})), "unknown field `namespace` in `target`"),
        (with(&|v| v["params"]["target"] = json!({"group": "g", "project": "p"})), "exactly one of `group`, `project`"),
        (with(&|v| v["params"]["access_level"] = json!("superuser")), "unknown access level"),
        (with(&|v| v["params"]["access_level"] = json!(60)), "cannot be granted"),
        (with(&|v| { v["params"].as_object_mut().unwrap().remove("access_level"); }), "`access_level` is missing"),
        (with(&|v| { v["params"]["duration_seconds"] = json!(60); v["params"]["expires_at"] = json!("2027-01-01T00:00:00Z"); }), "not both"),
        (with(&|v| v["params"]["duration_seconds"] = json!(0)), "positive whole number"),
        (with(&|v| v["params"]["expires_at"] = json!("tomorrow")), "not an RFC 3339 timestamp"),
        (serde_json::to_vec(&job("revoke", json!({"grant_job_id": "g", "user": {"id": 1}}))).unwrap(), "not both"),
        (serde_json::to_vec(&job("invite", json!({"target": {"group": "g"}, "access_level": 30}))).unwrap(), "`email` is missing"),
        (serde_json::to_vec(&job("invite", json!({"email": "a@b.co", "target": {"group": "g"}, "access_level": 30, "expires_at": "2020-01-01"}))).unwrap(), "is in the past"),
        (serde_json::to_vec(&job("deprovision", json!({"user": {"id": 1}, "actions": ["nuke"]}))).unwrap(), "`actions`: \"nuke\" is not a deprovisioning action"),
        (serde_json::to_vec(&job("deprovision", json!({"user": {"id": 1}, "actions": []}))).unwrap(), "`actions` is empty"),
        (serde_json::to_vec(&job("deprovision", json!({"user": {"id": 1}, "actions": ["block", "block"]}))).unwrap(), "lists \"block\" twice"),
        (serde_json::to_vec(&job("rotate_token", json!({"min_days_left": "soon"}))).unwrap(), "`min_days_left` must be a whole number"),
        (serde_json::to_vec(&job("sync", json!({"scope": ""}))).unwrap(), "`scope` is empty"),
    ];
    assert!(cases.len() >= 30);
    for (bytes, expected) in cases {
        let r = parse_job(&bytes, now()).expect_err(&String::from_utf8_lossy(&bytes));
        assert!(
            r.message.contains(expected),
            "{:?}: {:?} does not mention {expected:?}",
            String::from_utf8_lossy(&bytes),
            r.message
        );
        let result = JobResult::rejected(&r, now(), 1);
        assert_eq!(result.status, JobStatus::Rejected);
        assert_eq!(result.error.as_ref().unwrap().code, "invalid_job");
        assert!(!result.error.as_ref().unwrap().retryable);
    }
}

#[test]
fn a_rejection_keeps_what_addresses_the_answer() {
    let r = parse(&json!({"schema": "gitlab-connector.job.v1", "job_id": "req-9", "connector": "eu", "kind": "grant", "params": {"user": {}}})).unwrap_err();
    assert_eq!(
        (
            r.job_id.as_ref().map(|j| j.as_str()),
            r.connector.as_ref().map(|c| c.as_str()),
            r.kind
        ),
        (Some("req-9"), Some("eu"), Some(JobKind::Grant))
    );
    let result = JobResult::rejected(&r, now(), 2);
    let v = serde_json::to_value(&result).unwrap();
    assert_eq!(v["job_id"], "req-9");
    assert_eq!(v["kind"], "grant");
    assert_eq!(v["attempt"], 2);
    let r = parse_job(b"{\"kind\": 5}", now()).unwrap_err();
    let result = JobResult::rejected(&r, now(), 1);
    assert_eq!(
        (result.connector.as_str(), result.kind.as_str()),
        ("unknown", "invalid")
    );
}

mod schemas {
    use super::*;
    use std::path::{Path, PathBuf};

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
    }

    fn validator(file: &str) -> jsonschema::Validator {
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(root().join(file)).unwrap()).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    }

    fn examples(kind: &str, validity: &str) -> Vec<(String, Value)> {
        let dir = root().join("examples").join(kind).join(validity);
        let mut out: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap(),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(!out.is_empty());
        out
    }

    /// Schema and parser agree: valid examples pass both, invalid ones fail both.
    #[test]
    fn job_examples() {
        let v = validator("gitlab-connector.job.v1.schema.json");
        for (name, value) in examples("job", "valid") {
            let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
            parse(&value).unwrap_or_else(|r| panic!("{name}: {}", r.message));
        }
        for (name, value) in examples("job", "invalid") {
            assert!(!v.is_valid(&value), "{name} passes the schema");
            assert!(parse(&value).is_err(), "{name} passes the parser");
        }
    }

    #[test]
    fn result_examples_and_real_results() {
        let v = validator("gitlab-connector.result.v1.schema.json");
        for (name, value) in examples("result", "valid") {
            let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{name}: {errors:?}");
            let parsed: JobResult =
                serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                serde_json::to_value(&parsed).unwrap(),
                value,
                "{name} does not round-trip"
            );
        }
        for (name, value) in examples("result", "invalid") {
            assert!(!v.is_valid(&value), "{name} passes the schema");
        }
        // What the worker really produces for rejections conforms too.
        for bytes in [&b"nope"[..], br#"{"kind": "grant", "connector": "eu"}"#] {
            let r = parse_job(bytes, now()).unwrap_err();
            let result = serde_json::to_value(JobResult::rejected(&r, now(), 1)).unwrap();
            let errors: Vec<String> = v.iter_errors(&result).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{result}: {errors:?}");
        }
    }
}

#[test]
fn the_result_schema_lists_every_error_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../schemas/gitlab-connector.result.v1.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let listed: Vec<&str> = schema["properties"]["error"]["oneOf"][1]["properties"]["code"]["enum"]
        .as_array()
        .expect("an enum of codes")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for code in gitlab_worker::jobs::Code::ALL {
        assert!(
            listed.contains(&code.as_str()),
            "{} is missing from the result schema",
            code.as_str()
        );
    }
    assert_eq!(listed.len(), gitlab_worker::jobs::Code::ALL.len());
}
