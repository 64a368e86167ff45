//! `assign`: the orchestrator's job board — each miner gets a fragment and a token shard for
//! this window, in a job signed by the orchestrator and published to the store.

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
use serde::Deserialize;

use crate::artifacts::{CHECKPOINT, FRAGMENT, JOB, MINER};
use crate::data::assign;
use crate::miners::{miner_records, uid_of};
use crate::signed::{self, Job};
use crate::train::read_shard_index;
use crate::{chain, require_resource, store};

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
    /// Tokens per job (a miner trains on `batch × context + 1` of them).
    #[serde(default = "default_tokens")]
    pub tokens: Value<u64>,
    /// The hub revision the checkpoint was published at, written into each job.
    #[serde(default)]
    pub revision: Option<Value<String>>,
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
fn default_tokens() -> Value<u64> {
    Value::Lit(4097)
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
        out.extend(require_resource(
            cx.resources.chain.is_some(),
            "chain",
            "dating jobs' deadlines by block",
            cx,
            "deadline_blocks",
        ));
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
            Effect::read("chain", cx.chain(), "the current block (for deadlines)"),
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

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(self.assign(cx))
    }
}

/// A fragment record as `merge`'s `split` emits it.
struct FragmentRecord {
    index: u32,
    tensors: Vec<String>,
}

impl Assign {
    /// Writes one signed job per miner: miners in uid order take the fragments in turn,
    /// shifted by one each window so every fragment is trained; each job's tokens are drawn
    /// from the shards by (uid, window).
    async fn assign(&self, cx: &StageRun) -> Result<Outputs, StageError> {
        let fragments = fragment_records(&cx.input(&self.fragments)?)?;
        if fragments.is_empty() {
            return Err(StageError::final_("no fragments to assign"));
        }
        let mut uids = miner_records(&cx.input(&self.miners)?)?
            .map(uid_of)
            .collect::<Result<Vec<u16>, _>>()?;
        uids.sort_unstable();
        uids.dedup();
        let Val::Artifact(checkpoint) = cx.input(&self.checkpoint)? else {
            return Err(StageError::final_("`checkpoint` is not an artifact"));
        };
        let revision = match &self.revision {
            Some(r) => cx.get(r)?,
            None => String::new(),
        };
        let (data, prefix) = (cx.get(&self.data)?, cx.get(&self.jobs)?);
        let tokens = cx.get(&self.tokens)?.max(2);
        let index = read_shard_index(cx, &data).await?;
        let counts: Vec<u64> = index.shards.iter().map(|s| s.tokens).collect();
        let block = chain::block(&cx.effects).await?;
        let deadline_block = block + u64::from(cx.get(&self.deadline_blocks)?);
        let window = cx.window().max(0) as u64;
        let mut jobs = Vec::new();
        for (position, uid) in uids.iter().enumerate() {
            let fragment = &fragments[(position + window as usize) % fragments.len()];
            let at = assign(
                "gradline.job",
                i64::from(*uid),
                window as i64,
                &counts,
                tokens,
            )
            .map_err(|e| StageError::final_(e.to_string()))?;
            let job = Job {
                window,
                deadline_block,
                miner_uid: *uid,
                fragment: fragment.index,
                tensors: fragment.tensors.clone(),
                shard: index.shards[at.shard].name.clone(),
                offset: at.offset,
                tokens,
                checkpoint: checkpoint.digest.clone(),
                revision: revision.clone(),
            };
            let signed = signed::sign_with(&cx.effects, job).await?;
            let bytes = serde_json::to_vec_pretty(&signed)
                .map_err(|e| StageError::final_(e.to_string()))?;
            store::put(
                &cx.effects,
                &format!("{prefix}/{window}/{uid}.json"),
                bytes.clone(),
            )
            .await?;
            jobs.push(Val::Artifact(cx.write_artifact("jobs", bytes).await?));
            cx.progress(
                jobs.len() as u64,
                uids.len() as u64,
                format!("uid {uid}: fragment {}", fragment.index),
            );
        }
        Ok(BTreeMap::from([("jobs".to_owned(), Val::List(jobs))]))
    }
}

fn fragment_records(value: &Val) -> Result<Vec<FragmentRecord>, StageError> {
    let Val::List(items) = value else {
        return Err(StageError::final_("`fragments` is not a list of fragments"));
    };
    items
        .iter()
        .map(|f| {
            let index = match f.field("index") {
                Some(Val::Int(i)) => u32::try_from(*i).ok(),
                _ => None,
            };
            let tensors = match f.field("tensors") {
                Some(Val::List(names)) => names
                    .iter()
                    .map(|n| match n {
                        Val::Str(name) => Some(name.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            };
            match (index, tensors) {
                (Some(index), Some(tensors)) => Ok(FragmentRecord { index, tensors }),
                _ => Err(StageError::final_(
                    "a fragment without an index or tensor names",
                )),
            }
        })
        .collect()
}
