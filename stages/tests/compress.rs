//! `compress` in a running pipeline: blobs decode to the gradient's top-k, and error
//! feedback carries what was dropped into the next cycles.

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
use gradline_stages::tensors::TensorSet;
use schemars::JsonSchema;
use serde::Deserialize;

/// Emits the same gradient every cycle.
#[derive(Debug, Deserialize, JsonSchema)]
struct Grad {
    values: Vec<f32>,
}

impl StageKind for Grad {
    const NAME: &'static str = "grad";
    const DESCRIPTION: &'static str = "test gradient";
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("gradient", Type::Named("gradient"), "")]
    }
    fn effects(&self, _: &PlanContext) -> Vec<Effect> {
        Vec::new()
    }
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let bytes = TensorSet::flat(self.values.clone())
                .to_safetensors("gradient")
                .unwrap();
            let artifact = cx.write_artifact("gradient", bytes).await?;
            Ok(BTreeMap::from([(
                "gradient".to_owned(),
                Val::Artifact(artifact),
            )]))
        })
    }
}

async fn sent_indices(codec: &str, feedback: bool) -> Vec<Vec<u32>> {
    let values: Vec<f32> = (0..10).map(|i| 1.0 - i as f32 * 0.1).collect();
    let text = format!(
        "version: 1\nname: ef\nrole: miner\ntrigger: {{ every: window }}\nstages:\n  grad: {{ uses: grad, with: {{ values: {values:?} }} }}\n  compress: {{ uses: compress, with: {{ gradient: '${{{{ stages.grad.outputs.gradient }}}}', codec: {codec}, density: 0.1, error_feedback: {feedback} }} }}\n"
    );
    let mut registry = gradline_stages::registry();
    registry.register::<Grad>();
    let run = common::run_pipeline(
        &format!("ef-{codec}-{feedback}"),
        &text,
        &registry,
        Arc::new(Live::new()),
        3,
        Duration::from_secs(1),
    )
    .await;
    let run_dir = &run.dir;
    let mut out = Vec::new();
    for entry in run_dir
        .entries()
        .unwrap()
        .iter()
        .filter(|e| e.stage == "compress")
    {
        let Val::Artifact(blob) = &entry.outputs["compressed"] else {
            panic!("an artifact")
        };
        let sparse = codec::decode(&run_dir.objects.get(blob).unwrap(), Limits::default()).unwrap();
        assert_eq!(sparse.n, 10);
        out.push(sparse.indices);
    }
    out
}

#[tokio::test(start_paused = true)]
async fn error_feedback_sends_what_earlier_cycles_dropped() {
    for codec in ["topk-f16", "topk-ef"] {
        assert_eq!(
            sent_indices(codec, false).await,
            [[0], [0], [0]],
            "{codec} without feedback"
        );
        assert_eq!(
            sent_indices(codec, true).await,
            [[0], [1], [2]],
            "{codec} with feedback"
        );
    }
}
