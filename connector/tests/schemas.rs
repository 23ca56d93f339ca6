//! The JSON Schemas in schemas/ and the Rust types agree: every valid example passes the
//! schema and parses into the record type; every invalid example is rejected by the schema.

use std::path::{Path, PathBuf};

use gitlab_connector::model::Record;
use gitlab_connector::snapshot::diff::DiffLine;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn examples(kind: &str, validity: &str) -> Vec<(String, serde_json::Value)> {
    let dir = root().join("examples").join(kind).join(validity);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!out.is_empty(), "no examples in {}", dir.display());
    out
}

fn validator(file: &str) -> jsonschema::Validator {
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root().join(file)).unwrap()).unwrap();
    jsonschema::validator_for(&schema).unwrap()
}

#[test]
fn snapshot_examples() {
    let v = validator("gitlab-access-snapshot.v1.schema.json");
    let valid = examples("snapshot", "valid");
    for t in [
        "snapshot",
        "user",
        "group",
        "project",
        "membership",
        "share",
        "invitation",
        "role",
        "saml_group_link",
        "access",
        "summary",
    ] {
        assert!(
            valid.iter().any(|(n, _)| n == &format!("{t}.json")),
            "no valid example for {t}"
        );
    }
    for (name, value) in valid {
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let parsed: Record =
            serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            value,
            "{name} does not round-trip"
        );
    }
    for (name, value) in examples("snapshot", "invalid") {
        assert!(
            !v.is_valid(&value),
            "{name} should be rejected by the schema"
        );
    }
}

#[test]
fn diff_examples() {
    let v = validator("gitlab-access-diff.v1.schema.json");
    for (name, value) in examples("diff", "valid") {
        let errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let parsed: DiffLine =
            serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            value,
            "{name} does not round-trip"
        );
    }
    for (name, value) in examples("diff", "invalid") {
        assert!(
            !v.is_valid(&value),
            "{name} should be rejected by the schema"
        );
    }
}
