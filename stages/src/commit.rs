//! `commit`: write to the chain — a commitment (a revision SHA, a checkpoint hash, a model
//! repo and revision) or weights computed from scores. Idempotent: a value already on chain
//! is not committed again.

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
use serde::{Deserialize, Serialize};

use crate::artifacts::{SCORES, WEIGHTS};
use crate::chain::{self, Commitment as Committed, WeightsArgs};
use crate::require_resource;
use crate::weights::{self, Burn, Policy};

/// Write a commitment or weights to the chain.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// What is written.
    pub what: What,
    /// commitment: its fields (stored as typed, versioned JSON, or as a 32-byte hash).
    #[serde(default)]
    pub commitment: Option<Commitment>,
    /// weights: the scores weights are computed from.
    #[serde(default)]
    pub scores: Option<Input>,
    /// weights: how scores become weights.
    #[serde(default)]
    pub policy: WeightPolicy,
    /// weights, `winner-take-all`: a challenger must beat the king by more than this fraction.
    #[serde(default = "default_epsilon")]
    pub epsilon: Value<f64>,
    /// weights, `top-n`: how many miners share the weight.
    #[serde(default)]
    pub top_n: Option<Value<u32>>,
    /// weights: the fraction of weight sent to `burn_uid`.
    #[serde(default)]
    pub burn: Value<f64>,
    /// weights: the uid receiving the burned fraction.
    #[serde(default)]
    pub burn_uid: Value<u16>,
    /// weights: the subnet's weights version key.
    #[serde(default)]
    pub version_key: Value<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum What {
    /// `Commitments.set_commitment` for this hotkey.
    Commitment,
    /// `SubtensorModule.set_weights`.
    Weights,
}

/// The fields of a commitment; at least one is given.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Commitment {
    /// A hub repository, `owner/name`.
    #[serde(default)]
    pub repo: Option<Value<String>>,
    /// A hub revision (commit SHA).
    #[serde(default)]
    pub revision: Option<Value<String>>,
    /// A content digest (committed as a 32-byte hash when it is the only field).
    #[serde(default)]
    pub digest: Option<Value<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WeightPolicy {
    /// Scores normalized to sum to one.
    #[default]
    Normalized,
    /// All weight to the best, who must beat the king by more than `epsilon`.
    WinnerTakeAll,
    /// Equal weight to the best `top_n`.
    TopN,
}

fn default_epsilon() -> Value<f64> {
    Value::Lit(0.01)
}

impl StageKind for Commit {
    const NAME: &'static str = "commit";
    const DESCRIPTION: &'static str =
        "Write a commitment (revision SHA, hash) or weights from scores to the chain, once.";

    fn inputs(&self) -> Vec<Port> {
        vec![Port::new(
            "scores",
            SCORES,
            "The scores weights are computed from.",
        )]
    }

    fn outputs(&self) -> Vec<Port> {
        let mut ports = vec![
            Port::new(
                "block",
                Type::Int,
                "The block the extrinsic was included in (or where the value already was).",
            ),
            Port::new(
                "extrinsic",
                Type::Text,
                "The extrinsic hash; empty when skipped as already committed.",
            ),
        ];
        if self.what == What::Weights {
            ports.push(Port::new("weights", WEIGHTS, "The u16 weights set."));
        }
        ports
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = require_resource(
            cx.resources.chain.is_some(),
            "chain",
            "writing to the chain",
            cx,
            "what",
        )
        .into_iter()
        .collect();
        match self.what {
            What::Commitment => {
                let empty = self
                    .commitment
                    .as_ref()
                    .is_none_or(|c| c.repo.is_none() && c.revision.is_none() && c.digest.is_none());
                if empty {
                    out.push(
                        Diagnostic::error("missing-setting", "`what: commitment` needs `commitment:` with `repo`, `revision` or `digest`")
                            .at(cx.span_of("what")),
                    );
                }
            }
            What::Weights => {
                if self.scores.is_none() {
                    out.push(
                        Diagnostic::error(
                            "missing-setting",
                            "`what: weights` needs input `scores`",
                        )
                        .at(cx.span_of("what")),
                    );
                }
                if self.policy == WeightPolicy::TopN && self.top_n.is_none() {
                    out.push(
                        Diagnostic::error("missing-setting", "`policy: top-n` needs `top_n`")
                            .at(cx.span_of("policy")),
                    );
                }
                if let Value::Lit(b) = self.burn
                    && !(0.0..=1.0).contains(&b)
                {
                    out.push(
                        Diagnostic::error(
                            "invalid-value",
                            format!("`burn` is a fraction in [0, 1], got {b}"),
                        )
                        .at(cx.span_of("burn")),
                    );
                }
            }
        }
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let effect = match self.what {
            What::Commitment => {
                let c = self.commitment.as_ref();
                let fields: Vec<String> = [
                    ("repo", c.and_then(|c| cx.render_opt(&c.repo))),
                    ("revision", c.and_then(|c| cx.render_opt(&c.revision))),
                    ("digest", c.and_then(|c| cx.render_opt(&c.digest))),
                ]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
                .collect();
                Effect::write(
                    "chain",
                    cx.chain(),
                    format!("Commitments.set_commitment({})", fields.join(", ")),
                )
            }
            What::Weights => {
                let policy = match self.policy {
                    WeightPolicy::Normalized => "normalized".to_owned(),
                    WeightPolicy::WinnerTakeAll => {
                        format!("winner-take-all, epsilon {}", cx.render(&self.epsilon))
                    }
                    WeightPolicy::TopN => {
                        format!("top {}", cx.render_opt(&self.top_n).unwrap_or_default())
                    }
                };
                Effect::write(
                    "chain",
                    cx.chain(),
                    format!(
                        "SubtensorModule.set_weights(version_key {})",
                        cx.render(&self.version_key)
                    ),
                )
                .note(policy)
            }
        };
        let note = match effect.note.as_deref() {
            Some(policy) => format!("{policy}; signed extrinsic, costs a fee"),
            None => "signed extrinsic, costs a fee".to_owned(),
        };
        vec![
            Effect::read(
                "chain",
                cx.chain(),
                "the current value, to skip a commit already made",
            ),
            effect.note(note),
        ]
    }
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let netuid = match cx.stage_resources().chain.as_ref() {
                Some(c) => cx.get(&c.netuid)?,
                None => {
                    return Err(StageError::final_(
                        "writing to the chain needs `resources.chain`",
                    ));
                }
            };
            match self.what {
                What::Commitment => self.commit_fields(cx, netuid).await,
                What::Weights => self.set_weights(cx, netuid).await,
            }
        })
    }
}

