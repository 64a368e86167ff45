//! `verify` in loss-delta mode on real training: an honest miner's update lowers the loss on
//! its own batch and is scored; an update trained on another miner's batch, noise, and a
//! near copy each score nothing and the verdict says why. Verdicts are signed.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{Input, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_stages::codec::{Limits, decode, topk_f16};
use gradline_stages::data::read_shard;
use gradline_stages::live::signer::Signer;
use gradline_stages::model::eval::rows;
use gradline_stages::model::train::{TrainOptions, train};
use gradline_stages::model::{Cpu, GptConfig, checkpoint};
use gradline_stages::signed::{Signed, Verdict, signer_of};
use schemars::JsonSchema;
use serde::Deserialize;
use subxt_signer::SecretUri;
use subxt_signer::sr25519::Keypair;

/// A `tiny` checkpoint past the first steps of training (where every update helps every
/// batch alike): 60 steps on a stretch of the last shard no miner here is assigned.
fn warm_checkpoint() -> Vec<u8> {
    type Trainer = burn::backend::Autodiff<Cpu>;
    let device = Default::default();
    <Trainer as burn::tensor::backend::Backend>::seed(&device, 7);
    let config = GptConfig::tiny();
    let model: gradline_stages::model::Gpt<Trainer> = config.init(&device);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/shards/bytes");
    let tokens = read_shard(&std::fs::read(root.join("shard_000002.bin")).unwrap()).unwrap();
    let batch = 8;
    let window = &tokens[tokens.len() - batch * config.context - 1..];
    let rows = rows::<Trainer>(window, batch, config.context, &device);
    let options = TrainOptions {
        steps: 60,
        lr: 0.01,
        warmup: 5,
        grad_clip: 1.0,
        weight_decay: 0.0,
        only: None,
    };
    let trained = train(model, rows, &options, |_, _| {});
    checkpoint::save(&trained.model).unwrap().0
}

/// A warm `tiny` checkpoint.
#[derive(Debug, Deserialize, JsonSchema)]
struct Fresh {}

impl StageKind for Fresh {
    const NAME: &'static str = "fresh";
    const DESCRIPTION: &'static str = "test checkpoint";
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        vec![Port::new("checkpoint", Type::Named("checkpoint"), "")]
    }
    fn effects(&self, _: &PlanContext) -> Vec<Effect> {
        Vec::new()
    }
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let bytes = tokio::task::spawn_blocking(warm_checkpoint).await.unwrap();
            let artifact = cx.write_artifact("checkpoint", bytes).await?;
            Ok(BTreeMap::from([(
                "checkpoint".to_owned(),
                Val::Artifact(artifact),
            )]))
        })
    }
}

/// The miners' submissions as a validator downloads them: uid 1 honest, uid 2 trained on
/// uid 9's batch, uid 3 noise, uid 4 uid 1's update with its values nudged (a near copy).
#[derive(Debug, Deserialize, JsonSchema)]
struct Gather {
    honest: Input,
    elsewhere: Input,
}

impl StageKind for Gather {
    const NAME: &'static str = "gather";
    const DESCRIPTION: &'static str = "test submissions";
    fn inputs(&self) -> Vec<Port> {
        vec![
            Port::new("honest", Type::Named("compressed"), ""),
            Port::new("elsewhere", Type::Named("compressed"), ""),
        ]
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("miners", Type::list(Type::Named("miner")), ""),
            Port::new("gradients", Type::list(Type::Named("compressed")), ""),
        ]
    }
    fn effects(&self, _: &PlanContext) -> Vec<Effect> {
        Vec::new()
    }
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let read = |input: &Input| {
                let Ok(Val::Artifact(a)) = cx.input(input) else {
                    panic!("an artifact")
                };
                a
            };
            let honest = cx.read_artifact(&read(&self.honest)).await?;
            let elsewhere = cx.read_artifact(&read(&self.elsewhere)).await?;
            let sparse = decode(&honest, Limits::default()).unwrap();
            let n = sparse.n as usize;
            let noise: Vec<f32> = (0..n)
                .map(|i| ((i as f32 * 12.9898).sin() * 43758.547).fract() * 0.5)
                .collect();
            let noise =
                topk_f16::encode(&noise, sparse.indices.len() as f64 / n as f64, None).unwrap();
            let mut dense = sparse.to_dense().unwrap();
            dense.iter_mut().for_each(|v| *v *= 1.0001);
            let copy =
                topk_f16::encode(&dense, sparse.indices.len() as f64 / n as f64, None).unwrap();
            let mut miners = Vec::new();
            let mut gradients = Vec::new();
            for (uid, bytes, block) in [
                (1, honest, 1),
                (2, elsewhere, 1),
                (3, noise, 1),
                (4, copy, 2),
            ] {
                miners.push(Val::Map(BTreeMap::from([
                    ("uid".to_owned(), Val::Int(uid)),
                    (
                        "digest".to_owned(),
                        Val::Str(blake3::hash(&bytes).to_hex().to_string()),
                    ),
                    ("block".to_owned(), Val::Int(block)),
                ])));
                gradients.push(Val::Artifact(cx.write_artifact("gradients", bytes).await?));
            }
            Ok(BTreeMap::from([
                ("miners".to_owned(), Val::List(miners)),
                ("gradients".to_owned(), Val::List(gradients)),
            ]))
        })
    }
}

