//! Every system under `pipelines/` runs from its committed files, on the embedded store, hub
//! and ledger, as a new user runs it: the training networks with `gradline up`, the
//! single-shot systems (publishing, the distillation contest) and the hub fallback with one
//! `gradline run` per role.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn pipeline(system: &str, file: &str) -> String {
    repo()
        .join("pipelines")
        .join(system)
        .join(file)
        .display()
        .to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gradline-system-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A folder whose embedded ledger's clock is held at `block`.
fn held_at(name: &str, block: u64) -> PathBuf {
    let dir = scratch(name);
    std::fs::create_dir_all(dir.join(".gradline/chain")).unwrap();
    std::fs::write(
        dir.join(".gradline/chain/clock.json"),
        format!(r#"{{"block": {block}}}"#),
    )
    .unwrap();
    dir
}

fn gradline(dir: &Path, args: &[&str]) -> Output {
    common::gradline_ok(dir, &[args, &["--log-format", "text"]].concat())
}

/// `gradline up pipelines/SYSTEM` for some cycles; the network folder.
fn up(system: &str, cycles: u64) -> PathBuf {
    let dir = scratch(system);
    let pipelines = repo().join("pipelines").join(system);
    gradline(
        &dir,
        &[
            "up",
            pipelines.to_str().unwrap(),
            "--cycles",
            &cycles.to_string(),
            "--out",
            "net",
        ],
    );
    dir.join("net")
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every finished entry of `stage` in the journals of `pipeline`'s runs under `root`.
fn journal(root: &Path, pipeline: &str, stage: &str) -> Vec<Value> {
    let mut entries = Vec::new();
    for run in std::fs::read_dir(root.join(".gradline/runs")).unwrap() {
        let run = run.unwrap().path();
        let name = run.file_name().unwrap().to_string_lossy().into_owned();
        if name.rsplit_once('-').map(|(p, _)| p) != Some(pipeline) {
            continue;
        }
        entries.extend(
            lines(&run.join("journal.jsonl"))
                .into_iter()
                .filter(|e| e["stage"] == stage && e["status"] == "done"),
        );
    }
    entries
}

fn text(entry: &Value, port: &str) -> String {
    entry["outputs"][port]["str"]
        .as_str()
        .unwrap_or_else(|| panic!("{port} in {entry}"))
        .to_owned()
}

fn ledger(root: &Path, op: &str) -> Vec<Value> {
    lines(&root.join(".gradline/chain/ledger.jsonl"))
        .into_iter()
        .filter(|e| e["op"] == op)
        .collect()
}

fn miner_rows(summary: &Value) -> Vec<Vec<Value>> {
    summary["cycles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["miners"].as_array().unwrap().clone())
        .collect()
}

/// HF transport: every miner pulls, each window, exactly the revision the validator
/// committed, from the hub, and checks it against the committed digest.
#[test]
fn hf_transport_miners_pull_the_committed_revision_from_the_hub() {
    let net = up("hf-transport", 2);
    let uploads = journal(&net, "hf-transport-validator", "upload");
    assert_eq!(uploads.len(), 2, "the validator published each window");
    let pulls = journal(&net, "hf-transport-miner", "checkpoint");
    assert_eq!(pulls.len(), 6, "three miners, two windows");
    for pull in &pulls {
        assert_eq!(text(pull, "source"), "hub", "{pull}");
        // Each window's miners run before the validator: they pull what was committed
        // before (genesis, then the validator's last upload).
        let window = pull["window"].as_i64().unwrap();
        let committed = if window == 1 {
            text(
                &journal(&net, "hf-transport-genesis", "publish")[0],
                "revision",
            )
        } else {
            let last = uploads
                .iter()
                .find(|u| u["window"].as_i64() == Some(window - 1))
                .unwrap();
            text(last, "revision")
        };
        assert_eq!(text(pull, "revision"), committed, "{pull}");
    }
    let summary = json(&net.join("summary.json"));
    for row in miner_rows(&summary).concat() {
        assert!(row["loss_after"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["bytes_up"].as_u64().unwrap() > 0, "{row}");
    }
    let _ = std::fs::remove_dir_all(net.parent().unwrap());
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// HF transport with the hub broken: the miner falls back to the validator's
/// `/get-checkpoint` (`gradline serve`) and gets the same bytes, digest checked.
#[test]
fn hf_transport_falls_back_to_the_validators_endpoint_when_the_hub_fails() {
    let dir = held_at("hf-fallback", 10);
    gradline(&dir, &["run", &pipeline("hf-transport", "genesis.yaml")]);
    gradline(
        &dir,
        &[
            "run",
            &pipeline("hf-transport", "validator.yaml"),
            "--cycles",
            "1",
        ],
    );
    let port = free_port();
    let _served = Served(
        Command::new(env!("CARGO_BIN_EXE_gradline"))
            .args([
                "serve",
                &pipeline("hf-transport", "validator.yaml"),
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "serve never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let broken_hub = format!("hub=http://127.0.0.1:{}", free_port());
    let endpoint = format!("validator_endpoint=http://127.0.0.1:{port}");
    let output = gradline(
        &dir,
        &[
            "run",
            &pipeline("hf-transport", "miner.yaml"),
            "--cycles",
            "1",
            "--set",
            &broken_hub,
            "--set",
            &endpoint,
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("falling back to `http`"), "{stderr}");
    let pull = &journal(&dir, "hf-transport-miner", "checkpoint")[0];
    assert_eq!(text(pull, "source"), "http", "{pull}");
    let published = &journal(&dir, "hf-transport-validator", "upload")[0];
    assert_eq!(text(pull, "digest"), text(published, "digest"));
    assert_eq!(
        journal(&dir, "hf-transport-miner", "upload").len(),
        1,
        "the miner trained and uploaded on the fallback's checkpoint"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Window-loop mining: gradients are verified, scored and merged into the next checkpoint,
/// which every miner loads from the store the next window; training loss falls.
#[test]
fn window_loop_merges_gradients_into_each_next_checkpoint() {
    let net = up("window-loop", 3);
    let summary = json(&net.join("summary.json"));
    let rows = miner_rows(&summary);
    for (cycle, miners) in rows.iter().enumerate() {
        assert!(
            miners.iter().any(|m| m["accepted"].as_bool().unwrap()),
            "cycle {}: someone's gradient is merged: {miners:?}",
            cycle + 1
        );
    }
    let mean_loss = |miners: &Vec<Value>| {
        miners
            .iter()
            .map(|m| m["loss_after"].as_f64().unwrap())
            .sum::<f64>()
            / miners.len() as f64
    };
    assert!(
        mean_loss(&rows[2]) < mean_loss(&rows[0]),
        "training loss falls as checkpoints merge: {rows:?}"
    );
    let archived: Vec<Vec<u8>> = (1..=3)
        .map(|w| {
            std::fs::read(net.join(format!(".gradline/store/checkpoints/{w}.safetensors"))).unwrap()
        })
        .collect();
    assert!(archived[0] != archived[1] && archived[1] != archived[2]);
    assert_eq!(
        std::fs::read(net.join(".gradline/store/checkpoints/latest.safetensors")).unwrap(),
        archived[2]
    );
    // Miners anchored which checkpoint each gradient applies to.
    let anchors = ledger(&net, "commit");
    assert!(anchors.len() >= 9, "{anchors:?}");
    assert_eq!(ledger(&net, "set_weights").len(), 3);
    let _ = std::fs::remove_dir_all(net.parent().unwrap());
}

/// Fragment training: the orchestrator signs jobs, miners train their fragment, the
/// validator credits signed receipts, and the orchestrator releases the accepted states as
/// the next checkpoint, which miners pull at its committed revision.
#[test]
fn fragments_release_accepted_work_as_the_next_checkpoint() {
    let net = up("fragments", 3);
    let summary = json(&net.join("summary.json"));
    for miners in miner_rows(&summary) {
        assert_eq!(miners.len(), 3);
        for miner in miners {
            assert!(miner["accepted"].as_bool().unwrap(), "{miner}");
            assert!(miner["weight"].as_f64().unwrap() > 0.0, "{miner}");
        }
    }
    // The orchestrator's first cycle hands out work on the genesis checkpoint; each later
    // cycle first releases last window's accepted states.
    let releases = journal(&net, "fragments-orchestrator", "release");
    assert_eq!(releases.len(), 2);
    let genesis = text(&journal(&net, "fragments-genesis", "model")[0], "digest");
    let digests: Vec<String> = releases.iter().map(|r| text(r, "digest")).collect();
    assert!(
        digests[0] != genesis && digests[1] != digests[0],
        "each release holds the miners' work: {genesis} then {digests:?}"
    );
    // Miners pull the latest release at its committed revision.
    let mut published = journal(&net, "fragments-genesis", "publish");
    published.extend(journal(&net, "fragments-orchestrator", "publish"));
    for base in journal(&net, "fragments-miner", "base") {
        let latest = published
            .iter()
            .filter(|p| p["window"].as_i64() <= base["window"].as_i64())
            .max_by_key(|p| p["window"].as_i64())
            .unwrap();
        assert_eq!(text(&base, "revision"), text(latest, "revision"), "{base}");
    }
    let _ = std::fs::remove_dir_all(net.parent().unwrap());
}

/// The distillation contest: the teacher and prompts are set up, a miner publishes its
/// student and commits it, and the validator pre-checks it, scores it by KL and crowns it.
#[test]
fn distillation_crowns_the_committed_student() {
    let dir = held_at("distillation", 5);
    let models = repo().join("fixtures/models");
    gradline(
        &dir,
        &[
            "run",
            &pipeline("distillation", "genesis.yaml"),
            "--set",
            &format!("teacher_dir={}", models.join("tiny/f32").display()),
        ],
    );
    gradline(
        &dir,
        &[
            "run",
            &pipeline("distillation", "miner.yaml"),
            "--set",
            &format!("model_dir={}", models.join("student").display()),
        ],
    );
    gradline(
        &dir,
        &[
            "run",
            &pipeline("distillation", "validator.yaml"),
            "--cycles",
            "1",
        ],
    );
    let contest = &journal(&dir, "distillation-validator", "contest")[0];
    let king = contest["outputs"]["king"]["int"].as_i64().unwrap();
    let miner_uid = ledger(&dir, "register")
        .iter()
        .position(|e| e["role"] == "miner")
        .unwrap() as i64;
    assert_eq!(king, miner_uid, "the only student is king: {contest}");
    let weights = ledger(&dir, "set_weights");
    assert_eq!(weights.len(), 1);
    assert_eq!(
        weights[0]["uids"],
        serde_json::json!([miner_uid]),
        "{weights:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Model publishing: each variant on its own branch with its release tag and model card.
#[test]
fn publishing_puts_each_variant_on_its_branch_with_a_card_and_a_tag() {
    let dir = scratch("publishing");
    gradline(
        &dir,
        &[
            "run",
            &pipeline("publishing", "publisher.yaml"),
            "--set",
            &format!(
                "model_dir={}",
                repo().join("fixtures/models/tiny").display()
            ),
        ],
    );
    let repo_dir = dir.join(".gradline/hub/local/gradline-tiny");
    for variant in ["f32", "bf16"] {
        let head = std::fs::read_to_string(repo_dir.join("refs/heads").join(variant)).unwrap();
        let tag =
            std::fs::read_to_string(repo_dir.join(format!("refs/tags/v0.1.0-{variant}"))).unwrap();
        assert_eq!(
            head.trim(),
            tag.trim(),
            "the tag marks the branch's release"
        );
        let commit = json(&repo_dir.join(format!("commits/{}.json", head.trim())));
        let files = commit.to_string();
        assert!(
            files.contains(&format!("gradline-tiny-10m-{variant}.safetensors")),
            "named by the convention: {commit}"
        );
        assert!(files.contains("README.md"), "with a model card: {commit}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
