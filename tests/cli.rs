//! The command line as a user runs it: exit codes, output shapes.

use std::process::{Command, Output};

fn gradline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("HF_TOKEN")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_passes_on_every_pipeline() {
    let out = gradline(&[
        "validate",
        "pipelines/local",
        "pipelines/hf-transport",
        "pipelines/window-loop",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok  pipelines/local/validator.yaml"));
}

#[test]
fn invalid_input_exits_1_with_located_errors() {
    let out = gradline(&["validate", "fixtures/invalid/08-unknown-kind.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("fixtures/invalid/08-unknown-kind.yaml:9:11"),
        "{err}"
    );
    assert!(err.contains("did you mean `train`?"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(gradline(&["validate"]).status.code(), Some(2));
    assert_eq!(
        gradline(&["validate", "no/such/file.yaml"]).status.code(),
        Some(2)
    );
    assert_eq!(
        gradline(&["plan", "pipelines/local/miner.yaml", "--format", "pdf"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        gradline(&["plan", "pipelines/local/miner.yaml", "--set", "novalue"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn a_bad_set_is_invalid_input() {
    let out = gradline(&["plan", "pipelines/local/miner.yaml", "--set", "uid=one"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("`--set uid=one`: `one` is not an integer"));
}

#[test]
fn plan_of_a_folder_plans_the_whole_network() {
    let out = gradline(&["plan", "pipelines/local", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let plans: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = plans
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pipeline"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "local-copier",
            "local-genesis",
            "local-miner",
            "local-validator"
        ]
    );
}

#[test]
fn graph_prints_dot_and_mermaid() {
    let dot = text(&gradline(&["graph", "pipelines/local/validator.yaml"]).stdout);
    assert!(dot.starts_with("digraph \"local-validator\""), "{dot}");
    assert!(
        dot.contains("\"merge\" -> \"publish\" [label=\"checkpoint\"];"),
        "{dot}"
    );
    let mermaid = text(
        &gradline(&[
            "graph",
            "pipelines/local/validator.yaml",
            "--format",
            "mermaid",
        ])
        .stdout,
    );
    assert!(mermaid.starts_with("flowchart LR"), "{mermaid}");
    assert!(mermaid.contains("announce -.-> weights"), "{mermaid}");
}

#[test]
fn schema_prints_json_schema() {
    let out = gradline(&["schema"]);
    let schema: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(schema["title"], "gradline pipeline");
}

#[test]
fn non_utf8_input_is_an_error_not_a_panic() {
    let dir = std::env::temp_dir().join(format!("gradline-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("binary.yaml");
    std::fs::write(&path, [0xff, 0xfe, 0x00, 0x41]).unwrap();
    let out = gradline(&["validate", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not UTF-8"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn inspect_describes_blobs_and_explains_bad_ones() {
    let ok = gradline(&["inspect", "fixtures/codec/small.topk-ef.bin"]);
    assert_eq!(ok.status.code(), Some(0));
    let text_out = text(&ok.stdout);
    assert!(
        text_out.contains("codec     topk-ef v1") && text_out.contains("checksum  ok"),
        "{text_out}"
    );
    assert!(
        text_out.contains("n         8 parameters") && text_out.contains("k         4 entries"),
        "{text_out}"
    );
    let f16 = text(&gradline(&["inspect", "fixtures/codec/small.topk-f16.bin"]).stdout);
    assert!(f16.contains("codec     topk-f16"), "{f16}");
    let bad = gradline(&["inspect", "README.md"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("not a valid gradient blob"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn data_tokenize_reproduces_the_committed_shards() {
    let out = std::env::temp_dir().join(format!("gradline-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let files = [
        "fixtures/corpus/part-1.txt",
        "fixtures/corpus/part-2.txt",
        "fixtures/corpus/part-3.txt",
    ];
    let mut args = vec!["data", "tokenize"];
    args.extend(files);
    let out_arg = out.to_str().unwrap().to_owned();
    args.extend(["--out", &out_arg, "--shard-tokens", "65536"]);
    let run = gradline(&args);
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(text(&run.stdout).contains("3 shard(s), 180097 tokens (bytes, vocabulary 257)"));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/shards/bytes");
    for name in [
        "index.json",
        "shard_000000.bin",
        "shard_000001.bin",
        "shard_000002.bin",
    ] {
        assert_eq!(
            std::fs::read(out.join(name)).unwrap(),
            std::fs::read(root.join(name)).unwrap(),
            "{name}"
        );
    }
    let corpus = text(
        &gradline(&[
            "data",
            "corpus",
            "--out",
            "/dev/stdout",
            "--bytes",
            "60000",
            "--seed",
            "1",
        ])
        .stdout,
    );
    let committed =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(files[0]))
            .unwrap();
    assert!(
        corpus.starts_with(&committed),
        "the corpus generator still writes the committed corpus"
    );
    std::fs::remove_dir_all(&out).ok();
}
