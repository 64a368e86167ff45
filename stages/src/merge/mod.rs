//! `merge`: aggregate accepted gradients and apply them with an outer optimizer; split a
//! checkpoint's trainable tensors into fragments; release a full checkpoint from the latest
//! absolute fragment states plus the base tree. The arithmetic lives in [`outer`] and
//! [`fragments`].

pub mod fragments;
pub mod outer;

use gradline_engine::Diagnostic;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Input, Port, StageKind};
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::{
    CHECKPOINT, COMPRESSED, DIGEST, FRAGMENT, FRAGMENT_STATE, SCORES, VERDICTS,
};

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
    /// apply: scores weighting the gradients.
    #[serde(default)]
    pub scores: Option<Input>,
    /// release: the accepted fragment states.
    #[serde(default)]
    pub states: Option<Input>,
    /// release: the validators' verdicts on those states.
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
            MergeMode::Apply | MergeMode::Release => vec![
                Port::new(
                    "checkpoint",
                    CHECKPOINT,
                    "The next checkpoint, with its contract.",
                ),
                Port::new("digest", DIGEST, "Its canonical digest."),
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
}
