//! `merge`: aggregate accepted gradients and apply them with an outer optimizer; split a
//! checkpoint's trainable tensors into fragments; release a full checkpoint from the latest
//! absolute fragment states plus the base tree. The arithmetic lives in [`outer`] and
//! [`fragments`].

pub mod fragments;
pub mod outer;

use std::collections::{BTreeMap, BTreeSet};

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
use serde::{Deserialize, Serialize};

use crate::artifacts::{
    BLOB, CHECKPOINT, COMPRESSED, DIGEST, FRAGMENT, FRAGMENT_STATE, SCORES, VERDICTS,
};
use crate::codec::{self, Limits};
use crate::model::checkpoint::{self, digest};
use crate::signed::{Signed, Verdict};
use crate::tensors::TensorSet;

/// Merge accepted work into the next checkpoint.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Merge {
    /// `apply` gradients, `split` into fragments, or `release` from fragment states.
    #[serde(default)]
    pub mode: MergeMode,
    /// The checkpoint the merge starts from (the base tree, for `release`).
    pub checkpoint: Input,
    /// apply: the accepted gradients.
    #[serde(default)]
    pub gradients: Option<Input>,
    /// Not read by `apply`: `weighted` takes the scores inside `verdicts:`, which say whose
    /// gradient each is.
    #[serde(default)]
    pub scores: Option<Input>,
    /// release: the fragment states downloaded.
    #[serde(default)]
    pub states: Option<Input>,
    /// release: the validators' verdicts on those states (only states an accepted verdict
    /// names are released); apply, `weighted`: the verdicts whose scores weight the accepted
    /// gradients.
    #[serde(default)]
    pub verdicts: Option<Input>,
    /// apply: how gradients are combined.
    #[serde(default)]
    pub policy: Policy,
    /// apply, `trimmed-mean`: the fraction dropped at each end, per coordinate.
    #[serde(default = "default_trim")]
    pub trim: Value<f64>,
    /// apply: the outer optimizer.
    #[serde(default)]
    pub optimizer: OuterOptimizer,
    /// apply: the outer learning rate.
    #[serde(default = "default_lr")]
    pub lr: Value<f64>,
    /// apply, `nesterov`: momentum, carried between cycles.
    #[serde(default = "default_momentum")]
    pub momentum: Value<f64>,
    /// split: how many fragments (balanced by size, stable across releases).
    #[serde(default = "default_fragments")]
    pub fragments: Value<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MergeMode {
    #[default]
    Apply,
    Split,
    Release,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The plain mean.
    Mean,
    /// Weighted by score.
    #[default]
    Weighted,
    /// Per coordinate, drop the extremes, then average: robust to outliers.
    TrimmedMean,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OuterOptimizer {
    /// θ ← θ − lr·g.
    Sgd,
    /// Nesterov momentum, as in DiLoCo.
    #[default]
    Nesterov,
}

fn default_trim() -> Value<f64> {
    Value::Lit(0.1)
}
fn default_lr() -> Value<f64> {
    Value::Lit(0.7)
}
fn default_momentum() -> Value<f64> {
    Value::Lit(0.9)
}
fn default_fragments() -> Value<u32> {
    Value::Lit(24)
}

impl StageKind for Merge {
    const NAME: &'static str = "merge";
    const DESCRIPTION: &'static str = "Aggregate accepted updates and apply them with an outer optimizer; split and release fragments.";

    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("checkpoint", CHECKPOINT, "The checkpoint merged into."),
            Port::new("gradients", Type::list(COMPRESSED), "Accepted gradients."),
            Port::new("scores", SCORES, "Scores weighting them."),
            Port::new(
                "states",
                Type::list(FRAGMENT_STATE),
                "Accepted fragment states.",
            ),
            Port::new("verdicts", VERDICTS, "Verdicts on the fragment states."),
        ]
    }

    fn outputs(&self) -> Vec<Port> {
        match self.mode {
            MergeMode::Split => vec![Port::new(
                "fragments",
                Type::list(FRAGMENT),
                "The fragments, balanced by size.",
            )],
            MergeMode::Apply => vec![
                Port::new("checkpoint", CHECKPOINT, "The next checkpoint."),
                Port::new("digest", DIGEST, "Its canonical digest."),
                Port::new(
                    "contract",
                    BLOB,
                    "Its parameter contract (JSON): tensor names, shapes, dtypes, trainable flags, digest.",
                ),
                Port::new(
                    "momentum",
                    BLOB,
                    "The outer optimizer's velocity, carried to the next cycle.",
                ),
                Port::new("merged", Type::Int, "How many updates were merged."),
            ],
            MergeMode::Release => vec![
                Port::new("checkpoint", CHECKPOINT, "The released checkpoint."),
                Port::new("digest", DIGEST, "Its canonical digest."),
                Port::new(
                    "contract",
                    BLOB,
                    "Its parameter contract (JSON): tensor names, shapes, dtypes, trainable flags, digest.",
                ),
            ],
        }
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let missing = |port: &str, mode: &str| {
            Diagnostic::error(
                "missing-setting",
                format!("`mode: {mode}` needs input `{port}`"),
            )
            .at(cx.span_of("mode"))
        };
        let mut out = Vec::new();
        match self.mode {
            MergeMode::Apply if self.gradients.is_none() => out.push(missing("gradients", "apply")),
            MergeMode::Release if self.states.is_none() => out.push(missing("states", "release")),
            MergeMode::Apply
                if self.policy == Policy::Weighted
                    && self.scores.is_some()
                    && self.verdicts.is_none() =>
            {
                out.push(
                    Diagnostic::error(
                        "missing-setting",
                        "`policy: weighted` weighs each gradient by its verdict's score: scores by uid cannot say which gradient is whose",
                    )
                    .at(cx.span_of("scores"))
                    .hint("pass the verify stage's verdicts: `verdicts: \"${{ stages.score.outputs.verdicts }}\"`"),
                )
            }
            _ => {}
        }
        if let Value::Lit(0) = self.fragments {
            out.push(
                Diagnostic::error("invalid-value", "`fragments` must be at least 1")
                    .at(cx.span_of("fragments")),
            );
        }
        if let Value::Lit(t) = self.trim
            && !(0.0..0.5).contains(&t)
        {
            out.push(
                Diagnostic::error(
                    "invalid-value",
                    format!("`trim` is a fraction in [0, 0.5), got {t}"),
                )
                .at(cx.span_of("trim")),
            );
        }
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let what = match self.mode {
            MergeMode::Apply => format!(
                "merge gradients ({:?}), apply with {:?} lr {}",
                self.policy,
                self.optimizer,
                cx.render(&self.lr)
            )
            .to_lowercase(),
            MergeMode::Split => format!(
                "split trainable tensors into {} fragments",
                cx.render(&self.fragments)
            ),
            MergeMode::Release => {
                "release a full checkpoint from the latest fragment states and the base tree"
                    .to_owned()
            }
        };
        vec![Effect::compute(None, what)]
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let base = read_tensors(cx, &cx.input(&self.checkpoint)?, "checkpoint").await?;
            match self.mode {
                MergeMode::Split => self.split(cx, &base),
                MergeMode::Apply => self.apply(cx, base).await,
                MergeMode::Release => self.release(cx, &base).await,
            }
        })
    }
}

