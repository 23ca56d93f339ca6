//! schemas/gitlab-connector.event.v1.schema.json accepts its valid examples and rejects the
//! invalid ones (real events are checked against it in worker_nats.rs).

#[test]
fn event_schema_examples() {
    let v = gitlab_e2e::schema("gitlab-connector.event.v1.schema.json");
    let dir = gitlab_e2e::workspace_root().join("schemas/examples/event");
    for (validity, expect) in [("valid", true), ("invalid", false)] {
        let mut n = 0;
        for e in std::fs::read_dir(dir.join(validity)).unwrap() {
            let p = e.unwrap().path();
            let value: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            assert_eq!(v.is_valid(&value), expect, "{}", p.display());
            n += 1;
        }
        assert!(n >= 2, "examples in {validity}");
    }
}
