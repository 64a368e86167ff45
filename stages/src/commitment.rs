//! `read-commitment`: read one neuron's latest commitment — how a miner learns the exact
//! revision its validator published.

use gradline_engine::Diagnostic;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Port, StageKind};
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::artifacts::{DIGEST, REVISION};
use crate::require_resource;

/// Read a neuron's latest commitment.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadCommitment {
    /// The neuron's hotkey (ss58).
    #[serde(default)]
    pub hotkey: Option<Value<String>>,
    /// Or its uid.
    #[serde(default)]
    pub uid: Option<Value<i64>>,
    /// Fail when the commitment is older than this many blocks.
    #[serde(default)]
    pub max_age_blocks: Option<Value<u32>>,
}

impl StageKind for ReadCommitment {
    const NAME: &'static str = "read-commitment";
    const DESCRIPTION: &'static str =
        "Read one neuron's latest commitment (repo, revision, digest) from the chain.";

    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("repo", Type::Text, "The committed hub repository."),
            Port::new("revision", REVISION, "The committed revision SHA."),
            Port::new("digest", DIGEST, "The committed digest."),
            Port::new("block", Type::Int, "The block it was committed at."),
        ]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = require_resource(
            cx.resources.chain.is_some(),
            "chain",
            "reading a commitment",
            cx,
            "uid",
        )
        .into_iter()
        .collect();
        if self.hotkey.is_some() == self.uid.is_some() {
            out.push(
                Diagnostic::error("invalid-value", "give exactly one of `hotkey` or `uid`")
                    .at(cx.span_of("uid")),
            );
        }
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let who = match (&self.hotkey, &self.uid) {
            (Some(h), _) => format!("hotkey {}", cx.render(h)),
            (_, Some(u)) => format!("uid {}", cx.render(u)),
            _ => String::new(),
        };
        vec![Effect::read(
            "chain",
            cx.chain(),
            format!("Commitments.CommitmentOf({who})"),
        )]
    }
}