impl Merge {
    fn split(&self, cx: &StageRun, base: &TensorSet) -> Result<Outputs, StageError> {
        let fragments = fragments::split_tensors(&base.layout.tensors, cx.get(&self.fragments)?)
            .map_err(|e| StageError::final_(e.to_string()))?;
        let records = fragments
            .iter()
            .map(|f| {
                Val::Map(BTreeMap::from([
                    ("index".to_owned(), Val::Int(i64::from(f.index))),
                    (
                        "tensors".to_owned(),
                        Val::List(f.tensors.iter().cloned().map(Val::Str).collect()),
                    ),
                    ("params".to_owned(), Val::Int(f.params as i64)),
                ]))
            })
            .collect();
        Ok(BTreeMap::from([(
            "fragments".to_owned(),
            Val::List(records),
        )]))
    }

    async fn apply(&self, cx: &StageRun, mut base: TensorSet) -> Result<Outputs, StageError> {
        let input = self
            .gradients
            .as_ref()
            .ok_or_else(|| StageError::final_("`gradients:` is missing"))?;
        let mut updates = Vec::new();
        let blobs = cx.input(input)?;
        for (i, blob) in blobs.artifacts().into_iter().enumerate() {
            let sparse = codec::decode(&cx.read_artifact(blob).await?, Limits::default())
                .and_then(|s| s.check_layout(&base.layout).map(|()| s))
                .and_then(|s| s.to_dense())
                .map_err(|e| StageError::final_(format!("gradient {i}: {e}")))?;
            updates.push(sparse);
        }
        let weights = match self.policy {
            Policy::Weighted => self.update_weights(cx, updates.len()).await?,
            _ => vec![1.0; updates.len()],
        };
        // Work weighted zero moves nothing; with nothing left the checkpoint stays as it is.
        let kept: Vec<(&[f32], f64)> = updates
            .iter()
            .map(Vec::as_slice)
            .zip(weights)
            .filter(|(_, w)| *w > 0.0)
            .collect();
        if kept.is_empty() {
            tracing::warn!(stage = %cx.stage().id, "no accepted update to merge: the checkpoint stays as it is");
            let velocity = self.carried_velocity(cx, base.values.len()).await;
            return self.merged(cx, &base, velocity, 0).await;
        }
        let (views, weights): (Vec<&[f32]>, Vec<f64>) = kept.into_iter().unzip();
        let update = outer::combine(&views, &weights, self.policy, cx.get(&self.trim)?)
            .map_err(|e| StageError::final_(e.to_string()))?;
        let mut velocity = self.carried_velocity(cx, base.values.len()).await;
        outer::step(
            &mut base.values,
            &update,
            self.optimizer,
            cx.get(&self.lr)?,
            cx.get(&self.momentum)?,
            &mut velocity,
        )
        .map_err(|e| StageError::final_(e.to_string()))?;
        self.merged(cx, &base, velocity, views.len()).await
    }

