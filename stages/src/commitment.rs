//! `read-commitment`: read one neuron's latest commitment — how a miner learns the exact
//! revision its validator published.

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

use crate::artifacts::{DIGEST, REVISION};
use crate::{chain, require_resource};

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
            Port::new("hotkey", Type::Text, "The committer's hotkey."),
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
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let netuid = crate::chain_netuid(cx)?;
            let hotkey = self.hotkey.as_ref().map(|h| cx.get(h)).transpose()?;
            let uid = self.uid.as_ref().map(|u| cx.get(u)).transpose()?;
            let miners = chain::miners(&cx.effects, netuid, true).await?;
            let found = miners.iter().find(|(n, _)| match (&hotkey, uid) {
                (Some(h), _) => &n.hotkey == h,
                (None, Some(u)) => i64::from(n.uid) == u,
                (None, None) => false,
            });
            let who = hotkey
                .clone()
                .unwrap_or_else(|| format!("uid {}", uid.unwrap_or(-1)));
            let Some((neuron, latest)) = found else {
                return Err(StageError::retryable(format!(
                    "{who} is not registered on netuid {netuid}"
                )));
            };
            let Some((committed, decoded)) = latest else {
                return Err(StageError::retryable(format!(
                    "{who} has committed nothing yet"
                )));
            };
            let Some(commitment) = decoded else {
                return Err(StageError::final_(format!(
                    "{who}'s commitment is not a gradline commitment: `{}`",
                    committed.data
                )));
            };
            if let Some(max_age) = self
                .max_age_blocks
                .as_ref()
                .map(|m| cx.get(m))
                .transpose()?
            {
                let now = chain::block(&cx.effects).await?;
                if now.saturating_sub(committed.block) > u64::from(max_age) {
                    return Err(StageError::retryable(format!(
                        "{who}'s commitment is from block {}, more than {max_age} blocks before {now}",
                        committed.block
                    )));
                }
            }
            let text = |v: &Option<String>| Val::Str(v.clone().unwrap_or_default());
            Ok(BTreeMap::from([
                ("repo".to_owned(), text(&commitment.repo)),
                ("revision".to_owned(), text(&commitment.revision)),
                ("digest".to_owned(), text(&commitment.digest)),
                ("block".to_owned(), Val::Int(committed.block as i64)),
                ("hotkey".to_owned(), Val::Str(neuron.hotkey.clone())),
            ]))
        })
    }
}
