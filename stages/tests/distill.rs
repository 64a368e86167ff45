//! The distillation contest on the embedded hub and ledger: students committed by miners are
//! pre-checked from their safetensors headers (an over-budget model, a quantized one and a
//! copied weights file are refused, the copier for good), then the king is chosen by
//! KL(teacher ‖ student) on block-seeded prompts; a functional copy (the best model's
//! weights re-encoded) is flagged; the next cycle keeps the king and re-scores nobody.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use burn::tensor::backend::Backend;
use gradline_engine::effects::{CallScope, Request, Transport};
use gradline_engine::expr::Val;
use gradline_stages::chain::Commitment;
use gradline_stages::hub::{CommitArgs, FileEntry};
use gradline_stages::live::local_chain::LocalChain;
use gradline_stages::live::local_hub::LocalHub;
use gradline_stages::model::distill::config_to_json;
use gradline_stages::model::train::parameters;
use gradline_stages::model::{Cpu, Gpt, GptConfig};
use gradline_stages::signed::{Signed, Verdict};
use gradline_stages::tensors::{StoredDtype, TensorSet};

const VALIDATOR: &str = "version: 1
name: contest
role: validator
resources:
  hub: { endpoint: \"local://ROOT/hub\" }
  store: { url: \"file://ROOT/store\" }
  chain: { url: \"local://ROOT/chain\", netuid: 7, block_time: 1h }
  keys: { signing: { generated: validator } }
stages:
  miners:
    uses: miners
  precheck:
    uses: verify
    with:
      mode: model-precheck
      miners: \"${{ stages.miners.outputs.miners }}\"
      max_params: MAX_PARAMS
      vocab_size: 257
  contest:
    uses: verify
    with:
      mode: kl
      miners: \"${{ stages.precheck.outputs.accepted }}\"
      teacher: local/teacher
      data: data/shards
      prompts: 8
      prompt_tokens: 16
      max_new_tokens: 16
";

fn config_json(config: GptConfig, quantized: bool) -> Vec<u8> {
    let mut json = config_to_json(config);
    if quantized {
        json["quantization_config"] = serde_json::json!({ "quant_method": "gptq", "bits": 4 });
    }
    serde_json::to_vec(&json).unwrap()
}

/// A model's weights with Gaussian-ish noise of `scale` added (deterministic in `seed`).
fn perturbed(model: &Gpt<Cpu>, scale: f32, seed: u64) -> TensorSet {
    let mut set = parameters(model);
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    for v in &mut set.values {
        let mut sum = 0.0f32;
        for _ in 0..4 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            sum += (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
        }
        *v += sum * scale;
    }
    set
}

struct Contest {
    root: PathBuf,
    hub: LocalHub,
}

impl Contest {
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("gradline-contest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        common::store_with_shards(&root);
        let hub = LocalHub::open(&format!("local://{}", root.join("hub").display())).unwrap();
        Self { root, hub }
    }

    /// Publishes a model repo; returns its revision.
    async fn publish(&self, repo: &str, weights: Vec<u8>, config: Vec<u8>) -> String {
        let args = CommitArgs {
            repo: repo.to_owned(),
            branch: "main".into(),
            message: "student".into(),
            files: vec![
                FileEntry {
                    path: "model.safetensors".into(),
                    size: weights.len() as u64,
                },
                FileEntry {
                    path: "config.json".into(),
                    size: config.len() as u64,
                },
            ],
            create_repo: true,
        };
        let body = [weights, config].concat();
        let answer = self
            .hub
            .call(
                &CallScope::scheduler(0),
                Request::new("hub", "commit", serde_json::json!(args)).with_body(body),
            )
            .await
            .unwrap();
        answer.value["revision"].as_str().unwrap().to_owned()
    }

    /// A miner registers and commits `repo@revision`; returns its uid.
    async fn commit(&self, miner: &str, repo: &str, revision: &str) -> u16 {
        let url = format!("local://{}", self.root.join("chain").display());
        let chain = LocalChain::open(&url, Duration::from_secs(3600), miner, "miner").unwrap();
        let commitment = Commitment {
            v: Commitment::VERSION,
            repo: Some(repo.to_owned()),
            revision: Some(revision.to_owned()),
            digest: None,
        };
        let scope = CallScope::scheduler(0);
        let ask =
            |op: &str, args: serde_json::Value| chain.call(&scope, Request::new("chain", op, args));
        ask(
            "commit",
            serde_json::json!({ "netuid": 7, "data": commitment.encode() }),
        )
        .await
        .unwrap();
        let identity = ask("uid", serde_json::json!({ "netuid": 7 }))
            .await
            .unwrap();
        identity.value["uid"].as_u64().unwrap() as u16
    }
}

impl Drop for Contest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn prechecks_refuse_cheats_and_the_closest_student_takes_the_crown() {
    let contest = Contest::new();
    let device = Default::default();
    <Cpu as Backend>::seed(&device, 11);
    let tiny = GptConfig::tiny();
    let teacher: Gpt<Cpu> = tiny.init(&device);
    let bf16 = |set: &TensorSet| {
        set.to_safetensors_as("checkpoint", StoredDtype::Bf16)
            .unwrap()
    };
    let teacher_set = parameters(&teacher);
    let budget = teacher_set.values.len();
    contest
        .publish(
            "local/teacher",
            bf16(&teacher_set),
            config_json(tiny, false),
        )
        .await;

    let close = perturbed(&teacher, 0.01, 1);
    let far = perturbed(&teacher, 0.2, 2);
    let bigger = GptConfig { layers: 3, ..tiny };
    let big_model: Gpt<Cpu> = bigger.init(&device);

    let close_rev = contest
        .publish("alice/close", bf16(&close), config_json(tiny, false))
        .await;
    let alice = contest.commit("alice", "alice/close", &close_rev).await;
    let far_rev = contest
        .publish("bob/far", bf16(&far), config_json(tiny, false))
        .await;
    let bob = contest.commit("bob", "bob/far", &far_rev).await;
    // Carol re-uploads Alice's file.
    let copy_rev = contest
        .publish("carol/mine", bf16(&close), config_json(tiny, false))
        .await;
    let carol = contest.commit("carol", "carol/mine", &copy_rev).await;
    let big_rev = contest
        .publish(
            "dave/big",
            bf16(&parameters(&big_model)),
            config_json(bigger, false),
        )
        .await;
    let dave = contest.commit("dave", "dave/big", &big_rev).await;
    let quant_rev = contest
        .publish(
            "erin/q",
            bf16(&perturbed(&teacher, 0.2, 5)),
            config_json(tiny, true),
        )
        .await;
    let erin = contest.commit("erin", "erin/q", &quant_rev).await;
    // Frank re-encodes Alice's weights as F16: another file, the same function.
    let f16 = close
        .to_safetensors_as("checkpoint", StoredDtype::F16)
        .unwrap();
    let frank_rev = contest
        .publish("frank/f16", f16, config_json(tiny, false))
        .await;
    let frank = contest.commit("frank", "frank/f16", &frank_rev).await;
    // Grace commits a branch name, not a commit.
    let grace = contest.commit("grace", "alice/close", "main").await;

    let text = VALIDATOR
        .replace("ROOT", &contest.root.display().to_string())
        .replace("MAX_PARAMS", &budget.to_string());
    let registry = gradline_stages::registry();
    let live = common::live_for("contest.yaml", &text, &registry).await;
    let run = common::run_pipeline(
        "distill",
        &text,
        &registry,
        live,
        2,
        Duration::from_millis(10),
    )
    .await;

    let verdicts = |stage: &str, cycle: u64| -> Vec<Signed<Verdict>> {
        let Val::Artifact(a) = &run.outputs(stage, cycle)["verdicts"] else {
            panic!("verdicts")
        };
        serde_json::from_slice(&run.dir.objects.get(a).unwrap()).unwrap()
    };
    let failures = |verdicts: &[Signed<Verdict>], uid: u16| -> Vec<String> {
        verdicts
            .iter()
            .find(|v| v.body.miner_uid == uid)
            .unwrap_or_else(|| panic!("no verdict for uid {uid}"))
            .body
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.reason.clone().unwrap_or_default()))
            .collect()
    };
    let pre = verdicts("precheck", 0);
    assert!(
        failures(&pre, alice).is_empty(),
        "{:?}",
        failures(&pre, alice)
    );
    assert!(failures(&pre, bob).is_empty());
    assert!(
        failures(&pre, frank).is_empty(),
        "another file: passes the hash check"
    );
    assert_eq!(
        failures(&pre, carol),
        [format!(
            "original: its weights file is uid {alice}'s, committed first (block 0)"
        )]
    );
    assert!(
        failures(&pre, dave)[0].starts_with("params: "),
        "{:?}",
        failures(&pre, dave)
    );
    assert_eq!(
        failures(&pre, erin),
        ["quantization: config.json carries a quantization_config (gptq)"]
    );
    assert!(failures(&pre, grace)[0].contains("not a 40-hex commit SHA"));

    let kl = verdicts("contest", 0);
    assert_eq!(
        run.outputs("contest", 0)["king"],
        Val::Int(i64::from(alice))
    );
    assert!(failures(&kl, alice).is_empty());
    assert!(
        failures(&kl, bob)[0].starts_with("crown: KL "),
        "{:?}",
        failures(&kl, bob)
    );
    assert!(
        failures(&kl, frank)[0].starts_with(&format!("original: a functional copy of uid {alice}")),
        "{:?}",
        failures(&kl, frank)
    );
    let Val::Artifact(scores) = &run.outputs("contest", 0)["scores"] else {
        panic!("scores")
    };
    let scores: serde_json::Value =
        serde_json::from_slice(&run.dir.objects.get(scores).unwrap()).unwrap();
    assert_eq!(scores[alice.to_string()], serde_json::json!(1.0));
    assert_eq!(scores[bob.to_string()], serde_json::json!(0.0));

    // Next cycle: the copier is still out, the king keeps the crown, nobody is re-scored.
    let pre = verdicts("precheck", 1);
    assert!(failures(&pre, carol)[0].contains("disqualified for good"));
    let kl = verdicts("contest", 1);
    assert_eq!(
        run.outputs("contest", 1)["king"],
        Val::Int(i64::from(alice))
    );
    assert!(
        failures(&kl, bob)[0].contains("evaluated in an earlier round"),
        "{:?}",
        failures(&kl, bob)
    );
}
