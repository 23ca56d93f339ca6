//! Hostile input, generated: envelopes of every kind, valid and broken (wrong types, huge
//! strings, deep nesting, unicode, boundary numbers, control characters, unknown fields, wrong
//! subjects). Parsing must never panic and every rejection must name the field it refuses; the
//! handler (10,000 of them, in a dry run against the simulator) must answer each with `rejected` or a result
//! that matches the result schema.

use std::sync::OnceLock;

use gitlab_worker::jobs::{Delivery, JobStatus, parse_job};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};

use crate::common::env;

const KINDS: [&str; 7] = [
    "sync",
    "grant",
    "revoke",
    "invite",
    "deprovision",
    "rotate_token",
    "promote",
];

/// Any JSON value, nested up to 8 levels, with odd strings and boundary numbers.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            Just(u16::MAX as u64 + 1),
            Just(400 * 86_400 + 1)
        ]
        .prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[\\x00-\\x1f\\u{7f}\\u{202e}\\u{1F600}a-z@./]{0,24}".prop_map(Value::from),
        (1usize..300_000).prop_map(|n| Value::from("x".repeat(n))),
        Just(Value::from("2026-13-45")),
        Just(Value::from("2099-01-01T00:00:00Z")),
        Just(Value::from("owner")),
    ];
    leaf.prop_recursive(8, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,16}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Parameters that are right for a kind, to be broken field by field.
fn valid_params(kind: &str) -> Value {
    match kind {
        "sync" => json!({"scope": "org"}),
        "grant" => {
            json!({"user": {"username": "ada"}, "target": {"group": "org"}, "access_level": "developer", "duration_seconds": 3600})
        }
        "revoke" => json!({"user": {"username": "ada"}, "target": {"group": "org"}}),
        "invite" => {
            json!({"email": "new@example.com", "target": {"group": "org"}, "access_level": 20})
        }
        "deprovision" => json!({"user": {"username": "ada"}, "actions": ["remove_memberships"]}),
        _ => json!({}),
    }
}

/// An envelope of `kind` with some of its fields replaced, removed or added.
fn arb_envelope() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(KINDS.to_vec()),
        prop::collection::vec(
            (
                prop::sample::select(vec![
                    "schema",
                    "job_id",
                    "connector",
                    "kind",
                    "dry_run",
                    "requested_by",
                    "reason",
                    "params",
                    "params.user",
                    "params.target",
                    "params.access_level",
                    "params.duration_seconds",
                    "params.expires_at",
                    "params.actions",
                    "params.email",
                    "params.scope",
                    "dryrun",
                    "params.extra",
                ]),
                prop_oneof![3 => arb_json().prop_map(Some), 1 => Just(None)],
            ),
            0..4,
        ),
    )
        .prop_map(|(kind, edits)| {
            let mut v = json!({
                "schema": "gitlab-connector.job.v1",
                "job_id": "adv-1",
                "connector": "default",
                "kind": kind,
                "dry_run": true,
                "params": valid_params(kind),
            });
            for (field, value) in edits {
                let (target, key) = match field.strip_prefix("params.") {
                    Some(k) => match v.get_mut("params").and_then(Value::as_object_mut) {
                        Some(p) => (p, k),
                        None => continue,
                    },
                    None => (v.as_object_mut().expect("an object"), field),
                };
                match value {
                    Some(x) => {
                        target.insert(key.to_string(), x);
                    }
                    None => {
                        target.remove(key);
                    }
                }
            }
            v
        })
}

/// Raw bytes that are not an envelope at all: nesting beyond any limit, not JSON, not UTF-8.
fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (1usize..2_000).prop_map(|n| "[".repeat(n).into_bytes()),
        (1usize..400)
            .prop_map(|n| format!("{}1{}", "{\"a\":".repeat(n), "}".repeat(n)).into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
        Just(b"null".to_vec()),
        Just(b"\"job\"".to_vec()),
    ]
}

/// The suite runs the same cases every time (`PROPTEST_RANDOM=1` explores new ones).
fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RANDOM").is_some() {
        TestRunner::new(config)
    } else {
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
    }
}

fn names_a_field(message: &str) -> bool {
    message.contains('`')
}

#[test]
fn ten_thousand_hostile_envelopes_are_parsed_without_panic_and_named() {
    let now = chrono::Utc::now();
    let mut cases = runner(10_000);
    cases
        .run(&arb_envelope(), |v| {
            let bytes = serde_json::to_vec(&v).unwrap();
            if let Err(r) = parse_job(&bytes, now) {
                prop_assert!(
                    names_a_field(&r.message),
                    "the rejection does not name a field: {:?}",
                    r.message
                );
                prop_assert!(
                    r.message.len() <= 4096,
                    "an echo of the input: {} bytes",
                    r.message.len()
                );
            }
            Ok(())
        })
        .unwrap();
    let mut bytes_cases = runner(2_000);
    bytes_cases
        .run(&arb_bytes(), |bytes| {
            let r = parse_job(&bytes, now);
            prop_assert!(r.is_err());
            let message = r.unwrap_err().message;
            prop_assert!(
                message.starts_with("the job") || names_a_field(&message),
                "{message:?}"
            );
            prop_assert!(message.len() <= 4096);
            Ok(())
        })
        .unwrap();
}

fn result_schema() -> &'static jsonschema::Validator {
    static V: OnceLock<jsonschema::Validator> = OnceLock::new();
    V.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../schemas/gitlab-connector.result.v1.schema.json");
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    })
}

#[test]
fn the_handler_answers_every_hostile_envelope_without_writing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(env());
    let mut cases = runner(10_000);
    let subjects = prop::sample::select(vec![
        None,
        Some("gitlab.jobs.default.grant"),
        Some("gitlab.jobs.default.sync"),
        Some("gitlab.jobs.other.grant"),
        Some("gitlab.jobs.>"),
    ]);
    let seq = std::sync::atomic::AtomicU64::new(0);
    cases
        .run(&(arb_envelope(), subjects), |(mut v, subject)| {
            let seq = seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            // Every job is a dry run and has an id of its own, so nothing is written and no
            // case is answered from another's stored result.
            if let Some(obj) = v.as_object_mut() {
                obj.insert("dry_run".into(), Value::Bool(true));
                obj.insert("job_id".into(), Value::from(format!("adv-{seq}")));
            }
            let bytes = serde_json::to_vec(&v).unwrap();
            let delivery = Delivery {
                attempt: 1,
                attempt_budget: 1,
                deferrals: 0,
                stream_seq: seq,
                subject: subject.map(str::to_string),
            };
            let h = rt
                .block_on(e.handler.handle(&bytes, delivery))
                .expect("the store answers");
            let result: Value = serde_json::from_str(&h.result).unwrap();
            prop_assert!(
                result_schema().is_valid(&result),
                "not a valid result: {}",
                h.result
            );
            if h.status == JobStatus::Rejected {
                let message = h.error.as_ref().map(|e| e.message.as_str()).unwrap_or("");
                prop_assert!(
                    names_a_field(message)
                        || message.contains("subject")
                        || message.contains("denied by")
                        || message.contains("NATS_MAX_JOB_BYTES"),
                    "{message:?}"
                );
            }
            Ok(())
        })
        .unwrap();
    assert!(e.writes().is_empty(), "a dry run wrote: {:?}", e.writes());
}
