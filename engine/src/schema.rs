//! JSON Schema of the pipeline file, generated from the spec types and every registered
//! kind's settings (doc comments become descriptions). `with:` is typed per kind through
//! `if uses == K then with: KSettings`, so editors complete and check each stage's settings.

use schemars::generate::SchemaSettings;
use serde_json::{Value as Json, json};

use crate::plan::Plan;
use crate::registry::Registry;
use crate::spec::PipelineSpec;

pub const SCHEMA_ID: &str = "https://gradline.dev/schemas/pipeline.schema.json";

/// The pipeline file's schema, pretty-printed with a trailing newline.
pub fn pipeline_schema(registry: &Registry) -> String {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let root = generator.root_schema_for::<PipelineSpec>();
    let kind_schemas: Vec<(String, String, Json)> = registry
        .kinds()
        .map(|k| {
            (
                k.name.to_owned(),
                k.description.to_owned(),
                k.settings_schema(&mut generator).to_value(),
            )
        })
        .collect();
    let mut root = root.to_value();
    let defs = generator.definitions().clone();
    let defs_obj = root
        .as_object_mut()
        .map(|o| o.entry("$defs").or_insert_with(|| json!({})))
        .and_then(Json::as_object_mut);
    if let Some(defs_obj) = defs_obj {
        for (k, v) in defs {
            defs_obj.entry(k).or_insert(v);
        }
    }
    if let Some(obj) = root.as_object_mut() {
        obj.insert("$id".into(), json!(SCHEMA_ID));
        obj.insert("title".into(), json!("gradline pipeline"));
    }
    let stage = root
        .pointer_mut("/$defs/StageSpec")
        .and_then(Json::as_object_mut);
    if let Some(stage) = stage {
        let names: Vec<Json> = kind_schemas.iter().map(|(n, _, _)| json!(n)).collect();
        let described: Vec<Json> = kind_schemas
            .iter()
            .map(|(n, d, _)| json!({ "const": n, "description": d }))
            .collect();
        if let Some(uses) = stage.get_mut("properties").and_then(|p| p.get_mut("uses")) {
            let description = uses.get("description").cloned().unwrap_or(Json::Null);
            *uses = json!({ "description": description, "enum": names, "oneOf": described });
        }
        let conditions: Vec<Json> = kind_schemas
            .iter()
            .map(|(name, _, settings)| {
                json!({
                    "if": { "properties": { "uses": { "const": name } }, "required": ["uses"] },
                    "then": { "properties": { "with": settings } }
                })
            })
            .collect();
        stage.insert("allOf".into(), Json::Array(conditions));
    }
    let mut text = serde_json::to_string_pretty(&root).unwrap_or_default();
    text.push('\n');
    text
}

/// The schema of `gradline plan --format json`.
pub fn plan_schema() -> String {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let schema = generator.into_root_schema_for::<Plan>();
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}
