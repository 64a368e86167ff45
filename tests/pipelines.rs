//! Every pipeline in `pipelines/` validates cleanly and plans; the plans are snapshotted in
//! every format so a change to what a pipeline would do shows up in review.

mod common;

use common::{load_rel, no_env, pipeline_files};
use gradline_engine::plan::PLAN_FORMAT;

#[test]
fn there_is_a_pipeline_for_every_seed_system() {
    let files = pipeline_files();
    for expected in [
        "pipelines/hf-transport/validator.yaml",
        "pipelines/hf-transport/miner.yaml",
        "pipelines/window-loop/miner.yaml",
        "pipelines/window-loop/validator.yaml",
        "pipelines/fragments/orchestrator.yaml",
        "pipelines/fragments/miner.yaml",
        "pipelines/fragments/validator.yaml",
        "pipelines/distillation/miner.yaml",
        "pipelines/distillation/validator.yaml",
        "pipelines/publishing/publisher.yaml",
        "pipelines/local/validator.yaml",
        "pipelines/local/miner.yaml",
    ] {
        assert!(files.iter().any(|f| f == expected), "missing {expected}");
    }
}

#[test]
fn every_pipeline_validates_without_findings() {
    for file in pipeline_files() {
        let loaded = load_rel(&file, &[]);
        assert!(
            loaded.diagnostics.is_empty(),
            "{file}:\n{}",
            loaded.render()
        );
    }
}

#[test]
fn plans_of_every_pipeline_in_every_format() {
    for file in pipeline_files() {
        let loaded = load_rel(&file, &[]);
        let pipeline = loaded.pipeline.as_ref().expect("loads");
        let plan = loaded.plan(&no_env).expect("plans");
        assert_eq!(plan.format, PLAN_FORMAT);
        let name = file
            .trim_start_matches("pipelines/")
            .trim_end_matches(".yaml")
            .replace('/', "__");
        insta::assert_snapshot!(format!("{name}.text"), plan.to_text());
        insta::assert_snapshot!(
            format!("{name}.json"),
            serde_json::to_string_pretty(&plan).unwrap()
        );
        insta::assert_snapshot!(format!("{name}.dot"), plan.to_dot(pipeline));
        insta::assert_snapshot!(format!("{name}.mermaid"), plan.to_mermaid(pipeline));
    }
}

#[test]
fn json_plan_round_trips_through_its_types() {
    let loaded = load_rel("pipelines/local/validator.yaml", &[]);
    let plan = loaded.plan(&no_env).unwrap();
    let json = serde_json::to_string(&plan).unwrap();
    let back: gradline_engine::Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
}

#[test]
fn set_overrides_reach_the_plan() {
    let set = [
        "uid=7".parse().unwrap(),
        "store=s3://key:secret@bucket/run".parse().unwrap(),
    ];
    let loaded = load_rel("pipelines/window-loop/miner.yaml", &set);
    let plan = loaded.plan(&no_env).unwrap();
    let text = plan.to_text();
    assert!(text.contains("gradients/<cycle.window>/7.bin"), "{text}");
    assert!(
        text.contains("s3://***@bucket/run"),
        "credentials must be redacted:\n{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn stages_are_levelled_and_ordered_by_id() {
    let loaded = load_rel("pipelines/local/validator.yaml", &[]);
    let plan = loaded.plan(&no_env).unwrap();
    assert_eq!(plan.levels[0], ["checkpoint", "miners"]);
    let ids: Vec<&str> = plan.stages.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids.first(), Some(&"checkpoint"));
    assert_eq!(ids.last(), Some(&"weights"));
}

#[test]
fn plans_never_show_secret_values() {
    let loaded = load_rel("pipelines/hf-transport/validator.yaml", &[]);
    let with_token = |name: &str| name == "HF_TOKEN";
    let plan = loaded.plan(&with_token).unwrap();
    let text = plan.to_text();
    assert!(text.contains("HF_TOKEN                 set"), "{text}");
    assert!(text.contains("embedded hub: no token needed"), "{text}");
    let hub = ["hub=https://huggingface.co".parse().unwrap()];
    let real = load_rel("pipelines/hf-transport/validator.yaml", &hub)
        .plan(&with_token)
        .unwrap()
        .to_text();
    assert!(real.contains("token from HF_TOKEN"), "{real}");
}
