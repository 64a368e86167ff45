//! `evaluate`: a checkpoint's loss on held-out tokens — the same batches every cycle, so the
//! figure is comparable cycle over cycle (the validation loss a network reports).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::Diagnostic;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Input, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::artifacts::CHECKPOINT;
use crate::model::{Cpu, eval};
use crate::require_resource;
use crate::tensors::TensorSet;
use crate::train::{
    ModelPreset, ModelShape, assigned_in, check_model, model_config, model_name, shard_index,
};

/// Measure a checkpoint's loss on held-out token shards.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Evaluate {
    /// The checkpoint measured.
    pub checkpoint: Input,
    /// The model: a preset, or `custom` with `shape:`.
    #[serde(default)]
    pub model: ModelPreset,
    /// For `model: custom`: the model's shape.
    #[serde(default)]
    pub shape: Option<ModelShape>,
    /// The store prefix of the held-out shards (never trained on).
    #[serde(default = "default_data")]
    pub data: Value<String>,
    /// How many batches; each is drawn once from the seed and kept for every cycle.
    #[serde(default = "default_batches")]
    pub batches: Value<u32>,
    /// Sequences per batch.
    #[serde(default = "default_batch")]
    pub batch: Value<u32>,
    /// Where the batches fall.
    #[serde(default = "default_seed")]
    pub seed: Value<String>,
}

fn default_data() -> Value<String> {
    Value::Lit("data/validation".into())
}
fn default_batches() -> Value<u32> {
    Value::Lit(4)
}
fn default_batch() -> Value<u32> {
    Value::Lit(8)
}
fn default_seed() -> Value<String> {
    Value::Lit("gradline.evaluate".into())
}

impl StageKind for Evaluate {
    const NAME: &'static str = "evaluate";
    const DESCRIPTION: &'static str =
        "A checkpoint's mean loss on fixed held-out batches (the validation loss).";

    fn inputs(&self) -> Vec<Port> {
        vec![Port::new(
            "checkpoint",
            CHECKPOINT,
            "The checkpoint measured.",
        )]
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new(
                "loss",
                Type::Float,
                "Mean next-token loss over the batches.",
            ),
            Port::new("tokens", Type::Int, "Tokens measured."),
        ]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let mut out = check_model(self.model, self.shape.as_ref(), cx);
        out.extend(require_resource(
            cx.resources.store.is_some(),
            "store",
            "reading held-out shards",
            cx,
            "data",
        ));
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        vec![
            Effect::read(
                "store",
                cx.store(),
                format!("{}/ (held-out shards)", cx.render(&self.data)),
            ),
            Effect::compute(
                None,
                format!(
                    "loss of {} on {} batches × {}",
                    model_name(self.model, self.shape.as_ref()),
                    cx.render(&self.batches),
                    cx.render(&self.batch)
                ),
            ),
        ]
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let config = model_config(self.model, self.shape.as_ref())?;
            let (data, seed) = (cx.get(&self.data)?, cx.get(&self.seed)?);
            let batches = cx.get(&self.batches)?.max(1);
            let batch = cx.get(&self.batch)?.max(1) as usize;
            let span = (batch * config.context + 1) as u64;
            let index = shard_index(cx, &data, config.vocab).await?;
            let mut windows = Vec::new();
            for b in 0..batches {
                let drawn = assigned_in(cx, &data, &index, &seed, i64::from(b), 0, span).await?;
                windows.push(drawn.tokens);
            }
            let Val::Artifact(checkpoint) = cx.input(&self.checkpoint)? else {
                return Err(StageError::final_("`checkpoint` is not an artifact"));
            };
            let set = TensorSet::from_safetensors(&cx.read_artifact(&checkpoint).await?)
                .map_err(|e| StageError::final_(format!("the checkpoint: {e}")))?;
            let losses = tokio::task::spawn_blocking(move || {
                let windows: Vec<&[u32]> = windows.iter().map(Vec::as_slice).collect();
                eval::losses::<Cpu>(&set, config, &windows, batch, &Default::default())
            })
            .await
            .map_err(|e| StageError::final_(format!("evaluation stopped: {e}")))?
            .map_err(|e| StageError::final_(e.to_string()))?;
            let loss = losses.iter().map(|&l| f64::from(l)).sum::<f64>() / losses.len() as f64;
            if !loss.is_finite() {
                return Err(StageError::final_(format!(
                    "the checkpoint's loss is {loss}: its weights are broken"
                )));
            }
            Ok(BTreeMap::from([
                ("loss".to_owned(), Val::Float(loss)),
                (
                    "tokens".to_owned(),
                    Val::Int((u64::from(batches) * span) as i64),
                ),
            ]))
        })
    }
}
