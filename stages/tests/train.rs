//! `train` in a running pipeline: a checkpoint in, the assigned batch read through the
//! store's effects, a pseudo-gradient out that `compress` encodes against its layout.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use gradline_engine::effects::Live;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_stages::codec::{self, Limits};
use gradline_stages::model::{Cpu, GptConfig, checkpoint};
use gradline_stages::tensors::TensorSet;
use schemars::JsonSchema;
use serde::Deserialize;

/// A fresh `tiny` checkpoint.
#[derive(Debug, Deserialize, JsonSchema)]
struct Fresh {}

impl StageKind for Fresh {
    const NAME: &'static str = "fresh";
    const DESCRIPTION: &'static str = "test checkpoint";
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("checkpoint", Type::Named("checkpoint"), "")]
    }
    fn effects(&self, _: &PlanContext) -> Vec<Effect> {
        Vec::new()
    }
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let device = Default::default();
            <Cpu as burn::tensor::backend::Backend>::seed(&device, 1);
            let model: gradline_stages::model::Gpt<Cpu> = GptConfig::tiny().init(&device);
            let (bytes, _) = checkpoint::save(&model).unwrap();
            let artifact = cx.write_artifact("checkpoint", bytes).await?;
            Ok(BTreeMap::from([(
                "checkpoint".to_owned(),
                Val::Artifact(artifact),
            )]))
        })
    }
}

const PIPELINE: &str = "version: 1
name: trainer
role: miner
resources:
  store: { url: \"file://fixtures/shards\" }
stages:
  base: { uses: fresh }
  train:
    uses: train
    with: { checkpoint: \"${{ stages.base.outputs.checkpoint }}\", uid: 3, steps: 3, batch: 4, lr: 0.003, data: bytes }
  compress:
    uses: compress
    with: { gradient: \"${{ stages.train.outputs.gradient }}\", codec: topk-ef, density: 0.01, layout_names: true }
";

#[tokio::test]
async fn train_reads_its_batch_through_the_store_and_feeds_compress() {
    let mut registry = gradline_stages::registry();
    registry.register::<Fresh>();
    let transport =
        Arc::new(Live::new().with_system("store", Arc::new(common::FixtureStore::shards())));
    let run = common::run_pipeline(
        "train",
        PIPELINE,
        &registry,
        transport,
        1,
        Duration::from_secs(60),
    )
    .await;
    let run_dir = &run.dir;
    let entries = run_dir.entries().unwrap();
    let train = entries.iter().find(|e| e.stage == "train").unwrap();
    let (Val::Float(before), Val::Float(after)) =
        (&train.outputs["loss_before"], &train.outputs["loss_after"])
    else {
        panic!("losses are numbers")
    };
    assert!(
        after < before,
        "three steps lower the loss: {before} → {after}"
    );
    assert_eq!(train.outputs["tokens"], Val::Int(4 * 64 * 3));
    let Val::Artifact(gradient) = &train.outputs["gradient"] else {
        panic!("an artifact")
    };
    let gradient = TensorSet::from_safetensors(&run_dir.objects.get(gradient).unwrap()).unwrap();
    assert_eq!(gradient.layout.tensors[0].0, "wte.weight");
    let compress = entries.iter().find(|e| e.stage == "compress").unwrap();
    let Val::Artifact(blob) = &compress.outputs["compressed"] else {
        panic!("an artifact")
    };
    let sparse = codec::decode(&run_dir.objects.get(blob).unwrap(), Limits::default()).unwrap();
    sparse.check_layout(&gradient.layout).unwrap();
    assert_eq!(sparse.layout.as_ref(), Some(&gradient.layout));
}
