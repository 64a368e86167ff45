//! The chain faces and the chain kinds on them. The embedded ledger (`local://DIR`):
//! concurrent writers, a crash mid-line. A subtensor node on loopback (`node`), spoken to
//! through subxt: connect, read, commit, inclusion, faults, a runtime mismatch. On both, a
//! validator pipeline commits once and skips after, reads back, lists miners and sets
//! weights from scores.

mod common;
mod node;

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
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
use gradline_stages::live::subtensor::{Subtensor, SubtensorConfig};
use gradline_stages::live::{LiveOptions, connect};
use gradline_stages::subtensor::FINNEY_METADATA;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use subxt_signer::SecretUri;
use subxt_signer::sr25519::Keypair;

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
    let live: Arc<dyn Transport> = Arc::new(
        connect(&pipeline, &env, &LiveOptions::from_env(&env))
            .await
            .unwrap(),
    );
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
    assert_validator_outputs(&run, &digest);
    let ledger =
        LocalChain::open(&url, Duration::from_millis(100), "validator", "validator").unwrap();
    let commits = ledger
        .entries()
        .unwrap()
        .iter()
        .filter(|e| e.hotkey == ledger.hotkey() && matches!(e.kind, EntryKind::Commit { .. }))
        .count();
    assert_eq!(commits, 1);
    let set = ledger
        .call(
            &CallScope::scheduler(0),
            Request::new("chain", "weights", json!({ "netuid": 3 })),
        )
        .await
        .unwrap()
        .value;
    assert_eq!(
        set,
        json!([{ "uid": 1, "weights": [[0, 65535], [1, 7282]] }]),
        "the latest weights, by the setter's uid"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the validator pipeline's two cycles must leave, on any chain: the commitment
/// written in cycle 0 and skipped in cycle 1, read back, the miner listed, the weights.
fn assert_validator_outputs(run: &common::TestRun, digest: &str) {
    let of = |stage: &str, cycle: u64| run.outputs(stage, cycle);
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
    assert_eq!(read["digest"], Val::Str(digest.to_owned()));
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
}

static NEXT: AtomicU32 = AtomicU32::new(0);

const PHRASE: &str = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";

fn keypair(who: &str) -> Keypair {
    Keypair::from_uri(&SecretUri::from_str(&format!("{PHRASE}//{who}")).unwrap()).unwrap()
}

async fn node_face(url: &str, who: &str, timeout: Duration) -> Result<Subtensor, String> {
    Subtensor::connect(SubtensorConfig {
        url: url.to_owned(),
        metadata: FINNEY_METADATA.to_vec(),
        key: keypair(who),
        inclusion_timeout: timeout,
        attempts: 3,
        uid_file: scratch(&format!(
            "uid-{who}-{}",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
        .join(".gradline-uid"),
    })
    .await
}

async fn ask(
    face: &Subtensor,
    op: &str,
    args: serde_json::Value,
) -> Result<serde_json::Value, String> {
    face.call(&CallScope::scheduler(0), Request::new("chain", op, args))
        .await
        .map(|r| r.value)
        .map_err(|e| e.message)
}

/// A node with a miner (uid 0) and the validator (uid 1, with a permit) on subnet 3.
fn subnet() -> node::Node {
    let node = node::Node::new(Mutex::new(node::State::new(FINNEY_METADATA.to_vec())));
    let mut state = node.lock().unwrap();
    state.register(3, 0, keypair("miner").public_key().0, false);
    state.register(3, 1, keypair("validator").public_key().0, true);
    drop(state);
    node
}

#[tokio::test(flavor = "multi_thread")]
async fn a_validator_pipeline_runs_on_a_subtensor_node() {
    let dir = scratch("subtensor");
    let node = subnet();
    let url = node::start(node.clone()).await;
    let miner = node_face(&url, "miner", Duration::from_secs(5))
        .await
        .unwrap();
    let commit_raw = json!({ "netuid": 3, "data": "a miner's own format" });
    ask(&miner, "commit", commit_raw).await.unwrap();

    // The validator signs from a Bittensor wallet hotkey file.
    let wallet = dir.join("hotkeys/default");
    std::fs::create_dir_all(wallet.parent().unwrap()).unwrap();
    let public = keypair("validator").public_key().0;
    let file = json!({
        "secretPhrase": format!("{PHRASE}//validator"),
        "publicKey": node::hex(&public),
    });
    std::fs::write(&wallet, file.to_string()).unwrap();
    let digest = "ab".repeat(32);
    let text = VALIDATOR
        .replace("local://DIR", &url)
        .replace(", block_time: 100ms", "")
        .replace(
            "{ generated: validator }",
            &format!("{{ file: \"{}\" }}", wallet.display()),
        )
        .replace("DIGEST", &digest);
    let mut registry = gradline_stages::registry();
    registry.register::<FixedScores>();
    let loaded = gradline_engine::load("v.yaml", &text, &registry, &[]);
    assert!(!loaded.has_errors(), "{}", loaded.render());
    let pipeline = loaded.pipeline.unwrap();
    let env =
        |name: &str| (name == "GRADLINE_CACHE").then(|| dir.join("cache").display().to_string());
    let live: Arc<dyn Transport> = Arc::new(
        connect(&pipeline, &env, &LiveOptions::from_env(&env))
            .await
            .unwrap(),
    );
    let (run, outcome) = common::try_run_pipeline(
        "subtensor",
        &text,
        &registry,
        live,
        2,
        Duration::from_millis(300),
    )
    .await;
    outcome.unwrap();
    assert_validator_outputs(&run, &digest);

    let state = node.lock().unwrap();
    let by_validator: Vec<_> = state
        .included
        .iter()
        .filter(|i| i.signer == public)
        .map(|i| format!("{}.{}", i.pallet, i.call))
        .collect();
    assert_eq!(
        by_validator,
        [
            "Commitments.set_commitment",
            "SubtensorModule.set_weights",
            "SubtensorModule.set_weights"
        ],
        "the commitment once, weights every cycle"
    );
    assert!(state.rejected.is_empty(), "{:?}", state.rejected);
    let stored = state.commitment(3, public).unwrap();
    assert_eq!(
        &stored[stored.len() - 32..],
        &[0xab; 32],
        "the digest is the last field, a Sha256 hash"
    );
    for method in [
        "state_getRuntimeVersion",
        "state_call",
        "state_getStorage",
        "state_getKeysPaged",
        "author_submitAndWatchExtrinsic",
        "chain_getBlock",
    ] {
        assert!(
            state.methods.iter().any(|m| m == method),
            "{method} not used"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commitment_reaches_a_block_through_drops_and_stalls_and_never_twice() {
    let node = subnet();
    let url = node::start(node.clone()).await;
    let face = node_face(&url, "validator", Duration::from_millis(800))
        .await
        .unwrap();
    let hotkey = keypair("validator").public_key().0;
    assert_eq!(
        face.hotkey(),
        keypair("validator")
            .public_key()
            .to_account_id()
            .to_string()
    );

    let head = ask(&face, "block", json!(null)).await.unwrap()["number"]
        .as_u64()
        .unwrap();
    assert_eq!(head, 4);
    let neurons = ask(&face, "neurons", json!({ "netuid": 3 })).await.unwrap();
    assert_eq!(neurons[1]["hotkey"], json!(face.hotkey()));
    assert_eq!(neurons[1]["validator_permit"], json!(true));
    assert_eq!(neurons[0]["validator_permit"], json!(false));

    node.lock()
        .unwrap()
        .faults
        .extend([node::Fault::Drop, node::Fault::Stall]);
    let data = json!({ "v": 1, "repo": "demo/ckpt", "revision": "01".repeat(20) }).to_string();
    let written = ask(&face, "commit", json!({ "netuid": 3, "data": data }))
        .await
        .unwrap();
    assert_eq!(written["skipped"], json!(false));
    assert_eq!(written["block"], json!(5), "included on the third try");
    let again = ask(&face, "commit", json!({ "netuid": 3, "data": data }))
        .await
        .unwrap();
    assert_eq!(again["skipped"], json!(true));
    assert_eq!(again["block"], json!(5));
    {
        let state = node.lock().unwrap();
        assert_eq!(state.included.len(), 1, "one extrinsic for one value");
        assert_eq!(state.included[0].block, 5);
        assert!(state.commitment(3, hotkey).is_some());
    }
    let read = ask(&face, "commitments", json!({ "netuid": 3 }))
        .await
        .unwrap();
    assert_eq!(read[0]["hotkey"], json!(face.hotkey()));
    assert_eq!(read[0]["data"], json!(data), "read back as it was written");

    node.lock().unwrap().faults.extend([node::Fault::Drop; 3]);
    let weights = json!({ "netuid": 3, "uids": [0], "weights": [65535], "version_key": 0 });
    let error = ask(&face, "set_weights", weights.clone())
        .await
        .unwrap_err();
    assert!(error.contains("was not included"), "{error}");
    let written = ask(&face, "set_weights", weights).await.unwrap();
    assert_eq!(written["block"], json!(6));
    let set = ask(&face, "weights", json!({ "netuid": 3 })).await.unwrap();
    assert_eq!(
        set,
        json!([{ "uid": 1, "weights": [[0, 65535]] }]),
        "read back by uid"
    );

    let unregistered = node_face(&url, "stranger", Duration::from_millis(800))
        .await
        .unwrap();
    let weights = json!({ "netuid": 3, "uids": [0], "weights": [1], "version_key": 0 });
    assert!(ask(&unregistered, "set_weights", weights).await.is_err());
    assert!(
        node.lock()
            .unwrap()
            .rejected
            .iter()
            .any(|r| r.contains("NotRegistered")),
        "the node refused the stranger"
    );
    let too_long = json!({ "netuid": 3, "data": "x".repeat(129) });
    let error = ask(&face, "commit", too_long).await.unwrap_err();
    assert!(error.contains("at most 128"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_on_another_runtime_is_refused_at_connect() {
    let node = subnet();
    node.lock().unwrap().set_spec_version(1);
    let url = node::start(node.clone()).await;
    let error = node_face(&url, "validator", Duration::from_secs(5))
        .await
        .err()
        .unwrap();
    assert!(error.contains("runs runtime spec version 1"), "{error}");
    assert!(error.contains("resources.chain.metadata"), "{error}");
    assert!(
        !node
            .lock()
            .unwrap()
            .methods
            .iter()
            .any(|m| m == "author_submitAndWatchExtrinsic"),
        "nothing was submitted"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_is_explicit_recorded_and_never_paid_twice() {
    let node = subnet();
    let url = node::start(node.clone()).await;
    let face = node_face(&url, "newcomer", Duration::from_secs(5))
        .await
        .unwrap();
    let before = ask(&face, "uid", json!({ "netuid": 3 })).await.unwrap();
    assert_eq!(before["uid"], json!(null));
    assert_eq!(before["source"], json!("chain"));

    let registered = ask(&face, "register", json!({ "netuid": 3 }))
        .await
        .unwrap();
    assert_eq!(
        registered["uid"],
        json!(2),
        "after the miner and the validator"
    );
    assert_eq!(registered["skipped"], json!(false));
    let known = ask(&face, "uid", json!({ "netuid": 3 })).await.unwrap();
    assert_eq!(known["uid"], json!(2));
    assert_eq!(known["source"], json!("file"), "recorded at registration");

    let again = ask(&face, "register", json!({ "netuid": 3 }))
        .await
        .unwrap();
    assert_eq!(again["skipped"], json!(true));
    let calls: Vec<String> = node
        .lock()
        .unwrap()
        .included
        .iter()
        .map(|i| i.call.clone())
        .collect();
    assert_eq!(calls, ["burned_register"], "registered once");

    let validator = node_face(&url, "validator", Duration::from_secs(5))
        .await
        .unwrap();
    let found = ask(&validator, "uid", json!({ "netuid": 3 }))
        .await
        .unwrap();
    assert_eq!(
        (found["uid"].clone(), found["source"].clone()),
        (json!(1), json!("chain"))
    );
}

#[tokio::test]
async fn a_subtensor_pipeline_without_a_usable_key_stops_before_connecting() {
    let registry = gradline_stages::registry();
    let pipeline = |keys: &str| {
        let text = format!(
            "version: 1\nname: k\nrole: miner\nresources:\n  chain: {{ url: \"ws://127.0.0.1:9\", netuid: 3 }}\n{keys}stages:\n  me:\n    uses: uid\n"
        );
        gradline_engine::load("k.yaml", &text, &registry, &[])
            .pipeline
            .unwrap()
    };
    let env = |_: &str| None;
    let error = |p| async move {
        connect(&p, &env, &LiveOptions::from_env(&env))
            .await
            .err()
            .unwrap()
    };
    let none = error(pipeline("")).await;
    assert!(none.contains("needs a signing key"), "{none}");
    let unset = error(pipeline("  keys: { signing: { env: HOTKEY_MNEMONIC } }\n")).await;
    assert!(unset.contains("`HOTKEY_MNEMONIC` is not set"), "{unset}");
    let generated = error(pipeline("  keys: { signing: { generated: miner } }\n")).await;
    assert!(
        generated.contains("only on the embedded ledger"),
        "{generated}"
    );
}