    /// The outputs of `apply`: the checkpoint, the velocity carried to the next cycle (zeros
    /// when there is none yet), and how many updates went in.
    async fn merged(
        &self,
        cx: &StageRun,
        checkpoint: &TensorSet,
        mut velocity: Vec<f32>,
        merged: usize,
    ) -> Result<Outputs, StageError> {
        velocity.resize(checkpoint.values.len(), 0.0);
        let momentum = TensorSet::flat(velocity)
            .to_safetensors("momentum")
            .map_err(|e| StageError::final_(e.to_string()))?;
        let mut out = write_checkpoint(cx, checkpoint).await?;
        out.insert(
            "momentum".to_owned(),
            Val::Artifact(cx.write_artifact("momentum", momentum).await?),
        );
        out.insert("merged".to_owned(), Val::Int(merged as i64));
        Ok(out)
    }

    /// `weighted`: one weight per gradient — the scores of the accepted verdicts (`verdicts:`,
    /// in the order verify accepted the work); without verdicts, 1 each.
    async fn update_weights(&self, cx: &StageRun, count: usize) -> Result<Vec<f64>, StageError> {
        if let Some(verdicts) = &self.verdicts {
            let scores: Vec<f64> = accepted_verdicts(cx, verdicts)
                .await?
                .iter()
                .map(|v| v.score)
                .collect();
            if scores.len() != count {
                return Err(StageError::final_(format!(
                    "`verdicts` accept {} miners but {count} gradients were given: take both from the same verify stage",
                    scores.len()
                )));
            }
            return Ok(scores);
        }
        Ok(vec![1.0; count])
    }

