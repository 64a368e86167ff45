//! A real `gradline run` is killed with SIGKILL mid-cycle; `--resume` redoes only what had
//! not finished, and no half-written object is ever visible.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = "version: 1
name: killed
role: miner
stages:
  first:
    uses: emit
    with: { text: \"one\" }
  pause:
    uses: wait
    needs: first
    with: { for: 30s }
  last:
    uses: emit
    needs: pause
    with: { text: \"after ${{ stages.first.outputs.digest }}\" }
";

fn gradline(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradline"));
    cmd.args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn journal(dir: &Path) -> String {
    let runs = dir.join(".gradline/runs");
    let Ok(entries) = std::fs::read_dir(&runs) else {
        return String::new();
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path().join("journal.jsonl")).unwrap_or_default())
        .collect()
}

fn count(journal: &str, stage: &str) -> usize {
    journal
        .lines()
        .filter(|l| l.contains(&format!("\"stage\":\"{stage}\"")))
        .count()
}

#[test]
fn sigkill_then_resume_redoes_only_unfinished_stages() {
    let dir = std::env::temp_dir().join(format!("gradline-kill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("p.yaml"), PIPELINE).unwrap();

    let mut child = gradline(&dir, &["run", "p.yaml", "--log-format", "text"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while count(&journal(&dir), "first") == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the first stage never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    let before = journal(&dir);
    assert_eq!(count(&before, "first"), 1);
    assert_eq!(count(&before, "last"), 0, "killed before the end");

    let plan = Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(["plan", "p.yaml", "--format", "json"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let cached: Vec<(&str, bool)> = plan["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["id"].as_str().unwrap(), s["cached"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        cached,
        [("first", true), ("pause", false), ("last", false)],
        "plan marks what resume would skip"
    );

    std::fs::write(dir.join("p.yaml"), PIPELINE.replace("30s", "100ms")).unwrap();
    let out = gradline(&dir, &["run", "p.yaml", "--resume", "--log-format", "text"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("first done after 0 attempt(s), 0 ms (cached)"),
        "{stderr}"
    );
    let after = journal(&dir);
    assert_eq!(
        count(&after, "first"),
        1,
        "the finished stage was not redone"
    );
    assert_eq!(count(&after, "last"), 1);

    let runs: Vec<_> = std::fs::read_dir(dir.join(".gradline/runs"))
        .unwrap()
        .collect();
    assert_eq!(runs.len(), 1, "resume continues the same run folder");
    let objects = runs[0].as_ref().unwrap().path().join("objects");
    for shard in std::fs::read_dir(&objects).unwrap().filter_map(|e| e.ok()) {
        if shard.file_name() == "tmp" {
            continue;
        }
        for object in std::fs::read_dir(shard.path())
            .unwrap()
            .filter_map(|e| e.ok())
        {
            let name = format!(
                "{}{}",
                shard.file_name().to_string_lossy(),
                object.file_name().to_string_lossy()
            );
            let bytes = std::fs::read(object.path()).unwrap();
            assert_eq!(
                blake3::hash(&bytes).to_hex().to_string(),
                name,
                "every visible object is whole"
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
