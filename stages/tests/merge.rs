//! `verify` and `merge` in a pipeline: gradients decoded, combined and applied with the outer
//! optimizer (its momentum carried to the next cycle), exact on known inputs; a checkpoint
//! split into fragments and released from fragment states to the digest of the trained
//! model, or from only the states a verdict accepted; integrity verdicts that accept the honest miner and say why each other one fails,
//! and a merge of only the accepted work.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use gradline_engine::effects::Live;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_stages::codec::topk_f16;
use gradline_stages::live::{LiveOptions, connect};
use gradline_stages::merge::fragments;
use gradline_stages::model::checkpoint::digest;
use gradline_stages::signed::{Signed, Verdict, signer_of};
use gradline_stages::tensors::TensorSet;
use schemars::JsonSchema;
use serde::Deserialize;
use std::str::FromStr;
use subxt_signer::SecretUri;
use subxt_signer::sr25519::Keypair;

const BASE: [f32; 4] = [1.0, 2.0, 3.0, 4.0];
const TRAINED: [f32; 4] = [0.5, 1.5, -3.0, 8.0];

fn named(values: &[f32]) -> TensorSet {
    TensorSet {
        layout: gradline_stages::codec::Layout {
            tensors: vec![("a".into(), 2), ("b".into(), 1), ("c".into(), 1)],
        },
        shapes: vec![vec![2], vec![1], vec![1]],
        values: values.to_vec(),
    }
}

/// A checkpoint, two miners' gradients (top-k f16 at full density) and the fragment
/// states of a trained model, as the stages upstream of `merge` would hand them on.
#[derive(Debug, Deserialize, JsonSchema)]
struct Upstream {}

impl StageKind for Upstream {
    const NAME: &'static str = "upstream";
    const DESCRIPTION: &'static str = "test inputs for merge";
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("checkpoint", Type::Named("checkpoint"), ""),
            Port::new("gradients", Type::list(Type::Named("compressed")), ""),
            Port::new("states", Type::list(Type::Named("fragment-state")), ""),
            Port::new("verdicts", Type::Named("verdicts"), ""),
        ]
    }
    fn effects(&self, _: &PlanContext) -> Vec<Effect> {
        Vec::new()
    }
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let checkpoint = named(&BASE).to_safetensors("checkpoint").unwrap();
            let mut gradients = Vec::new();
            for g in [[1.0f32, 0.0, -2.0, 0.5], [3.0, 0.0, 0.0, 0.5]] {
                let blob = topk_f16::encode(&g, 1.0, None).unwrap();
                gradients.push(Val::Artifact(cx.write_artifact("gradients", blob).await?));
            }
            let trained = named(&TRAINED);
            let fragments = fragments::split_tensors(&trained.layout.tensors, 2).unwrap();
            let mut states = Vec::new();
            let mut verdicts = Vec::new();
            let validator =
                Keypair::from_uri(&SecretUri::from_str("//Validator").unwrap()).unwrap();
            for (i, f) in fragments.iter().enumerate() {
                let state = fragments::extract(&trained, f).unwrap();
                let bytes = state.to_safetensors("fragment-state").unwrap();
                let artifact = cx.write_artifact("states", bytes).await?;
                // The validators accept the first fragment's state and refuse the second.
                let check = gradline_stages::signed::Check {
                    name: "state".into(),
                    passed: i == 0,
                    reason: (i != 0).then(|| "altered after signing".into()),
                };
                let verdict = Verdict {
                    window: 0,
                    miner_uid: i as u16 + 1,
                    checks: vec![check],
                    score: 1.0,
                    work: Some(artifact.digest.clone()),
                };
                verdicts.push(Signed::sign(verdict, &validator));
                states.push(Val::Artifact(artifact));
            }
            let verdicts = serde_json::to_vec(&verdicts).unwrap();
            Ok(BTreeMap::from([
                (
                    "checkpoint".to_owned(),
                    Val::Artifact(cx.write_artifact("checkpoint", checkpoint).await?),
                ),
                ("gradients".to_owned(), Val::List(gradients)),
                ("states".to_owned(), Val::List(states)),
                (
                    "verdicts".to_owned(),
                    Val::Artifact(cx.write_artifact("verdicts", verdicts).await?),
                ),
            ]))
        })
    }
}

