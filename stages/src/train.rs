//! `train`: load a checkpoint, run inner steps on the batch assigned to this miner for this
//! window, and emit the pseudo-gradient (θ_start − θ_end) with the losses.

use std::collections::{BTreeMap, BTreeSet};

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
use crate::signed::{self, Job, Receipt, Signed};
use crate::tensors::TensorSet;
use crate::{chain, require_resource, store};
use gradline_engine::runtime::ArtifactRef;

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
    /// With `job:`, the orchestrator's hotkey (hex or SS58): only jobs it signed are taken.
    #[serde(default)]
    pub orchestrator: Option<Value<String>>,
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
        out.extend(check_model(self.model, self.shape.as_ref(), cx));
        if self.job.is_some() && self.orchestrator.is_none() {
            out.push(
                Diagnostic::error(
                    "missing-setting",
                    "`job:` needs `orchestrator:`, the hotkey whose signed jobs are taken",
                )
                .at(cx.span_of("job"))
                .hint("e.g. `orchestrator: \"${{ stages.released.outputs.hotkey }}\"`"),
            );
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
        let model = model_name(self.model, self.shape.as_ref());
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
        let config = self.model_config()?;
        let batch = cx.get(&self.batch)?.max(1) as usize;
        let (uid, seed, data) = (cx.get(&self.uid)?, cx.get(&self.seed)?, cx.get(&self.data)?);
        let Val::Artifact(checkpoint) = cx.input(&self.checkpoint)? else {
            return Err(StageError::final_("`checkpoint` is not an artifact"));
        };
        let weights = cx.read_artifact(&checkpoint).await?;
        let span = (batch * config.context + 1) as u64;
        if let Some(job) = &self.job {
            let job = self.accepted_job(cx, job, &checkpoint, uid).await?;
            let index = shard_index(cx, &data, config.vocab).await?;
            if span > job.body.tokens {
                return Err(StageError::final_(format!(
                    "the job covers {} tokens, but `batch` {batch} × context {} needs {span}: lower `batch`",
                    job.body.tokens, config.context
                )));
            }
            let assigned =
                shard_tokens(cx, &data, &index, &job.body.shard, job.body.offset, span).await?;
            let only = job.body.tensors.iter().cloned().collect();
            let trained = self
                .run_training(cx, weights, config, assigned.tokens, batch, Some(only))
                .await?;
            return self.job_outputs(cx, &job, trained).await;
        }
        let assigned =
            assigned_tokens(cx, &data, config.vocab, &seed, uid, cx.window(), span).await?;
        let trained = self
            .run_training(cx, weights, config, assigned.tokens, batch, None)
            .await?;
        let gradient_bytes = trained
            .gradient
            .to_safetensors("gradient")
            .map_err(|e| StageError::final_(e.to_string()))?;
        let gradient = cx.write_artifact("gradient", gradient_bytes).await?;
        let receipt = serde_json::json!({
            "format": "gradline.receipt/v0-unsigned",
            "uid": uid,
            "window": cx.window(),
            "checkpoint": checkpoint.digest,
            "gradient": gradient.digest,
            "shard": assigned.shard,
            "offset": assigned.offset,
            "loss_before": trained.loss_before,
            "loss_after": trained.loss_after,
        });
        let receipt = cx
            .write_artifact("receipt", receipt.to_string().into_bytes())
            .await?;
        let mut out = trained.outputs();
        out.insert("gradient".to_owned(), Val::Artifact(gradient));
        out.insert("receipt".to_owned(), Val::Artifact(receipt));
        Ok(out)
    }

    /// The job, when it is signed by the orchestrator, for this window and this miner, not
    /// past its deadline, and starts from the checkpoint at hand; otherwise why not.
    async fn accepted_job(
        &self,
        cx: &StageRun,
        job: &Input,
        checkpoint: &ArtifactRef,
        uid: i64,
    ) -> Result<Signed<Job>, StageError> {
        let Val::Artifact(artifact) = cx.input(job)? else {
            return Err(StageError::final_("`job` is not an artifact"));
        };
        let job: Signed<Job> = serde_json::from_slice(&cx.read_artifact(&artifact).await?)
            .map_err(|e| StageError::final_(format!("the job is not a signed job: {e}")))?;
        let orchestrator = match &self.orchestrator {
            Some(hotkey) => cx.get(hotkey)?,
            None => return Err(StageError::final_("`job:` needs `orchestrator:`")),
        };
        let signer = signed::signer_setting("orchestrator", &orchestrator)?;
        let block = chain::block(&cx.effects).await?;
        let refused = |why: String| StageError::final_(format!("refusing the job: {why}"));
        let body = signed::check_job(&job, &signer, cx.window().max(0) as u64, block)
            .map_err(|e| refused(e.to_string()))?;
        if i64::from(body.miner_uid) != uid {
            return Err(refused(format!(
                "it is for uid {}, and this miner is uid {uid}",
                body.miner_uid
            )));
        }
        if body.checkpoint != checkpoint.digest {
            return Err(refused(format!(
                "it starts from checkpoint {}, not from the one downloaded ({})",
                body.checkpoint, checkpoint.digest
            )));
        }
        Ok(job)
    }

    /// A job's outputs: the fragment's trained state and a receipt for it, signed.
    async fn job_outputs(
        &self,
        cx: &StageRun,
        job: &Signed<Job>,
        trained: Trained,
    ) -> Result<Outputs, StageError> {
        let state = trained
            .state
            .as_ref()
            .ok_or_else(|| StageError::final_("training gave no fragment state"))?
            .to_safetensors("fragment-state")
            .map_err(|e| StageError::final_(e.to_string()))?;
        let bytes = state.len() as u64;
        let state = cx.write_artifact("fragment-state", state).await?;
        let receipt = Receipt {
            window: job.body.window,
            job: job.digest(),
            miner_uid: job.body.miner_uid,
            produced: state.digest.clone(),
            bytes,
        };
        let receipt = signed::sign_with(&cx.effects, receipt).await?;
        let receipt =
            serde_json::to_vec_pretty(&receipt).map_err(|e| StageError::final_(e.to_string()))?;
        let gradient = trained
            .gradient
            .to_safetensors("gradient")
            .map_err(|e| StageError::final_(e.to_string()))?;
        let mut out = trained.outputs();
        out.insert(
            "gradient".to_owned(),
            Val::Artifact(cx.write_artifact("gradient", gradient).await?),
        );
        out.insert("state".to_owned(), Val::Artifact(state));
        out.insert(
            "receipt".to_owned(),
            Val::Artifact(cx.write_artifact("receipt", receipt).await?),
        );
        Ok(out)
    }

    /// Trains on `tokens` on the stage's device, showing each step.
    async fn run_training(
        &self,
        cx: &StageRun,
        weights: Vec<u8>,
        config: GptConfig,
        tokens: Vec<u32>,
        batch: usize,
        only: Option<BTreeSet<String>>,
    ) -> Result<Trained, StageError> {
        let options = TrainOptions {
            steps: cx.get(&self.steps)?.max(1),
            lr: cx.get(&self.lr)?,
            warmup: cx.get(&self.warmup)?,
            grad_clip: cx.get(&self.grad_clip)? as f32,
            weight_decay: cx.get(&self.weight_decay)? as f32,
            only,
        };
        let total_steps = options.steps;
        let (step_tx, mut step_rx) = tokio::sync::mpsc::unbounded_channel::<(u32, f32)>();
        let device = cx.stage_device();
        let started = std::time::Instant::now();
        let work = tokio::task::spawn_blocking(move || {
            let job = TrainJob {
                weights: &weights,
                config,
                window: &tokens,
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
        let trained = work
            .await
            .map_err(|e| StageError::final_(format!("training: {e}")))??;
        // Throughput is shown, not output: outputs are what a replay must reproduce exactly.
        let seconds = started.elapsed().as_secs_f64().max(1e-9);
        cx.progress(
            total_steps as u64,
            total_steps as u64,
            format!(
                "{} tokens in {seconds:.2}s ({:.0} tokens/s)",
                trained.tokens,
                trained.tokens as f64 / seconds
            ),
        );
        Ok(trained)
    }
}

/// A model choice as the plan shows it.
pub(crate) fn model_name(model: ModelPreset, shape: Option<&ModelShape>) -> String {
    match model {
        ModelPreset::Tiny => "tiny".to_owned(),
        ModelPreset::NanoGpt10m => "nanogpt-10m".to_owned(),
        ModelPreset::Custom => shape.map_or("custom".into(), |s| {
            format!(
                "custom {}L×{}d×{}h ctx {} vocab {}",
                s.layers, s.dim, s.heads, s.context, s.vocab
            )
        }),
    }
}

/// Whether a model choice is whole: `custom` needs a shape, a preset takes none.
pub(crate) fn check_model(
    model: ModelPreset,
    shape: Option<&ModelShape>,
    cx: &CheckContext,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    match (model, shape) {
        (ModelPreset::Custom, None) => out.push(
            Diagnostic::error(
                "missing-setting",
                "`model: custom` needs `shape:` (layers, dim, heads, context, vocab)",
            )
            .at(cx.span_of("model")),
        ),
        (ModelPreset::Custom, Some(shape)) if shape.heads == 0 || shape.dim % shape.heads != 0 => {
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
    out
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
    let index = shard_index(cx, data, vocab).await?;
    assigned_in(cx, data, &index, seed, uid, window, span).await
}

/// Like [`assigned_tokens`], with the shard index already read.
pub(crate) async fn assigned_in(
    cx: &StageRun,
    data: &str,
    index: &ShardIndex,
    seed: &str,
    uid: i64,
    window: i64,
    span: u64,
) -> Result<Assigned, StageError> {
    let counts: Vec<u64> = index.shards.iter().map(|s| s.tokens).collect();
    let at =
        assign(seed, uid, window, &counts, span).map_err(|e| StageError::final_(e.to_string()))?;
    let shard = &index.shards[at.shard].name;
    shard_tokens(cx, data, index, shard, at.offset, span).await
}

/// The shard index under `data` in the store.
pub(crate) async fn read_shard_index(cx: &StageRun, data: &str) -> Result<ShardIndex, StageError> {
    serde_json::from_slice(&store::get(&cx.effects, &format!("{data}/{INDEX_FILE}")).await?)
        .map_err(|e| StageError::final_(format!("{data}/{INDEX_FILE} is not a shard index: {e}")))
}

/// The shard index under `data`, refused when its vocabulary does not fit the model.
pub(crate) async fn shard_index(
    cx: &StageRun,
    data: &str,
    vocab: usize,
) -> Result<ShardIndex, StageError> {
    let index = read_shard_index(cx, data).await?;
    if index.vocab_size as usize > vocab {
        return Err(StageError::final_(format!(
            "the shards' vocabulary ({}) is larger than the model's ({})",
            index.vocab_size, vocab
        )));
    }
    Ok(index)
}

/// `span` tokens of the shard named `shard` from `offset`, the shard checked against its
/// digest in the index.
pub(crate) async fn shard_tokens(
    cx: &StageRun,
    data: &str,
    index: &ShardIndex,
    shard: &str,
    offset: u64,
    span: u64,
) -> Result<Assigned, StageError> {
    let info = index
        .shards
        .iter()
        .find(|s| s.name == shard)
        .ok_or_else(|| {
            StageError::final_(format!("shard {shard} is not in {data}/{INDEX_FILE}"))
        })?;
    let bytes = store::get(&cx.effects, &format!("{data}/{shard}")).await?;
    if blake3::hash(&bytes).to_hex().as_str() != info.digest {
        return Err(StageError::retryable(format!(
            "shard {shard} does not match its digest in the index"
        )));
    }
    let tokens = read_shard(&bytes).map_err(|e| StageError::final_(e.to_string()))?;
    let end = offset.saturating_add(span);
    let assigned = usize::try_from(offset)
        .ok()
        .zip(usize::try_from(end).ok())
        .and_then(|(from, to)| tokens.get(from..to))
        .ok_or_else(|| {
            StageError::final_(format!(
                "shard {shard} has {} tokens; {span} from {offset} do not fit",
                tokens.len()
            ))
        })?
        .to_vec();
    Ok(Assigned {
        shard: shard.to_owned(),
        offset,
        tokens: assigned,
    })
}

/// What a training run hands back.
struct Trained {
    loss_before: f32,
    loss_after: f32,
    tokens: u64,
    /// θ_start − θ_end (the raw gradient after one step).
    gradient: TensorSet,
    /// With `only`: those tensors' values after training.
    state: Option<TensorSet>,
}

impl Trained {
    /// The numbers every training run reports.
    fn outputs(&self) -> Outputs {
        BTreeMap::from([
            (
                "loss_before".to_owned(),
                Val::Float(self.loss_before as f64),
            ),
            ("loss_after".to_owned(), Val::Float(self.loss_after as f64)),
            ("tokens".to_owned(), Val::Int(self.tokens as i64)),
        ])
    }
}

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
    let state = job.options.only.as_ref().map(|only| {
        let end = crate::model::train::parameters(&outcome.model);
        end.select(|name| only.contains(name))
    });
    Ok(Trained {
        loss_before: outcome.loss_before,
        loss_after: outcome.loss_after,
        tokens: outcome.tokens,
        gradient: outcome.gradient,
        state,
    })
}
