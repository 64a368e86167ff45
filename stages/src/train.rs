//! `train`: load a checkpoint, run inner steps on the batch assigned to this miner for this
//! window, and emit the pseudo-gradient (θ_start − θ_end) with the losses.

use gradline_engine::Diagnostic;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Input, Port, StageKind};
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::{CHECKPOINT, FRAGMENT_STATE, GRADIENT, JOB, RECEIPT};
use crate::require_resource;

/// Train on the assigned batch and emit the pseudo-gradient.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// The checkpoint to start from.
    pub checkpoint: Input,
    /// A signed job from the orchestrator (fragment training): train only its fragment, on its shard.
    #[serde(default)]
    pub job: Option<Input>,
    /// The model: a preset, or `custom` with `layers`, `dim`, `heads`, `context`, `vocab`.
    #[serde(default)]
    pub model: ModelPreset,
    /// For `model: custom`: the model's shape.
    #[serde(default)]
    pub shape: Option<ModelShape>,
    /// Inner optimizer steps (AdamW). With 1 step the output is the raw gradient.
    #[serde(default = "one")]
    pub steps: Value<u32>,
    /// Peak learning rate (warm-up, then cosine decay).
    #[serde(default = "default_lr")]
    pub lr: Value<f64>,
    /// Warm-up steps.
    #[serde(default)]
    pub warmup: Value<u32>,
    /// Sequences per step.
    #[serde(default = "default_batch")]
    pub batch: Value<u32>,
    /// Gradient clipping by global norm; 0 turns it off.
    #[serde(default = "default_clip")]
    pub grad_clip: Value<f64>,
    /// AdamW weight decay.
    #[serde(default = "default_decay")]
    pub weight_decay: Value<f64>,
    /// The store prefix holding token shards.
    #[serde(default = "default_data")]
    pub data: Value<String>,
    /// Whose batch: the batch is a pure function of blake3(seed, uid, window).
    pub uid: Value<i64>,
    /// The seed mixed into the batch assignment.
    #[serde(default = "default_seed")]
    pub seed: Value<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum ModelPreset {
    /// Byte vocabulary, 2 layers, 64 dims, context 64: for tests and the demo network.
    #[default]
    #[serde(rename = "tiny")]
    Tiny,
    /// 6 layers, 384 dims, 6 heads, context 256, cl100k_base vocabulary.
    #[serde(rename = "nanogpt-10m")]
    NanoGpt10m,
    /// Shape given under `shape:`.
    #[serde(rename = "custom")]
    Custom,
}

/// A decoder-only transformer's shape.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub layers: u32,
    pub dim: u32,
    pub heads: u32,
    pub context: u32,
    pub vocab: u32,
}

fn one() -> Value<u32> {
    Value::Lit(1)
}
fn default_lr() -> Value<f64> {
    Value::Lit(3e-4)
}
fn default_batch() -> Value<u32> {
    Value::Lit(8)
}
fn default_clip() -> Value<f64> {
    Value::Lit(1.0)
}
fn default_decay() -> Value<f64> {
    Value::Lit(0.1)
}
fn default_data() -> Value<String> {
    Value::Lit("data/shards".into())
}
fn default_seed() -> Value<String> {
    Value::Lit("gradline".into())
}

impl StageKind for Train {
    const NAME: &'static str = "train";
    const DESCRIPTION: &'static str =
        "Train on the assigned batch with burn; emit the pseudo-gradient and losses.";

    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("checkpoint", CHECKPOINT, "The checkpoint to start from."),
            Port::new("job", JOB, "A signed job (fragment training)."),
        ]
    }

    fn outputs(&self) -> Vec<Port> {
        let mut ports = vec![
            Port::new(
                "gradient",
                GRADIENT,
                "θ_start − θ_end over the trainable tensors, in contract order.",
            ),
            Port::new(
                "loss_before",
                Type::Float,
                "Loss on the batch before training.",
            ),
            Port::new(
                "loss_after",
                Type::Float,
                "Loss on the batch after training.",
            ),
            Port::new("tokens", Type::Int, "Tokens trained on."),
            Port::new("receipt", RECEIPT, "A signed receipt of what was produced."),
        ];
        if self.job.is_some() {
            ports.push(Port::new(
                "state",
                FRAGMENT_STATE,
                "The job's fragment after training (absolute values).",
            ));
        }
        ports
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = require_resource(
            cx.resources.store.is_some(),
            "store",
            "reading token shards",
            cx,
            "data",
        )
        .into_iter()
        .collect();
        match (self.model, &self.shape) {
            (ModelPreset::Custom, None) => out.push(
                Diagnostic::error(
                    "missing-setting",
                    "`model: custom` needs `shape:` (layers, dim, heads, context, vocab)",
                )
                .at(cx.span_of("model")),
            ),
            (ModelPreset::Custom, Some(shape))
                if shape.heads == 0 || shape.dim % shape.heads != 0 =>
            {
                out.push(
                    Diagnostic::error(
                        "invalid-value",
                        format!(
                            "`dim` ({}) must be a multiple of `heads` ({})",
                            shape.dim, shape.heads
                        ),
                    )
                    .at(cx.span_of("shape")),
                )
            }
            (ModelPreset::Tiny | ModelPreset::NanoGpt10m, Some(_)) => out.push(
                Diagnostic::error("invalid-value", "`shape:` is only for `model: custom`")
                    .at(cx.span_of("shape")),
            ),
            _ => {}
        }
        if let Value::Lit(0) = self.steps {
            out.push(
                Diagnostic::error("invalid-value", "`steps` must be at least 1")
                    .at(cx.span_of("steps")),
            );
        }
        if let Value::Lit(lr) = self.lr
            && !(lr > 0.0 && lr.is_finite())
        {
            out.push(
                Diagnostic::error("invalid-value", format!("`lr` must be positive, got {lr}"))
                    .at(cx.span_of("lr")),
            );
        }
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let model = match self.model {
            ModelPreset::Tiny => "tiny".to_owned(),
            ModelPreset::NanoGpt10m => "nanogpt-10m".to_owned(),
            ModelPreset::Custom => self.shape.as_ref().map_or("custom".into(), |s| {
                format!(
                    "custom {}L×{}d×{}h ctx {} vocab {}",
                    s.layers, s.dim, s.heads, s.context, s.vocab
                )
            }),
        };
        vec![
            Effect::read(
                "store",
                cx.store(),
                format!(
                    "{}/ (the shard assigned to uid {})",
                    cx.render(&self.data),
                    cx.render(&self.uid)
                ),
            ),
            Effect::compute(
                Some(cx.device().to_string()),
                format!(
                    "train {model}: {} steps × batch {}, lr {}",
                    cx.render(&self.steps),
                    cx.render(&self.batch),
                    cx.render(&self.lr)
                ),
            ),
        ]
    }
}