    /// Last cycle's velocity; none (zeros) on the first cycle or when the model changed shape.
    async fn carried_velocity(&self, cx: &StageRun, len: usize) -> Vec<f32> {
        let Some(Val::Artifact(previous)) = cx.previous().and_then(|p| p.get("momentum").cloned())
        else {
            return Vec::new();
        };
        let carried = match cx.read_artifact(&previous).await {
            Ok(bytes) => TensorSet::from_safetensors(&bytes).map(|t| t.values).ok(),
            Err(_) => None,
        };
        match carried {
            Some(values) if values.len() == len => values,
            _ => {
                tracing::warn!(stage = %cx.stage().id, "last cycle's momentum does not fit this checkpoint: starting from zero");
                Vec::new()
            }
        }
    }

    async fn release(&self, cx: &StageRun, base: &TensorSet) -> Result<Outputs, StageError> {
        let input = self
            .states
            .as_ref()
            .ok_or_else(|| StageError::final_("`states:` is missing"))?;
        let accepted: Option<BTreeSet<String>> = match &self.verdicts {
            Some(verdicts) => Some(
                accepted_verdicts(cx, verdicts)
                    .await?
                    .into_iter()
                    .filter_map(|v| v.work)
                    .collect(),
            ),
            None => None,
        };
        let mut states = Vec::new();
        let given = cx.input(input)?;
        for state in given.artifacts() {
            if let Some(accepted) = &accepted
                && !accepted.contains(&state.digest)
            {
                tracing::info!(stage = %cx.stage().id, state = %state.digest, "a fragment state no verdict accepted is left out");
                continue;
            }
            states.push(
                TensorSet::from_safetensors(&cx.read_artifact(state).await?)
                    .map_err(|e| StageError::final_(format!("a fragment state: {e}")))?,
            );
        }
        let released =
            fragments::release(base, &states).map_err(|e| StageError::final_(e.to_string()))?;
        write_checkpoint(cx, &released).await
    }
}

/// The verdicts that accepted the work they judged, in the order they were given.
async fn accepted_verdicts(cx: &StageRun, verdicts: &Input) -> Result<Vec<Verdict>, StageError> {
    let Val::Artifact(artifact) = cx.input(verdicts)? else {
        return Err(StageError::final_("`verdicts` is not an artifact"));
    };
    let verdicts: Vec<Signed<Verdict>> =
        serde_json::from_slice(&cx.read_artifact(&artifact).await?)
            .map_err(|e| StageError::final_(format!("`verdicts`: {e}")))?;
    Ok(verdicts
        .into_iter()
        .map(|v| v.body)
        .filter(Verdict::accepted)
        .collect())
}

async fn read_tensors(cx: &StageRun, value: &Val, what: &str) -> Result<TensorSet, StageError> {
    let Val::Artifact(artifact) = value else {
        return Err(StageError::final_(format!("`{what}` is not an artifact")));
    };
    TensorSet::from_safetensors(&cx.read_artifact(artifact).await?)
        .map_err(|e| StageError::final_(format!("the {what}: {e}")))
}

/// A checkpoint's outputs: the file, its canonical digest and its contract.
pub(crate) async fn write_checkpoint(
    cx: &StageRun,
    set: &TensorSet,
) -> Result<Outputs, StageError> {
    let bytes = set
        .to_safetensors("checkpoint")
        .map_err(|e| StageError::final_(e.to_string()))?;
    let contract = serde_json::to_vec_pretty(&checkpoint::contract(set, None))
        .map_err(|e| StageError::final_(e.to_string()))?;
    Ok(BTreeMap::from([
        ("digest".to_owned(), Val::Str(digest(set))),
        (
            "contract".to_owned(),
            Val::Artifact(cx.write_artifact("blob", contract).await?),
        ),
        (
            "checkpoint".to_owned(),
            Val::Artifact(cx.write_artifact("checkpoint", bytes).await?),
        ),
    ]))
}
