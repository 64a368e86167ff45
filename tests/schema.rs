//! The committed JSON Schemas are exactly what the code generates.

mod common;

use common::root;
use gradline_engine::schema::{pipeline_schema, plan_schema};

fn assert_fresh(file: &str, generated: &str) {
    let committed = std::fs::read_to_string(root().join(file)).unwrap_or_default();
    assert!(
        committed == generated,
        "{file} is stale: regenerate it with `cargo run -- schema --write schemas`"
    );
}

#[test]
fn pipeline_schema_is_fresh() {
    assert_fresh(
        "schemas/pipeline.schema.json",
        &pipeline_schema(&gradline_stages::registry()),
    );
}

#[test]
fn plan_schema_is_fresh() {
    assert_fresh("schemas/plan.schema.json", &plan_schema());
}

#[test]
fn schema_types_each_kind_settings() {
    let schema: serde_json::Value =
        serde_json::from_str(&pipeline_schema(&gradline_stages::registry())).unwrap();
    let uses = schema
        .pointer("/$defs/StageSpec/properties/uses/enum")
        .unwrap()
        .as_array()
        .unwrap();
    let registry = gradline_stages::registry();
    assert_eq!(uses.len(), registry.kinds().count());
    let conditions = schema
        .pointer("/$defs/StageSpec/allOf")
        .unwrap()
        .as_array()
        .unwrap();
    assert_eq!(conditions.len(), uses.len());
    let train = schema
        .pointer("/$defs/Train/properties/steps/anyOf")
        .expect("train settings are in $defs");
    assert!(train.to_string().contains("integer"), "{train}");
    let described = schema
        .pointer("/$defs/Train/properties/lr/description")
        .unwrap();
    assert!(described.as_str().unwrap().contains("learning rate"));
    let top = schema.pointer("/properties").unwrap().as_object().unwrap();
    let keys: Vec<&str> = top.keys().map(String::as_str).collect();
    assert_eq!(keys, gradline_engine::spec::TOP_LEVEL_KEYS);
}