const PIPELINE: &str = "version: 1
name: merger
role: validator
stages:
  up:
    uses: upstream
  sgd:
    uses: merge
    with: { checkpoint: \"${{ stages.up.outputs.checkpoint }}\", gradients: \"${{ stages.up.outputs.gradients }}\", policy: mean, optimizer: sgd, lr: 1.0 }
  nesterov:
    uses: merge
    with: { checkpoint: \"${{ stages.up.outputs.checkpoint }}\", gradients: \"${{ stages.up.outputs.gradients }}\", policy: mean, optimizer: nesterov, lr: 0.5, momentum: 0.9 }
  split:
    uses: merge
    with: { mode: split, checkpoint: \"${{ stages.up.outputs.checkpoint }}\", fragments: 2 }
  release:
    uses: merge
    with: { mode: release, checkpoint: \"${{ stages.up.outputs.checkpoint }}\", states: \"${{ stages.up.outputs.states }}\" }
  accepted:
    uses: merge
    with: { mode: release, checkpoint: \"${{ stages.up.outputs.checkpoint }}\", states: \"${{ stages.up.outputs.states }}\", verdicts: \"${{ stages.up.outputs.verdicts }}\" }
";

fn values(run: &common::TestRun, out: &Val) -> Vec<f32> {
    let Val::Artifact(a) = out else {
        panic!("{out:?}")
    };
    TensorSet::from_safetensors(&run.dir.objects.get(a).unwrap())
        .unwrap()
        .values
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_applies_splits_and_releases_exactly() {
    let mut registry = gradline_stages::registry();
    registry.register::<Upstream>();
    let run = common::run_pipeline(
        "merge",
        PIPELINE,
        &registry,
        Arc::new(Live::new()),
        2,
        Duration::from_millis(200),
    )
    .await;
    let of = |stage: &str, cycle: u64| run.outputs(stage, cycle);
    // mean g = [2, 0, -1, 0.5]; θ − 1·g
    assert_eq!(
        values(&run, &of("sgd", 0)["checkpoint"]),
        [-1.0, 2.0, 4.0, 3.5]
    );
    assert_eq!(of("sgd", 0)["merged"], Val::Int(2));
    assert_eq!(
        of("sgd", 0)["digest"],
        Val::Str(digest(&named(&[-1.0, 2.0, 4.0, 3.5])))
    );
    // Nesterov, cycle 0: v = g; θ − 0.5·(g + 0.9·g) = θ − 0.95·g
    let first = values(&run, &of("nesterov", 0)["checkpoint"]);
    let expect = |g: f32, k: f32, base: f32| base - k * g;
    for (i, g) in [2.0f32, 0.0, -1.0, 0.5].iter().enumerate() {
        assert!(
            (first[i] - expect(*g, 0.95, BASE[i])).abs() < 1e-6,
            "{first:?}"
        );
    }
    // Cycle 1 starts from the same checkpoint but carries v: v = 1.9·g; step 0.5·(g + 0.9·1.9·g)
    let second = values(&run, &of("nesterov", 1)["checkpoint"]);
    for (i, g) in [2.0f32, 0.0, -1.0, 0.5].iter().enumerate() {
        assert!(
            (second[i] - expect(*g, 0.5 * 2.71, BASE[i])).abs() < 1e-5,
            "{second:?}"
        );
    }
    assert_eq!(
        values(&run, &of("nesterov", 1)["momentum"]),
        [3.8, 0.0, -1.9, 0.95]
    );

    let Val::List(split) = &of("split", 0)["fragments"] else {
        panic!()
    };
    assert_eq!(split.len(), 2);
    assert_eq!(split[0].field("params"), Some(&Val::Int(2)), "a (2) | b, c");
    assert_eq!(
        of("release", 0)["digest"],
        Val::Str(digest(&named(&TRAINED))),
        "released from the fragment states, it is the trained model"
    );
    assert_eq!(
        values(&run, &of("accepted", 0)["checkpoint"]),
        [TRAINED[0], TRAINED[1], BASE[2], BASE[3]],
        "only the state a verdict accepted is released; the refused fragment keeps the base"
    );
}

/// Three miners' submissions: an honest one, a copy of it committed later, and one whose
/// blob covers the wrong number of parameters; plus the checkpoint.
#[derive(Debug, Deserialize, JsonSchema)]
struct Submissions {}

impl StageKind for Submissions {
    const NAME: &'static str = "submissions";
    const DESCRIPTION: &'static str = "test submissions for verify";
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("checkpoint", Type::Named("checkpoint"), ""),
            Port::new("miners", Type::list(Type::Named("miner")), ""),
            Port::new("gradients", Type::list(Type::Named("compressed")), ""),
        ]
    }
    fn effects(&self, _: &PlanContext) -> Vec<Effect> {
        Vec::new()
    }
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let checkpoint = named(&BASE).to_safetensors("checkpoint").unwrap();
            let honest = topk_f16::encode(&[1.0, 0.0, -2.0, 0.5], 1.0, None).unwrap();
            let short = topk_f16::encode(&[1.0, 2.0], 1.0, None).unwrap();
            let mut miners = Vec::new();
            let mut gradients = Vec::new();
            for (uid, bytes, block) in [(1, &honest, 5), (2, &honest, 7), (3, &short, 6)] {
                let digest = blake3::hash(bytes).to_hex().to_string();
                miners.push(Val::Map(BTreeMap::from([
                    ("uid".to_owned(), Val::Int(uid)),
                    ("digest".to_owned(), Val::Str(digest)),
                    ("block".to_owned(), Val::Int(block)),
                ])));
                gradients.push(Val::Artifact(
                    cx.write_artifact("gradients", bytes.clone()).await?,
                ));
            }
            Ok(BTreeMap::from([
                (
                    "checkpoint".to_owned(),
                    Val::Artifact(cx.write_artifact("checkpoint", checkpoint).await?),
                ),
                ("miners".to_owned(), Val::List(miners)),
                ("gradients".to_owned(), Val::List(gradients)),
            ]))
        })
    }
}

const VALIDATOR: &str = "version: 1
name: judge
role: validator
resources:
  keys: { signing: { env: JUDGE_KEY } }
stages:
  in:
    uses: submissions
  check:
    uses: verify
    with: { mode: integrity, miners: \"${{ stages.in.outputs.miners }}\", gradients: \"${{ stages.in.outputs.gradients }}\", checkpoint: \"${{ stages.in.outputs.checkpoint }}\" }
  next:
    uses: merge
    with: { checkpoint: \"${{ stages.in.outputs.checkpoint }}\", gradients: \"${{ stages.check.outputs.accepted }}\", policy: mean, optimizer: sgd, lr: 1.0 }
";

#[tokio::test(flavor = "multi_thread")]
async fn integrity_verdicts_accept_the_honest_miner_and_merge_only_its_work() {
    let mut registry = gradline_stages::registry();
    registry.register::<Submissions>();
    let pipeline = gradline_engine::load("judge.yaml", VALIDATOR, &registry, &[])
        .pipeline
        .unwrap();
    let env = |name: &str| (name == "JUDGE_KEY").then(|| "//Judge".to_owned());
    let live = connect(&pipeline, &env, &LiveOptions::from_env(&env))
        .await
        .unwrap();
    let run = common::run_pipeline(
        "judge",
        VALIDATOR,
        &registry,
        Arc::new(live),
        1,
        Duration::from_millis(200),
    )
    .await;
    let of = |stage: &str| run.outputs(stage, 0);
    let read = |v: &Val| {
        let Val::Artifact(a) = v else { panic!("{v:?}") };
        serde_json::from_slice::<serde_json::Value>(&run.dir.objects.get(a).unwrap()).unwrap()
    };
    let verdicts = read(&of("check")["verdicts"]);
    let judge = Keypair::from_uri(&SecretUri::from_str("//Judge").unwrap()).unwrap();
    for verdict in verdicts.as_array().unwrap() {
        let signed: Signed<Verdict> = serde_json::from_value(verdict.clone()).unwrap();
        signed
            .verify(&signer_of(&judge))
            .expect("signed by the validator's key");
    }
    let failures = |uid: usize| -> Vec<String> {
        verdicts[uid - 1]["body"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["passed"] == false)
            .map(|c| {
                format!(
                    "{}: {}",
                    c["name"].as_str().unwrap(),
                    c["reason"].as_str().unwrap()
                )
            })
            .collect()
    };
    assert!(failures(1).is_empty(), "{verdicts}");
    assert_eq!(
        failures(2),
        ["original: uid 1 committed the same blob first (block 5): a copy"]
    );
    assert!(
        failures(3)[0].contains("the blob covers 2 parameters"),
        "{:?}",
        failures(3)
    );
    assert_eq!(
        read(&of("check")["scores"]),
        serde_json::json!({ "1": 1.0, "2": 0.0, "3": 0.0 })
    );
    let Val::List(accepted) = &of("check")["accepted"] else {
        panic!()
    };
    assert_eq!(accepted.len(), 1);
    assert_eq!(of("next")["merged"], Val::Int(1));
    let contract = read(&of("next")["contract"]);
    assert_eq!(
        of("next")["digest"],
        Val::Str(contract["digest"].as_str().unwrap().into())
    );
    assert_eq!(contract["tensors"].as_array().unwrap().len(), 3);
    assert_eq!(
        values(&run, &of("next")["checkpoint"]),
        [0.0, 2.0, 5.0, 3.5]
    );
}
