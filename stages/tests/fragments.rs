//! Fragment training across three roles sharing a store and a ledger: the orchestrator signs
//! a job per miner; each miner checks its job, trains only its fragment and signs a receipt;
//! the validator credits honest work and says why it refuses the rest (a state altered
//! after signing, a miner that sent nothing). A job the orchestrator did not sign is refused
//! by the miner before any training.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use gradline_engine::effects::{CallScope, Request, Transport};
use gradline_engine::expr::Val;
use gradline_stages::live::local_chain::LocalChain;
use gradline_stages::model::{Cpu, GptConfig, checkpoint};
use gradline_stages::signed::{Job, Receipt, Signed, Verdict};
use gradline_stages::tensors::TensorSet;
use subxt_signer::sr25519::Keypair;

/// An hour per block: every run here happens in block 0, window 0.
const RESOURCES: &str = "resources:
  store: { url: \"file://STORE\" }
  chain: { url: \"local://CHAIN\", netuid: 5, block_time: 1h }
  keys: { signing: { generated: KEY } }";

const ORCHESTRATOR: &str = "version: 1
name: orchestrator
role: orchestrator
RESOURCES
stages:
  base:
    uses: download
    with: { from: [store], object: base/model.safetensors }
  split:
    uses: merge
    with: { mode: split, checkpoint: \"${{ stages.base.outputs.checkpoint }}\", fragments: 4 }
  miners:
    uses: miners
    with: { commitments: false }
  jobs:
    uses: assign
    with:
      fragments: \"${{ stages.split.outputs.fragments }}\"
      miners: \"${{ stages.miners.outputs.miners }}\"
      checkpoint: \"${{ stages.base.outputs.checkpoint }}\"
      data: data/shards
      tokens: 257
";

const MINER: &str = "version: 1
name: miner
role: miner
RESOURCES
stages:
  base:
    uses: download
    with: { from: [store], object: base/model.safetensors }
  job:
    uses: download
    with: { from: [store], as: job, object: \"jobs/${{ cycle.window }}/UID.json\" }
  train:
    uses: train
    with:
      checkpoint: \"${{ stages.base.outputs.checkpoint }}\"
      job: \"${{ stages.job.outputs.job }}\"
      orchestrator: \"BOSS\"
      uid: UID
      steps: 3
      batch: 4
      lr: 0.01
      data: data/shards
  state:
    uses: publish
    with: { target: store, artifact: \"${{ stages.train.outputs.state }}\", key: \"states/${{ cycle.window }}/UID.bin\" }
  receipt:
    uses: publish
    with: { target: store, artifact: \"${{ stages.train.outputs.receipt }}\", key: \"receipts/${{ cycle.window }}/UID.json\" }
";

const VALIDATOR: &str = "version: 1
name: validator
role: validator
RESOURCES
stages:
  base:
    uses: download
    with: { from: [store], object: base/model.safetensors }
  miners:
    uses: miners
    with: { commitments: false }
  job:
    uses: download
    for_each: \"${{ stages.miners.outputs.miners }}\"
    on_error: skip
    with: { from: [store], as: job, object: \"jobs/${{ cycle.window }}/${{ item.uid }}.json\" }
  state:
    uses: download
    for_each: \"${{ stages.miners.outputs.miners }}\"
    on_error: skip
    with: { from: [store], as: fragment-state, object: \"states/${{ cycle.window }}/${{ item.uid }}.bin\" }
  receipt:
    uses: download
    for_each: \"${{ stages.miners.outputs.miners }}\"
    on_error: skip
    with: { from: [store], as: receipt, object: \"receipts/${{ cycle.window }}/${{ item.uid }}.json\" }
  check:
    uses: verify
    with:
      mode: integrity
      miners: \"${{ stages.miners.outputs.miners }}\"
      states: \"${{ stages.state.outputs.fragment-state }}\"
      receipts: \"${{ stages.receipt.outputs.receipt }}\"
      jobs: \"${{ stages.job.outputs.job }}\"
      checkpoint: \"${{ stages.base.outputs.checkpoint }}\"
      orchestrator: \"BOSS\"
";

struct Network {
    tag: &'static str,
    root: PathBuf,
    boss: String,
}

impl Network {
    /// A store holding the token shards and a `tiny` checkpoint; a ledger with three miners.
    fn new(tag: &'static str) -> Self {
        let root = std::env::temp_dir().join(format!("gradline-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        common::store_with_shards(&root);
        let model = GptConfig::tiny().init::<Cpu>(&Default::default());
        let (bytes, _) = checkpoint::save(&model).unwrap();
        std::fs::create_dir_all(root.join("store/base")).unwrap();
        std::fs::write(root.join("store/base/model.safetensors"), bytes).unwrap();
        let mut network = Self {
            tag,
            boss: String::new(),
            root,
        };
        network.boss = network
            .ledger("orchestrator", "orchestrator")
            .hotkey()
            .to_owned();
        network
    }

    fn ledger(&self, key: &str, role: &str) -> LocalChain {
        let url = format!("local://{}", self.root.join("chain").display());
        LocalChain::open(&url, Duration::from_secs(3600), key, role).unwrap()
    }

    fn text(&self, template: &str, key: &str, uid: u16) -> String {
        template
            .replace("RESOURCES", RESOURCES)
            .replace("STORE", &self.root.join("store").display().to_string())
            .replace("CHAIN", &self.root.join("chain").display().to_string())
            .replace("KEY", key)
            .replace("BOSS", &self.boss)
            .replace("UID", &uid.to_string())
    }

    async fn run(
        &self,
        template: &str,
        key: &str,
        uid: u16,
    ) -> (
        common::TestRun,
        Result<Vec<gradline_engine::schedule::CycleReport>, gradline_engine::schedule::RunError>,
    ) {
        let text = self.text(template, key, uid);
        let registry = gradline_stages::registry();
        let live = common::live_for("role.yaml", &text, &registry).await;
        common::try_run_pipeline(
            &format!("{}-{key}", self.tag),
            &text,
            &registry,
            live,
            1,
            Duration::from_secs(3600),
        )
        .await
    }

    fn stored(&self, key: &str) -> Vec<u8> {
        std::fs::read(self.root.join("store").join(key)).unwrap()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

async fn register(chain: &LocalChain) -> u16 {
    let answer = chain
        .call(
            &CallScope::scheduler(0),
            Request::new("chain", "register", serde_json::json!({ "netuid": 5 })),
        )
        .await
        .unwrap();
    answer.value["uid"].as_u64().unwrap() as u16
}

fn hotkey_signer(chain: &LocalChain) -> String {
    format!("0x{}", chain.hotkey())
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_receipts_and_states_are_signed_checked_and_credited() {
    let network = Network::new("fragments-credit");
    let mut uids = Vec::new();
    for name in ["miner-1", "miner-2", "miner-3"] {
        uids.push(register(&network.ledger(name, "miner")).await);
    }

    let (run, outcome) = network.run(ORCHESTRATOR, "orchestrator", 0).await;
    outcome.unwrap();
    let Val::List(jobs) = &run.outputs("jobs", 0)["jobs"] else {
        panic!("jobs")
    };
    assert_eq!(jobs.len(), 3, "one job per miner");
    let job = |uid: u16| -> Signed<Job> {
        serde_json::from_slice(&network.stored(&format!("jobs/0/{uid}.json"))).unwrap()
    };
    let fragments: std::collections::BTreeSet<u32> =
        uids.iter().map(|u| job(*u).body.fragment).collect();
    assert_eq!(fragments.len(), 3, "each miner its own fragment");
    assert!(job(uids[0]).verify(&network.boss_signer()).is_ok());

    // Miners 1 and 2 train; miner 3 does nothing.
    for (name, uid) in [("miner-1", uids[0]), ("miner-2", uids[1])] {
        let (run, outcome) = network.run(MINER, name, uid).await;
        outcome.unwrap();
        let outputs = run.outputs("train", 0);
        let Val::Artifact(state) = &outputs["state"] else {
            panic!("state")
        };
        let state = TensorSet::from_safetensors(&run.dir.objects.get(state).unwrap()).unwrap();
        let mut got: Vec<String> = state.layout.tensors.into_iter().map(|(n, _)| n).collect();
        let mut wanted = job(uid).body.tensors;
        wanted.sort();
        got.sort();
        assert_eq!(got, wanted, "the state holds the job's fragment only");
        let receipt: Signed<Receipt> =
            serde_json::from_slice(&network.stored(&format!("receipts/0/{uid}.json"))).unwrap();
        let miner = hotkey_signer(&network.ledger(name, "miner"));
        assert!(receipt.verify(&miner).is_ok(), "signed by the miner's key");
        assert_eq!(receipt.body.job, job(uid).digest());
    }
    // Miner 2's state is swapped after it signed its receipt.
    let path = network.root.join(format!("store/states/0/{}.bin", uids[1]));
    let mut state = TensorSet::from_safetensors(&std::fs::read(&path).unwrap()).unwrap();
    state.values.iter_mut().for_each(|v| *v *= 2.0);
    std::fs::write(&path, state.to_safetensors("fragment-state").unwrap()).unwrap();

    let (run, outcome) = network.run(VALIDATOR, "validator", 0).await;
    outcome.unwrap();
    let Val::Artifact(verdicts) = &run.outputs("check", 0)["verdicts"] else {
        panic!("verdicts")
    };
    let verdicts: Vec<Signed<Verdict>> =
        serde_json::from_slice(&run.dir.objects.get(verdicts).unwrap()).unwrap();
    let validator = hotkey_signer(&network.ledger("validator", "validator"));
    let failures = |uid: u16| -> Vec<String> {
        let verdict = verdicts.iter().find(|v| v.body.miner_uid == uid).unwrap();
        verdict.verify(&validator).expect("signed by the validator");
        verdict
            .body
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.reason.clone().unwrap_or_default()))
            .collect()
    };
    assert!(failures(uids[0]).is_empty(), "{:?}", failures(uids[0]));
    assert!(
        failures(uids[1])[0].starts_with("digest: no downloaded state has the digest"),
        "{:?}",
        failures(uids[1])
    );
    assert_eq!(failures(uids[2]), ["receipt: the miner sent no receipt"]);
    let Val::List(accepted) = &run.outputs("check", 0)["accepted"] else {
        panic!("accepted")
    };
    assert_eq!(accepted.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_miner_refuses_a_job_the_orchestrator_did_not_sign() {
    let network = Network::new("fragments-forged");
    let uid = register(&network.ledger("miner-1", "miner")).await;
    let (_, outcome) = network.run(ORCHESTRATOR, "orchestrator", 0).await;
    outcome.unwrap();
    let key = format!("jobs/0/{uid}.json");
    let mut job: Signed<Job> = serde_json::from_slice(&network.stored(&key)).unwrap();
    job.body.fragment += 1;
    std::fs::write(
        network.root.join("store").join(&key),
        serde_json::to_vec(&job).unwrap(),
    )
    .unwrap();
    let (_, outcome) = network.run(MINER, "miner-1", uid).await;
    let error = outcome.unwrap_err().to_string();
    assert!(
        error.contains("refusing the job: the signature does not match"),
        "{error}"
    );
    let forged = Signed::sign(
        job.body.clone(),
        &Keypair::from_secret_key([9; 32]).unwrap(),
    );
    std::fs::write(
        network.root.join("store").join(&key),
        serde_json::to_vec(&forged).unwrap(),
    )
    .unwrap();
    let (_, outcome) = network.run(MINER, "miner-1", uid).await;
    let error = outcome.unwrap_err().to_string();
    assert!(error.contains("refusing the job: signed by"), "{error}");
    assert!(
        !Path::new(&network.root.join(format!("store/states/0/{uid}.bin"))).exists(),
        "nothing trained, nothing uploaded"
    );
}

impl Network {
    fn boss_signer(&self) -> String {
        format!("0x{}", self.boss)
    }
}
