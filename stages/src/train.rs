//! `train`: load a checkpoint, run inner steps on the batch assigned to this miner for this
//! window, and emit the pseudo-gradient (θ_start − θ_end) with the losses.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::Diagnostic;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Input, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::spec::Device;
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::{CHECKPOINT, FRAGMENT_STATE, GRADIENT, JOB, RECEIPT};
use crate::data::{INDEX_FILE, ShardIndex, assign, read_shard};
use crate::model::checkpoint;
use crate::model::train::{TrainOptions, train};
use crate::model::{Cpu, GptConfig};
use crate::require_resource;
use crate::store;
use crate::tensors::TensorSet;

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
            Port::new("tokens_per_second", Type::Float, "Training throughput."),
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

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(self.train(cx))
    }
}

impl Train {
    /// The model's shape.
    pub fn model_config(&self) -> Result<GptConfig, StageError> {
        model_config(self.model, self.shape.as_ref())
    }

    async fn train(&self, cx: &StageRun) -> Result<Outputs, StageError> {
        if self.job.is_some() {
            return Err(StageError::final_(
                "training a fragment job is not supported yet (fragment training lands with verify and merge)",
            ));
        }
        let config = self.model_config()?;
        let options = TrainOptions {
            steps: cx.get(&self.steps)?.max(1),
            lr: cx.get(&self.lr)?,
            warmup: cx.get(&self.warmup)?,
            grad_clip: cx.get(&self.grad_clip)? as f32,
            weight_decay: cx.get(&self.weight_decay)? as f32,
        };
        let batch = cx.get(&self.batch)?.max(1) as usize;
        let (uid, seed, data) = (cx.get(&self.uid)?, cx.get(&self.seed)?, cx.get(&self.data)?);

        let Val::Artifact(checkpoint) = cx.input(&self.checkpoint)? else {
            return Err(StageError::final_("`checkpoint` is not an artifact"));
        };
        let weights = cx.read_artifact(&checkpoint).await?;
        let span = (batch * config.context + 1) as u64;
        let assigned =
            assigned_tokens(cx, &data, config.vocab, &seed, uid, cx.window(), span).await?;
        let (shard, window) = (assigned.shard, assigned.tokens);

        let total_steps = options.steps;
        let (step_tx, mut step_rx) = tokio::sync::mpsc::unbounded_channel::<(u32, f32)>();
        let device = cx.stage_device();
        let started = std::time::Instant::now();
        let work = tokio::task::spawn_blocking(move || {
            let job = TrainJob {
                weights: &weights,
                config,
                window: &window,
                batch,
                options: &options,
            };
            train_on_device(device, job, |step, loss| {
                let _ = step_tx.send((step, loss));
            })
        });
        while let Some((step, loss)) = step_rx.recv().await {
            cx.progress(
                step as u64,
                total_steps as u64,
                format!("step {step}/{total_steps}, loss {loss:.3}"),
            );
        }
        let outcome = work
            .await
            .map_err(|e| StageError::final_(format!("training: {e}")))??;
        let (loss_before, loss_after, tokens, gradient) = outcome;
        let seconds = started.elapsed().as_secs_f64();
        let gradient_bytes = gradient
            .to_safetensors("gradient")
            .map_err(|e| StageError::final_(e.to_string()))?;
        let gradient = cx.write_artifact("gradient", gradient_bytes).await?;
        let receipt = serde_json::json!({
            "format": "gradline.receipt/v0-unsigned",
            "uid": uid,
            "window": cx.window(),
            "checkpoint": checkpoint.digest,
            "gradient": gradient.digest,
            "shard": shard,
            "offset": assigned.offset,
            "loss_before": loss_before,
            "loss_after": loss_after,
        });
        let receipt = cx
            .write_artifact("receipt", receipt.to_string().into_bytes())
            .await?;
        Ok(BTreeMap::from([
            ("gradient".to_owned(), Val::Artifact(gradient)),
            ("loss_before".to_owned(), Val::Float(loss_before as f64)),
            ("loss_after".to_owned(), Val::Float(loss_after as f64)),
            ("tokens".to_owned(), Val::Int(tokens as i64)),
            (
                "tokens_per_second".to_owned(),
                Val::Float(tokens as f64 / seconds.max(1e-9)),
            ),
            ("receipt".to_owned(), Val::Artifact(receipt)),
        ]))
    }
}

/// The shape of a model preset, or of `shape:` for `custom`.
pub(crate) fn model_config(
    preset: ModelPreset,
    shape: Option<&ModelShape>,
) -> Result<GptConfig, StageError> {
    match (preset, shape) {
        (ModelPreset::Tiny, _) => Ok(GptConfig::tiny()),
        (ModelPreset::NanoGpt10m, _) => Ok(GptConfig::nanogpt_10m()),
        (ModelPreset::Custom, Some(s)) => Ok(GptConfig {
            vocab: s.vocab as usize,
            context: s.context as usize,
            layers: s.layers as usize,
            heads: s.heads as usize,
            dim: s.dim as usize,
        }),
        (ModelPreset::Custom, None) => Err(StageError::final_("`model: custom` needs `shape:`")),
    }
}

