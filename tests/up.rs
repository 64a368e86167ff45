//! `gradline up pipelines/local` as a new user runs it: the demo network trains, the
//! copier earns nothing, and the report is written. The same network then runs as one
//! `gradline run` per role, sharing one store, hub and ledger folder.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::gradline_ok as gradline;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gradline-up-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_demo_network_trains_and_the_copier_earns_nothing() {
    let dir = scratch("demo");
    let pipelines = repo().join("pipelines/local");
    let output = gradline(
        &dir,
        &[
            "up",
            pipelines.to_str().unwrap(),
            "--cycles",
            "4",
            "--out",
            "net",
            "--log-format",
            "text",
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("cycle 4 · validation loss"), "{stdout}");
    assert!(stdout.contains("report: "), "{stdout}");

    let net = dir.join("net");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(net.join("summary.json")).unwrap()).unwrap();
    let cycles = summary["cycles"].as_array().unwrap();
    assert_eq!(cycles.len(), 4);
    let losses: Vec<f64> = cycles
        .iter()
        .map(|c| c["validation_loss"].as_f64().unwrap())
        .collect();
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "validation loss falls cycle over cycle: {losses:?}"
    );
    for cycle in cycles {
        let miners = cycle["miners"].as_array().unwrap();
        assert_eq!(miners.len(), 3, "three miners by default");
        for miner in miners {
            let label = miner["label"].as_str().unwrap();
            let weight = miner["weight"].as_f64().unwrap();
            if label.starts_with("copier") {
                assert_eq!(weight, 0.0, "the copier earns nothing: {miner}");
                assert!(!miner["accepted"].as_bool().unwrap());
                assert!(miner["verdict"].as_str().unwrap().contains("a copy"));
            } else {
                assert!(weight > 0.0, "an honest miner earns: {miner}");
                assert!(miner["loss_after"].as_f64().unwrap() > 0.0);
                assert!(miner["bytes_up"].as_u64().unwrap() > 0);
            }
        }
    }
    let html = std::fs::read_to_string(net.join("report.html")).unwrap();
    assert_eq!(html.matches("<svg").count(), 4, "four plots");
    assert!(html.contains("Validation loss per cycle"));

    // Every role kept an ordinary run folder, and the ledger holds the whole story.
    let runs = std::fs::read_dir(net.join(".gradline/runs"))
        .unwrap()
        .count();
    assert_eq!(runs, 5, "genesis, validator, two miners, the copier");
    let ledger = std::fs::read_to_string(net.join(".gradline/chain/ledger.jsonl")).unwrap();
    assert_eq!(ledger.matches("\"op\":\"set_weights\"").count(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn up_refuses_a_folder_that_already_holds_a_network() {
    let dir = scratch("twice");
    std::fs::create_dir_all(dir.join("net/.gradline")).unwrap();
    let pipelines = repo().join("pipelines/local");
    let output = Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(["up", pipelines.to_str().unwrap(), "--out", "net"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("already holds a network"));
    let output = Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args([
            "up",
            pipelines.to_str().unwrap(),
            "--miners",
            "1",
            "--out",
            "other",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("too few"));
    let contest = repo().join("pipelines/distillation");
    let output = Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(["up", contest.to_str().unwrap(), "--out", "contest"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("holds no miner that runs each window"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same network, one process per role, as on separate machines: they meet only in the
/// shared store, hub and ledger folder. The test holds the ledger's clock, as a slow chain
/// would, and moves it on a window at a time.
#[test]
fn the_network_runs_as_one_process_per_role() {
    let dir = scratch("processes");
    let local = repo().join("pipelines/local");
    let file = |name: &str| local.join(name).to_str().unwrap().to_owned();
    std::fs::create_dir_all(dir.join(".gradline/chain")).unwrap();
    std::fs::write(dir.join(".gradline/chain/clock.json"), r#"{"block": 0}"#).unwrap();
    gradline(
        &dir,
        &["run", &file("genesis.yaml"), "--log-format", "text"],
    );
    // Uids are handed out in registration order: register before mining at once.
    for uid in ["uid=1", "uid=2"] {
        gradline(&dir, &["register", &file("miner.yaml"), "--set", uid]);
    }
    for window in 1..=2 {
        std::fs::write(
            dir.join(".gradline/chain/clock.json"),
            format!(r#"{{"block": {}}}"#, window * 10),
        )
        .unwrap();
        let miners: Vec<std::process::Child> = [1, 2]
            .iter()
            .map(|uid| {
                Command::new(env!("CARGO_BIN_EXE_gradline"))
                    .args([
                        "run",
                        &file("miner.yaml"),
                        "--set",
                        &format!("uid={uid}"),
                        "--cycles",
                        "1",
                        "--log-format",
                        "text",
                    ])
                    .current_dir(&dir)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut miner in miners {
            assert!(miner.wait().unwrap().success(), "a miner failed");
        }
        let output = gradline(
            &dir,
            &[
                "run",
                &file("validator.yaml"),
                "--cycles",
                "1",
                "--log-format",
                "text",
            ],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("weights"), "{stderr}");
    }
    let ledger = std::fs::read_to_string(dir.join(".gradline/chain/ledger.jsonl")).unwrap();
    let entries: Vec<serde_json::Value> = ledger
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let weights: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["op"] == "set_weights")
        .collect();
    assert_eq!(weights.len(), 2, "the validator set weights each window");
    for set in weights {
        let uids: Vec<u64> = serde_json::from_value(set["uids"].clone()).unwrap();
        assert_eq!(uids.len(), 2, "both miners earned: {set}");
    }
    let commits = entries
        .iter()
        .filter(|e| e["op"] == "commit" && e["data"].as_str().unwrap().contains("revision"))
        .count();
    assert_eq!(
        commits, 3,
        "genesis and two windows each committed a checkpoint"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
