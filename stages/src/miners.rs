//! `miners`: read the subnet's registered neurons and their latest commitments from the
//! chain — the list a validator fans out over.

use gradline_engine::Diagnostic;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Port, StageKind};
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::artifacts::MINER;
use crate::require_resource;

/// List the registered miners of the subnet.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Miners {
    /// Read each miner's latest commitment too.
    #[serde(default = "yes")]
    pub commitments: bool,
    /// Leave out neurons that hold a validator permit.
    #[serde(default = "yes")]
    pub exclude_validators: bool,
    /// Keep at most this many (by uid).
    #[serde(default)]
    pub limit: Option<Value<u32>>,
}

fn yes() -> bool {
    true
}

impl StageKind for Miners {
    const NAME: &'static str = "miners";
    const DESCRIPTION: &'static str =
        "Read the subnet's registered miners (uid, hotkey, latest commitment) from the chain.";

    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("miners", Type::list(MINER), "The miners, by uid."),
            Port::new("count", Type::Int, "How many."),
        ]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        require_resource(
            cx.resources.chain.is_some(),
            "chain",
            "reading the miner list",
            cx,
            "commitments",
        )
        .into_iter()
        .collect()
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let mut target = "SubtensorModule.Keys, Uids".to_owned();
        if self.commitments {
            target.push_str(", Commitments.CommitmentOf");
        }
        vec![Effect::read("chain", cx.chain(), target)]
    }
}
