//! The embedded ledger (`local://DIR`) and the chain kinds on it: concurrent writers, a
//! crash mid-line, commitments committed once and read back, miners listed, weights set
//! from scores.

mod common;

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::effects::{CallScope, Request, Transport};
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_stages::live::local_chain::{EntryKind, LocalChain};
use gradline_stages::live::{LiveOptions, connect};
use schemars::JsonSchema;
use serde::Deserialize;

fn scratch(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gradline-chain-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn commit(chain: &LocalChain, data: &str) -> serde_json::Value {
    let request = Request::new(
        "chain",
        "commit",
        serde_json::json!({ "netuid": 3, "data": data }),
    );
    chain
        .call(&CallScope::scheduler(0), request)
        .await
        .unwrap()
        .value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_each_get_a_uid_and_no_entry_is_lost() {
    let dir = scratch("concurrent");
    let url = format!("local://{}", dir.display());
    let writers: Vec<LocalChain> = (0..6)
        .map(|i| {
            LocalChain::open(
                &url,
                Duration::from_millis(50),
                &format!("miner-{i}"),
                "miner",
            )
            .unwrap()
        })
        .collect();
    let tasks: Vec<_> = writers
        .iter()
        .cloned()
        .map(|chain| {
            tokio::spawn(async move {
                for n in 0..10 {
                    commit(&chain, &format!("{}-{n}", chain.hotkey())).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let entries = writers[0].entries().unwrap();
    assert_eq!(
        entries.len(),
        6 * 11,
        "six registrations and sixty commitments"
    );
    assert!(
        entries.iter().enumerate().all(|(i, e)| e.seq == i as u64),
        "one sequence"
    );
    let registered: Vec<_> = entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Register { .. }))
        .map(|e| e.hotkey.clone())
        .collect();
    let mut unique = registered.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 6, "each writer registered once");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_line_cut_short_by_a_crash_is_dropped_and_the_ledger_goes_on() {
    let dir = scratch("crash");
    let url = format!("local://{}", dir.display());
    let chain =
        LocalChain::open(&url, Duration::from_millis(50), "validator", "validator").unwrap();
    commit(&chain, "first").await;
    let ledger = dir.join("ledger.jsonl");
    let mut text = std::fs::read(&ledger).unwrap();
    text.extend_from_slice(b"{\"seq\":2,\"block\":0,\"netuid\":3,\"hot");
    std::fs::write(&ledger, &text).unwrap();
    assert_eq!(
        chain.entries().unwrap().len(),
        2,
        "the torn line is not an entry"
    );
    commit(&chain, "second").await;
    let entries = chain.entries().unwrap();
    assert_eq!(entries.len(), 3);
    assert!(matches!(&entries[2].kind, EntryKind::Commit { data } if data == "second"));
    assert!(
        std::fs::read_to_string(&ledger)
            .unwrap()
            .lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scores as a verifier would hand them on (`verify` lands with its own issue).
#[derive(Debug, Deserialize, JsonSchema)]
struct FixedScores {
    json: String,
}

impl StageKind for FixedScores {
    const NAME: &'static str = "fixed-scores";
    const DESCRIPTION: &'static str = "test scores";
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("scores", Type::Named("scores"), "")]
    }
    fn effects(&self, _: &PlanContext) -> Vec<Effect> {
        Vec::new()
    }
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let scores = cx
                .write_artifact("scores", self.json.clone().into_bytes())
                .await?;
            Ok(BTreeMap::from([(
                "scores".to_owned(),
                Val::Artifact(scores),
            )]))
        })
    }
}

const VALIDATOR: &str = "version: 1
name: ledger-validator
role: validator
resources:
  chain: { url: \"local://DIR\", netuid: 3, block_time: 100ms }
  keys: { signing: { generated: validator } }
stages:
  anchor:
    uses: commit
    with:
      what: commitment
      commitment: { repo: demo/ckpt, revision: 0123456789abcdef0123456789abcdef01234567, digest: \"DIGEST\" }
  scores:
    uses: fixed-scores
    with: { json: '{\"0\": 0.9}' }
  weights:
    uses: commit
    needs: anchor
    with: { what: weights, scores: \"${{ stages.scores.outputs.scores }}\", policy: winner-take-all, epsilon: 0.05, burn: 0.1, burn_uid: 1 }
  read:
    uses: read-commitment
    needs: anchor
    with: { uid: 1 }
  everyone:
    uses: miners
    needs: anchor
";

#[tokio::test(flavor = "multi_thread")]
async fn a_commitment_is_written_once_read_back_and_weights_follow_the_scores() {
    let dir = scratch("kinds");
    let digest = "ab".repeat(32);
    let text = VALIDATOR
        .replace("DIR", &dir.display().to_string())
        .replace("DIGEST", &digest);
    let mut registry = gradline_stages::registry();
    registry.register::<FixedScores>();
    let pipeline = gradline_engine::load("v.yaml", &text, &registry, &[])
        .pipeline
        .unwrap();
    let env =
        |name: &str| (name == "GRADLINE_CACHE").then(|| dir.join("cache").display().to_string());
    let live: Arc<dyn Transport> =
        Arc::new(connect(&pipeline, &env, &LiveOptions::from_env(&env)).unwrap());
    // A miner registered first: uid 0. The validator becomes uid 1 on its first write.
    let url = format!("local://{}", dir.display());
    let miner = LocalChain::open(&url, Duration::from_millis(100), "miner", "miner").unwrap();
    commit(&miner, "a miner's own format").await;
    let (run, outcome) = common::try_run_pipeline(
        "ledger",
        &text,
        &registry,
        live,
        2,
        Duration::from_millis(300),
    )
    .await;
    outcome.unwrap();
    let entries = run.dir.entries().unwrap();
    let of = |stage: &str, cycle: u64| {
        entries
            .iter()
            .find(|e| e.stage == stage && e.cycle == cycle)
            .unwrap_or_else(|| panic!("{stage} in cycle {cycle}"))
            .outputs
            .clone()
    };
    let Val::Str(first) = &of("anchor", 0)["extrinsic"] else {
        panic!()
    };
    assert!(first.starts_with("0x"));
    assert_eq!(
        of("anchor", 1)["extrinsic"],
        Val::Str(String::new()),
        "the same value is not committed twice"
    );
    let read = of("read", 0);
    assert_eq!(read["repo"], Val::Str("demo/ckpt".into()));
    assert_eq!(read["digest"], Val::Str(digest.clone()));
    let everyone = of("everyone", 0);
    assert_eq!(everyone["count"], Val::Int(1), "validators left out");
    let Val::List(listed) = &everyone["miners"] else {
        panic!()
    };
    assert_eq!(listed[0].field("uid"), Some(&Val::Int(0)));
    assert_eq!(
        listed[0].field("repo"),
        Some(&Val::Str(String::new())),
        "not a gradline commitment"
    );
    let Val::Artifact(set) = &of("weights", 0)["weights"] else {
        panic!()
    };
    let set: serde_json::Value =
        serde_json::from_slice(&run.dir.objects.get(set).unwrap()).unwrap();
    assert_eq!(
        set,
        serde_json::json!({ "uids": [0, 1], "weights": [65535, 7282] }),
        "0.9 to the winner, 0.1 burned"
    );
    let ledger =
        LocalChain::open(&url, Duration::from_millis(100), "validator", "validator").unwrap();
    let commits = ledger
        .entries()
        .unwrap()
        .iter()
        .filter(|e| e.hotkey == ledger.hotkey() && matches!(e.kind, EntryKind::Commit { .. }))
        .count();
    assert_eq!(commits, 1);
    let _ = std::fs::remove_dir_all(&dir);
}