/// The tokens assigned to `uid` in `window` under `seed`.
pub(crate) struct Assigned {
    pub shard: String,
    pub offset: u64,
    /// `span` tokens.
    pub tokens: Vec<u32>,
}

/// Reads the batch assigned to `uid` in `window` (`span` tokens) from the shards under
/// `data` in the store, checking the shard against its digest in the index.
pub(crate) async fn assigned_tokens(
    cx: &StageRun,
    data: &str,
    vocab: usize,
    seed: &str,
    uid: i64,
    window: i64,
    span: u64,
) -> Result<Assigned, StageError> {
    let index: ShardIndex =
        serde_json::from_slice(&store::get(&cx.effects, &format!("{data}/{INDEX_FILE}")).await?)
            .map_err(|e| {
                StageError::final_(format!("{data}/{INDEX_FILE} is not a shard index: {e}"))
            })?;
    if index.vocab_size as usize > vocab {
        return Err(StageError::final_(format!(
            "the shards' vocabulary ({}) is larger than the model's ({})",
            index.vocab_size, vocab
        )));
    }
    let counts: Vec<u64> = index.shards.iter().map(|s| s.tokens).collect();
    let at =
        assign(seed, uid, window, &counts, span).map_err(|e| StageError::final_(e.to_string()))?;
    let shard = &index.shards[at.shard];
    let bytes = store::get(&cx.effects, &format!("{data}/{}", shard.name)).await?;
    if blake3::hash(&bytes).to_hex().as_str() != shard.digest {
        return Err(StageError::retryable(format!(
            "shard {} does not match its digest in the index",
            shard.name
        )));
    }
    let tokens = read_shard(&bytes).map_err(|e| StageError::final_(e.to_string()))?;
    let assigned = tokens
        .get(at.offset as usize..(at.offset + span) as usize)
        .ok_or_else(|| {
            StageError::final_(format!(
                "shard {} is shorter than its index says",
                shard.name
            ))
        })?
        .to_vec();

    Ok(Assigned {
        shard: shard.name.clone(),
        offset: at.offset,
        tokens: assigned,
    })
}

/// What a training run hands back: losses, tokens, and the update.
type Trained = (f32, f32, u64, TensorSet);

/// One training run, independent of the backend.
struct TrainJob<'a> {
    weights: &'a [u8],
    config: GptConfig,
    /// `batch × context + 1` tokens.
    window: &'a [u32],
    batch: usize,
    options: &'a TrainOptions,
}

/// Picks the backend for `device` among those compiled in; `auto` is
/// [`crate::model::best_device`].
fn train_on_device(
    device: Device,
    job: TrainJob,
    progress: impl FnMut(u32, f32),
) -> Result<Trained, StageError> {
    use burn::backend::Autodiff;
    let device = match device {
        Device::Auto => crate::model::best_device(),
        other => other,
    };
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(index) => train_on::<Autodiff<burn::backend::Cuda>>(
            burn::backend::cuda::CudaDevice {
                index: index as usize,
            },
            job,
            progress,
        ),
        #[cfg(feature = "wgpu")]
        Device::Wgpu => {
            train_on::<Autodiff<burn::backend::Wgpu>>(Default::default(), job, progress)
        }
        #[cfg(feature = "metal")]
        Device::Metal => {
            train_on::<Autodiff<burn::backend::Metal>>(Default::default(), job, progress)
        }
        Device::Cpu => train_on::<Autodiff<Cpu>>(Default::default(), job, progress),
        other => Err(StageError::final_(format!(
            "`device: {other}` is not in this build: rebuild gradline with `--features {}`",
            match other {
                Device::Cuda(_) => "cuda",
                Device::Metal => "metal",
                _ => "wgpu",
            }
        ))),
    }
}

fn train_on<B: burn::tensor::backend::AutodiffBackend>(
    device: B::Device,
    job: TrainJob,
    progress: impl FnMut(u32, f32),
) -> Result<Trained, StageError> {
    let (config, context) = (job.config, job.config.context);
    let model = checkpoint::load::<B>(job.weights, config, &device)
        .map_err(|e| StageError::final_(e.to_string()))?;
    let tensor = crate::model::eval::rows::<B>(job.window, job.batch, context, &device);
    let outcome = train(model, tensor, job.options, progress);
    Ok((
        outcome.loss_before,
        outcome.loss_after,
        outcome.tokens,
        outcome.gradient,
    ))
}