impl Commit {
    async fn commit_fields(&self, cx: &StageRun, netuid: u16) -> Result<Outputs, StageError> {
        let fields = self
            .commitment
            .as_ref()
            .ok_or_else(|| StageError::final_("`commitment:` is missing"))?;
        let get = |v: &Option<Value<String>>| v.as_ref().map(|v| cx.get(v)).transpose();
        let data = Committed {
            v: Committed::VERSION,
            repo: get(&fields.repo)?,
            revision: get(&fields.revision)?,
            digest: get(&fields.digest)?,
        };
        let written = chain::commit(
            &cx.effects,
            chain::CommitArgs {
                netuid,
                data: data.encode(),
            },
        )
        .await?;
        if written.skipped {
            tracing::info!(stage = %cx.stage().id, block = written.block, "already committed: skipped");
        }
        Ok(BTreeMap::from([
            ("block".to_owned(), Val::Int(written.block as i64)),
            ("extrinsic".to_owned(), Val::Str(written.extrinsic)),
        ]))
    }

    async fn set_weights(&self, cx: &StageRun, netuid: u16) -> Result<Outputs, StageError> {
        let input = self
            .scores
            .as_ref()
            .ok_or_else(|| StageError::final_("`scores:` is missing"))?;
        let json = match cx.input(input)? {
            Val::Artifact(a) => serde_json::from_slice(&cx.read_artifact(&a).await?)
                .map_err(|e| StageError::final_(format!("the scores are not JSON: {e}")))?,
            other => other.to_json(),
        };
        let scores = weights::parse_scores(&json).map_err(StageError::final_)?;
        let policy = match self.policy {
            WeightPolicy::Normalized => Policy::Normalized,
            WeightPolicy::WinnerTakeAll => Policy::WinnerTakeAll {
                epsilon: cx.get(&self.epsilon)?,
                king: self.previous_king(cx).await,
            },
            WeightPolicy::TopN => Policy::TopN {
                n: self
                    .top_n
                    .as_ref()
                    .map(|n| cx.get(n))
                    .transpose()?
                    .unwrap_or(1) as usize,
            },
        };
        let fraction = cx.get(&self.burn)?;
        let burn = (fraction > 0.0).then_some(Burn {
            fraction,
            uid: cx.get(&self.burn_uid)?,
        });
        let fractions = weights::weights(&scores, policy, burn)
            .map_err(|e| StageError::final_(e.to_string()))?;
        let (uids, values) = weights::to_u16(&fractions);
        if uids.is_empty() {
            return Err(StageError::final_(
                "no miner earned weight and no burn is configured: nothing to set",
            ));
        }
        let args = WeightsArgs {
            netuid,
            uids,
            weights: values,
            version_key: cx.get(&self.version_key)?,
        };
        let body =
            serde_json::to_vec(&serde_json::json!({ "uids": args.uids, "weights": args.weights }))
                .map_err(|e| StageError::final_(e.to_string()))?;
        let written = chain::set_weights(&cx.effects, args).await?;
        let set = cx.write_artifact("weights", body).await?;
        Ok(BTreeMap::from([
            ("block".to_owned(), Val::Int(written.block as i64)),
            ("extrinsic".to_owned(), Val::Str(written.extrinsic)),
            ("weights".to_owned(), Val::Artifact(set)),
        ]))
    }

    /// Last cycle's winner: the uid this stage gave the most weight.
    async fn previous_king(&self, cx: &StageRun) -> Option<u16> {
        let Some(Val::Artifact(previous)) = cx.previous()?.get("weights").cloned() else {
            return None;
        };
        let json: serde_json::Value =
            serde_json::from_slice(&cx.read_artifact(&previous).await.ok()?).ok()?;
        let uids: Vec<u16> = serde_json::from_value(json["uids"].clone()).ok()?;
        let values: Vec<u16> = serde_json::from_value(json["weights"].clone()).ok()?;
        uids.into_iter()
            .zip(values)
            .max_by_key(|&(uid, w)| (w, std::cmp::Reverse(uid)))
            .map(|(uid, _)| uid)
    }
}
