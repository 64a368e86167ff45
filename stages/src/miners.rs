//! `miners`: read the subnet's registered neurons and their latest commitments from the
//! chain — the list a validator fans out over.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::Diagnostic;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::artifacts::MINER;
use crate::{chain, require_resource};

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
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let netuid = crate::chain_netuid(cx)?;
            let limit = self.limit.as_ref().map(|l| cx.get(l)).transpose()?;
            let miners: Vec<Val> = chain::miners(&cx.effects, netuid, self.commitments)
                .await?
                .iter()
                .filter(|(n, _)| !(self.exclude_validators && n.validator_permit))
                .take(limit.map_or(usize::MAX, |l| l as usize))
                .map(|(n, latest)| chain::miner_record(n, latest.as_ref()))
                .collect();
            Ok(BTreeMap::from([
                ("count".to_owned(), Val::Int(miners.len() as i64)),
                ("miners".to_owned(), Val::List(miners)),
            ]))
        })
    }
}

/// The items of a list of `miner` records.
pub(crate) fn miner_records(miners: &Val) -> Result<impl Iterator<Item = &Val>, StageError> {
    match miners {
        Val::List(items) => Ok(items.iter()),
        _ => Err(StageError::final_("`miners` is not a list of miners")),
    }
}

/// A `miner` record's uid.
pub(crate) fn uid_of(miner: &Val) -> Result<u16, StageError> {
    match miner.field("uid") {
        Some(Val::Int(uid)) => u16::try_from(*uid).ok(),
        _ => None,
    }
    .ok_or_else(|| StageError::final_("a miner without a uid"))
}

/// A text field of a record; empty when absent.
pub(crate) fn text_of(record: &Val, field: &str) -> String {
    match record.field(field) {
        Some(Val::Str(s)) => s.clone(),
        _ => String::new(),
    }
}