const PIPELINE: &str = "version: 1
name: loss-delta
role: validator
resources:
  store: { url: \"file://fixtures/shards\" }
  keys: { signing: { env: VALIDATOR_KEY } }
stages:
  base: { uses: fresh }
  honest:
    uses: train
    with: { checkpoint: \"${{ stages.base.outputs.checkpoint }}\", uid: 1, steps: 6, batch: 4, lr: 0.005, data: bytes }
  elsewhere:
    uses: train
    with: { checkpoint: \"${{ stages.base.outputs.checkpoint }}\", uid: 9, steps: 6, batch: 4, lr: 0.005, data: bytes }
  z1:
    uses: compress
    with: { gradient: \"${{ stages.honest.outputs.gradient }}\", codec: topk-f16, density: 0.1 }
  z2:
    uses: compress
    with: { gradient: \"${{ stages.elsewhere.outputs.gradient }}\", codec: topk-f16, density: 0.1 }
  in:
    uses: gather
    with: { honest: \"${{ stages.z1.outputs.compressed }}\", elsewhere: \"${{ stages.z2.outputs.compressed }}\" }
  judge:
    uses: verify
    with:
      mode: loss-delta
      miners: \"${{ stages.in.outputs.miners }}\"
      gradients: \"${{ stages.in.outputs.gradients }}\"
      checkpoint: \"${{ stages.base.outputs.checkpoint }}\"
      data: bytes
      batch: 4
      seed: validator-secret
";

/// The window every batch is drawn for.
const WINDOW: u64 = 5;

#[tokio::test(flavor = "multi_thread")]
async fn loss_delta_scores_the_honest_miner_and_says_why_the_others_fail() {
    let mut registry = gradline_stages::registry();
    registry.register::<Fresh>();
    registry.register::<Gather>();
    let key = Keypair::from_uri(&SecretUri::from_str("//Validator").unwrap()).unwrap();
    let transport = Arc::new(
        gradline_engine::effects::Live::new()
            .with_system("store", Arc::new(common::FixtureStore::shards()))
            .with_system("clock", Arc::new(common::StoppedClock(WINDOW * 60_000 + 1)))
            .with_system("keys", Arc::new(Signer::new(key.clone()))),
    );
    let run = common::run_pipeline(
        "loss-delta",
        PIPELINE,
        &registry,
        transport,
        1,
        Duration::from_secs(60),
    )
    .await;
    let judge = run.outputs("judge", 0);
    let read = |v: &Val| {
        let Val::Artifact(a) = v else { panic!("{v:?}") };
        serde_json::from_slice::<serde_json::Value>(&run.dir.objects.get(a).unwrap()).unwrap()
    };
    let verdicts: Vec<Signed<Verdict>> = serde_json::from_value(read(&judge["verdicts"])).unwrap();
    let signer = signer_of(&key);
    let failed = |uid: u16| -> Vec<String> {
        let verdict = verdicts.iter().find(|v| v.body.miner_uid == uid).unwrap();
        let body = verdict
            .verify(&signer)
            .unwrap_or_else(|e| panic!("{e}: {}", serde_json::to_string(verdict).unwrap()));
        body.checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| format!("{}: {}", c.name, c.reason.clone().unwrap_or_default()))
            .collect()
    };
    let all: Vec<_> = (1..=4).map(|uid| (uid, failed(uid))).collect();
    assert!(failed(1).is_empty(), "{all:?}");
    assert!(
        failed(2)
            .iter()
            .any(|f| f.contains("not trained on its data")),
        "{:?}",
        failed(2)
    );
    assert!(
        failed(3)
            .iter()
            .any(|f| f.contains("does not lower the loss")),
        "{:?}",
        failed(3)
    );
    assert!(
        failed(4)
            .iter()
            .any(|f| f.contains("nearly the same update as uid 1")),
        "{:?}",
        failed(4)
    );
    let scores = read(&judge["scores"]);
    assert!(scores["1"].as_f64().unwrap() > 0.0, "{scores}");
    for uid in ["2", "3", "4"] {
        assert_eq!(scores[uid], 0.0, "{scores}");
    }
    let Val::List(accepted) = &judge["accepted"] else {
        panic!()
    };
    assert_eq!(accepted.len(), 1);
}
