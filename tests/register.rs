//! Registration as a user does it: `gradline register` gives the pipeline's hotkey a uid once
//! (a second call spends nothing), and a run's `uid` stage finds it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const MINER: &str = "version: 1
name: uid-miner
role: miner
resources:
  chain: { url: \"local://ledger\", netuid: 3, block_time: 50ms }
stages:
  me:
    uses: uid
  given:
    uses: uid
    with: { uid: 7 }
";

fn workdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gradline-cli-register-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("miner.yaml"), MINER).unwrap();
    dir
}

fn gradline(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(args)
        .current_dir(dir)
        .env("GRADLINE_CACHE", dir.join("cache"))
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn register_gives_a_uid_once_and_the_uid_stage_finds_it() {
    let dir = workdir();
    let run = gradline(&dir, &["run", "miner.yaml", "--cycles", "1"]);
    assert!(!run.status.success(), "unregistered: {}", text(&run));
    assert!(text(&run).contains("gradline register"), "{}", text(&run));

    let first = gradline(&dir, &["register", "miner.yaml"]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(text(&first).contains("as uid 0"), "{}", text(&first));
    let again = gradline(&dir, &["register", "miner.yaml"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("already uid 0"), "{}", text(&again));
    let ledger = std::fs::read_to_string(dir.join("ledger/ledger.jsonl")).unwrap();
    assert_eq!(ledger.lines().count(), 1, "one registration: {ledger}");

    let run = gradline(&dir, &["run", "miner.yaml", "--cycles", "1"]);
    assert!(run.status.success(), "{}", text(&run));
    let journal = std::fs::read_dir(dir.join(".gradline/runs"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("journal.jsonl")).ok())
        .collect::<String>();
    assert!(journal.contains(r#""source":{"str":"chain"}"#), "{journal}");
    assert!(
        journal.contains(r#""source":{"str":"setting"}"#),
        "{journal}"
    );
    assert!(journal.contains(r#""uid":{"int":7}"#), "{journal}");
    let _ = std::fs::remove_dir_all(&dir);
}
