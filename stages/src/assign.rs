//! `assign`: the orchestrator's job board — each miner gets a fragment and a token shard for
//! this window, in a job signed by the orchestrator and published to the store.

use gradline_engine::Diagnostic;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Input, Port, StageKind};
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::artifacts::{CHECKPOINT, FRAGMENT, JOB, MINER};
use crate::require_resource;

/// Assign fragments and token shards to miners as signed jobs.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Assign {
    /// The fragments to hand out.
    pub fragments: Input,
    /// The miners receiving jobs.
    pub miners: Input,
    /// The checkpoint the jobs start from (its revision goes into each job).
    pub checkpoint: Input,
    /// The store prefix of token shards.
    #[serde(default = "default_data")]
    pub data: Value<String>,
    /// The store prefix jobs are written under (`PREFIX/WINDOW/UID.json`).
    #[serde(default = "default_jobs")]
    pub jobs: Value<String>,
    /// Blocks a miner has to deliver.
    #[serde(default = "default_deadline")]
    pub deadline_blocks: Value<u32>,
}

fn default_data() -> Value<String> {
    Value::Lit("data/shards".into())
}
fn default_jobs() -> Value<String> {
    Value::Lit("jobs".into())
}
fn default_deadline() -> Value<u32> {
    Value::Lit(10)
}

impl StageKind for Assign {
    const NAME: &'static str = "assign";
    const DESCRIPTION: &'static str =
        "Assign fragments and token shards to miners as orchestrator-signed jobs.";

    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("fragments", Type::list(FRAGMENT), "The fragments."),
            Port::new("miners", Type::list(MINER), "The miners."),
            Port::new("checkpoint", CHECKPOINT, "The base checkpoint."),
        ]
    }

    fn outputs(&self) -> Vec<Port> {
        vec![Port::new(
            "jobs",
            Type::list(JOB),
            "One signed job per miner.",
        )]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = require_resource(
            cx.resources.store.is_some(),
            "store",
            "publishing jobs",
            cx,
            "jobs",
        )
        .into_iter()
        .collect();
        if cx.resources.keys.is_none() {
            out.push(
                Diagnostic::error(
                    "missing-resource",
                    "signing jobs needs `resources.keys.signing`",
                )
                .at(cx.span_of("fragments"))
                .hint("e.g. `keys: { signing: { env: ORCHESTRATOR_KEY } }`"),
            );
        }
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        vec![
            Effect::write(
                "store",
                cx.store(),
                format!("{}/<cycle.window>/<uid>.json", cx.render(&self.jobs)),
            )
            .note(format!(
                "signed jobs over shards in {}",
                cx.render(&self.data)
            )),
        ]
    }
}
