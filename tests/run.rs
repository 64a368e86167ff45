//! `gradline run` and `gradline replay` as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LOOP: &str = "version: 1
name: looping
role: miner
trigger: { every: window }
stages:
  hello:
    uses: emit
    with: { text: \"window ${{ cycle.window }}\" }
  pause:
    uses: wait
    needs: hello
    with: { for: PAUSE }
  done:
    uses: emit
    needs: pause
    with: { text: \"after ${{ stages.hello.outputs.digest }}\" }
";

fn workdir(name: &str, pause: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gradline-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), LOOP.replace("PAUSE", pause)).unwrap();
    dir
}

fn gradline(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_recorded_run_replays_exactly_and_a_tampered_tape_is_caught() {
    let dir = workdir("record", "10ms");
    let run = gradline(
        &dir,
        &[
            "run",
            "p.yaml",
            "--cycles",
            "2",
            "--window",
            "1s",
            "--record",
            "rec",
            "--log-format",
            "text",
        ],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let stderr = text(&run.stderr);
    assert!(stderr.contains("2 cycle(s) done"), "{stderr}");
    assert!(
        stderr.contains("stage                    status   attempts"),
        "the summary table: {stderr}"
    );

    let replay = gradline(&dir, &["replay", "rec", "--log-format", "text"]);
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    assert!(
        text(&replay.stdout)
            .contains("replay matches: 2 cycle(s), 6 stage output digests identical")
    );

    let tape = dir.join("rec/tape.jsonl");
    let lines = std::fs::read_to_string(&tape).unwrap();
    let recording = std::fs::read_to_string(dir.join("rec/run.json")).unwrap();
    std::fs::write(
        dir.join("rec/run.json"),
        recording.replace("window ${{ cycle.window }}", "window ${{ cycle.index }}"),
    )
    .unwrap();
    let changed = gradline(&dir, &["replay", "rec", "--log-format", "text"]);
    assert_eq!(changed.status.code(), Some(1));
    assert!(
        text(&changed.stderr).contains("replay differs from the recording"),
        "{}",
        text(&changed.stderr)
    );

    std::fs::write(dir.join("rec/run.json"), recording).unwrap();
    let first_line_dropped: String = lines.lines().skip(1).map(|l| format!("{l}\n")).collect();
    std::fs::write(&tape, first_line_dropped).unwrap();
    let missing = gradline(&dir, &["replay", "rec", "--log-format", "text"]);
    assert_eq!(missing.status.code(), Some(1));
    let err = text(&missing.stderr);
    assert!(err.contains("replay: unexpected call clock.now"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn json_events_are_one_object_per_line() {
    let dir = workdir("json", "10ms");
    let run = gradline(
        &dir,
        &["run", "p.yaml", "--cycles", "1", "--log-format", "json"],
    );
    assert!(run.status.success(), "{}", text(&run.stderr));
    let events: Vec<serde_json::Value> = text(&run.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"cycle_started"));
    assert_eq!(kinds.last(), Some(&"cycle_finished"));
    assert_eq!(kinds.iter().filter(|k| **k == "unit_finished").count(), 3);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_failing_stage_exits_non_zero_naming_stage_attempt_and_cause() {
    let dir = workdir("fail", "10ms");
    let broken = LOOP.replace("PAUSE", "\"${{ stages.hello.outputs.text }}\"");
    std::fs::write(dir.join("p.yaml"), broken).unwrap();
    let run = gradline(
        &dir,
        &["run", "p.yaml", "--cycles", "1", "--log-format", "text"],
    );
    assert_eq!(run.status.code(), Some(1));
    let err = text(&run.stderr);
    assert!(err.contains("stage `pause` failed on attempt 1"), "{err}");
    assert!(err.contains("p.yaml:12:18"), "the setting's place: {err}");
    assert!(
        err.contains("not run"),
        "the summary shows what did not run: {err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn interrupt(pid: u32) {
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
}

fn wait_for(dir: &Path, needle: &str) {
    let started = Instant::now();
    loop {
        let journal: String = std::fs::read_dir(dir.join(".gradline/runs"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| std::fs::read_to_string(e.path().join("journal.jsonl")).unwrap_or_default())
            .collect();
        if journal.contains(needle) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never saw {needle}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn ctrl_c_stops_at_the_cycle_boundary_and_twice_cancels_now() {
    let dir = workdir("ctrlc", "1s");
    let child = Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(["run", "p.yaml", "--window", "1s", "--log-format", "text"])
        .current_dir(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&dir, "\"stage\":\"hello\"");
    interrupt(child.id());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stopping after this cycle"), "{err}");
    assert!(
        err.contains("1 cycle(s) done"),
        "the cycle in progress finished: {err}"
    );

    let dir = workdir("ctrlc2", "30s");
    let child = Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(["run", "p.yaml", "--log-format", "text"])
        .current_dir(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&dir, "\"stage\":\"hello\"");
    interrupt(child.id());
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    interrupt(child.id());
    let out = child.wait_with_output().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second Ctrl-C does not wait for the 30 s stage"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cancelled"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_committed_tape_still_replays() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = gradline(
        root,
        &["replay", "fixtures/tapes/hello", "--log-format", "text"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("replay matches: 2 cycle(s), 6 stage output digests identical")
    );
    assert!(
        !root.join("fixtures/tapes/hello/replay").exists(),
        "replay writes nothing into the recording"
    );
}

/// One recorded cycle of each role of every system under `pipelines/` (recorded by
/// `fixtures/tapes/record.sh`) replays offline with every stage output digest identical:
/// training, compression, scoring, merging and releasing are deterministic, and every outside
/// call — store, hub, ledger, signing — comes from the tape.
#[test]
fn every_systems_recorded_cycle_replays_exactly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tapes = [
        ("local-genesis", 5),
        ("local-miner", 6),
        ("local-validator", 10),
        ("hf-transport-validator", 4),
        ("hf-transport-miner", 5),
        ("window-loop-miner", 5),
        ("window-loop-validator", 9),
        ("fragments-orchestrator", 5),
        ("fragments-miner", 6),
        ("fragments-validator", 8),
        ("distillation-validator", 4),
        ("publishing", 1),
    ];
    let recorded = std::fs::read_dir(root.join("fixtures/tapes"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert_eq!(
        recorded,
        tapes.len() + 1,
        "every tape is replayed (and `hello`)"
    );
    for (tape, outputs) in tapes {
        let tape = format!("fixtures/tapes/{tape}");
        let tape = tape.as_str();
        let out = gradline(root, &["replay", tape, "--log-format", "text"]);
        assert!(out.status.success(), "{tape}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!(
                "replay matches: 1 cycle(s), {outputs} stage output digests identical"
            )),
            "{tape}: {}",
            text(&out.stdout)
        );
    }
}
