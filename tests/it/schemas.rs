//! The JSON Schemas in `schemas/` are generated from the Rust types and must match them.
//!
//! Regenerate with `UPDATE_SCHEMAS=1 cargo test -p ipam-tests --test it schemas` (README.md).

use std::collections::BTreeSet;
use std::path::PathBuf;

use ipam_core::Envelope;
use ipam_core::event::{Event, event_schemas};
use serde_json::{Value, json};

use crate::samples;

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas")
}

fn rendered(schema: &Value) -> String {
    serde_json::to_string_pretty(schema).unwrap() + "\n"
}

#[test]
fn schemas_directory_matches_the_rust_types() {
    let dir = schemas_dir();
    let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    let generated = event_schemas();
    for (type_name, schema) in &generated {
        let path = dir.join(format!("{type_name}.json"));
        let want = rendered(schema);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            if update {
                std::fs::write(&path, want).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    let expected: BTreeSet<String> = generated.keys().map(|t| format!("{t}.json")).collect();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") && !expected.contains(&name) {
            if update {
                std::fs::remove_file(dir.join(&name)).unwrap();
            } else {
                stale.push(format!("{name} (no such event type)"));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/ is stale: {stale:#?}\nregenerate with: UPDATE_SCHEMAS=1 cargo test -p ipam-tests --test it schemas"
    );
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options().should_validate_formats(true).build(schema).unwrap()
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator.iter_errors(instance).map(|e| format!("{}: {e}", e.instance_path())).collect()
}

#[test]
fn every_event_type_has_a_sample_that_its_schema_accepts_and_that_round_trips() {
    let schemas = event_schemas();
    let samples = samples::every_type();
    let sampled: Vec<&str> = samples.iter().map(|s| s.event.type_name()).collect();
    assert_eq!(sampled, Event::TYPES, "samples::every_type must hold one sample per type, in table order");
    for sample in samples {
        let json = sample.to_json();
        let validator = validator(&schemas[sample.event.type_name()]);
        assert_eq!(errors(&validator, &json), Vec::<String>::new(), "{}", sample.event.type_name());
        assert_eq!(Envelope::decode(&sample.to_bytes()), Ok(sample.clone()), "round trip");
        // `to_bytes` writes the data straight from its struct: the same JSON as the tree.
        let written: Value = serde_json::from_slice(&sample.to_bytes()).unwrap();
        assert_eq!(written, json, "{}: to_bytes and to_json disagree", sample.event.type_name());
        // A client's keys in another order (sorted: `data` before `type`) read the same.
        assert_eq!(Envelope::decode(json.to_string().as_bytes()), Ok(sample.clone()), "sorted keys");
    }
}

#[test]
fn schemas_refuse_what_the_decoder_refuses() {
    let schemas = event_schemas();
    let samples = samples::every_type();
    let started = samples.iter().find(|s| s.event.type_name() == "ipam.vnic.started.v1").unwrap().to_json();
    let validator = validator(&schemas["ipam.vnic.started.v1"]);
    type Mutation = Box<dyn Fn(&mut Value)>;
    let mutations: Vec<(&str, Mutation)> = vec![
        ("bad MAC", Box::new(|v| v["data"]["mac"] = json!("52:54:00:12:34"))),
        ("missing vnic_id", Box::new(|v| drop(v["data"].as_object_mut().unwrap().remove("vnic_id")))),
        ("unknown type", Box::new(|v| v["type"] = json!("ipam.vnic.exploded.v1"))),
        ("bad uuid", Box::new(|v| v["data"]["network_id"] = json!("not-a-uuid"))),
        ("bad time", Box::new(|v| v["time"] = json!("yesterday"))),
        ("numeric ip", Box::new(|v| v["data"]["requested_ip"] = json!(42))),
        ("bad ip", Box::new(|v| v["data"]["requested_ip"] = json!("10.0.0.300"))),
        ("wrong specversion", Box::new(|v| v["specversion"] = json!("0.3"))),
    ];
    for (what, mutate) in mutations {
        let mut bad = started.clone();
        mutate(&mut bad);
        assert!(!validator.is_valid(&bad), "the schema accepted an event with a {what}");
        assert!(Envelope::decode(bad.to_string().as_bytes()).is_err(), "the decoder accepted a {what}");
    }
}

#[test]
fn unknown_data_fields_and_extension_attributes_are_ignored() {
    let sample = samples::every_type().remove(0);
    let mut json = sample.to_json();
    json["data"]["added_in_a_later_release"] = json!(true);
    json["traceparent"] = json!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert!(validator(&event_schemas()[sample.event.type_name()]).is_valid(&json));
    assert_eq!(Envelope::decode(json.to_string().as_bytes()), Ok(sample));
}

#[test]
fn records_that_are_not_events_go_to_dead_letter_with_a_reason() {
    for (raw, why) in [
        (&b"\xff\x00 not json"[..], "not JSON"),
        (br#"{"specversion":"1.0"}"#, "missing id"),
        (br#"[1,2,3]"#, "not an object"),
    ] {
        let error = Envelope::decode(raw).unwrap_err();
        assert_eq!(error.rejection(), None, "{why}: undecodable records are dead-lettered, not rejected");
        assert!(!error.message.is_empty(), "{why}");
    }
    let unknown = json!({
        "specversion": "1.0", "id": "00000000-0000-0000-0000-000000000001", "source": "x",
        "type": "ipam.vm.exploded.v1", "time": "2026-11-30T00:00:00Z",
        "data": {"network_id": "00000000-0000-0000-0000-000000000002"},
    });
    let error = Envelope::decode(unknown.to_string().as_bytes()).unwrap_err();
    assert_eq!(error.rejection(), None, "an unknown type is dead-lettered");
    assert!(error.message.contains("unknown event type"), "{}", error.message);
}
