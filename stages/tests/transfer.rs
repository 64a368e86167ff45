//! Download and publish over real protocols on loopback: a server speaking the Hugging Face
//! Hub's API (through `hf-hub`), `gradline serve`'s checkpoint endpoint, an S3 server
//! (s3s-fs) and the embedded `local://` hub. Every failure mode checks its outcome and that
//! nothing partial is left behind.

mod common;
mod servers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gradline_engine::effects::{Recorder, Transport};
use gradline_engine::expr::Val;
use gradline_engine::journal::JournalEntry;
use gradline_engine::runtime::digest_of;
use gradline_engine::schedule::RunError;
use gradline_stages::live::serve::{FixedFile, router};
use gradline_stages::live::{LiveOptions, connect};
use servers::fake_hub::{Fault, HubState};

const TOKEN: &str = "hf_test_secret_token_0123456789";
const REPO: &str = "team/ckpt";

/// A scratch folder for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("gradline-transfer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The environment a run sees: only what the test gives it.
fn env_of(vars: &[(&str, &str)], scratch: &Path) -> impl Fn(&str) -> Option<String> + use<> {
    let mut map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    map.insert(
        "HF_HUB_CACHE".into(),
        scratch.join("hf-cache").display().to_string(),
    );
    map.insert(
        "GRADLINE_CACHE".into(),
        scratch.join("gradline-cache").display().to_string(),
    );
    move |name| map.get(name).cloned()
}

/// Loads a pipeline, connects its live systems with `env`, and runs one cycle.
async fn run(
    tag: &str,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    record: Option<&Path>,
) -> (common::TestRun, Result<Vec<JournalEntry>, RunError>) {
    let registry = gradline_stages::registry();
    let loaded = gradline_engine::load(&format!("{tag}.yaml"), text, &registry, &[]);
    assert!(!loaded.has_errors(), "{}", loaded.render());
    let pipeline = loaded.pipeline.unwrap();
    let not_ready = gradline_engine::preflight::check(&pipeline, env);
    assert!(not_ready.is_empty(), "{not_ready:?}");
    let live: Arc<dyn Transport> = Arc::new(
        connect(&pipeline, env, &LiveOptions::from_env(env))
            .await
            .unwrap(),
    );
    let transport: Arc<dyn Transport> = match record {
        Some(dir) => Arc::new(Recorder::create(live, dir).unwrap()),
        None => live,
    };
    let (run, outcome) =
        common::try_run_pipeline(tag, text, &registry, transport, 1, Duration::from_secs(60)).await;
    let outcome = outcome.map(|_| run.dir.entries().unwrap());
    (run, outcome)
}

fn outputs<'a>(
    entries: &'a [JournalEntry],
    stage: &str,
) -> &'a std::collections::BTreeMap<String, Val> {
    &entries
        .iter()
        .find(|e| e.stage == stage)
        .unwrap_or_else(|| panic!("no `{stage}` entry"))
        .outputs
}

fn text(value: &Val) -> &str {
    match value {
        Val::Str(s) => s,
        other => panic!("not text: {other:?}"),
    }
}

fn artifact_bytes(run: &common::TestRun, value: &Val) -> Vec<u8> {
    let Val::Artifact(a) = value else {
        panic!("not an artifact: {value:?}")
    };
    run.dir.objects.get(a).unwrap()
}

/// Files under a folder whose name says they are partial.
fn partial_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(partial_files(&path));
        } else if path.to_string_lossy().contains(".incomplete")
            || path.to_string_lossy().contains(".tmp-")
        {
            out.push(path);
        }
    }
    out
}

fn checkpoint_bytes(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The three sources of a miner's download: the fake hub, a checkpoint endpoint and S3.
struct Sources {
    scratch: Scratch,
    hub: servers::fake_hub::Hub,
    hub_at: SocketAddr,
    endpoint_at: SocketAddr,
    s3_at: SocketAddr,
    good: Vec<u8>,
}

async fn sources(
    tag: &str,
    hub_bytes: &[u8],
    endpoint_bytes: &[u8],
    store_bytes: &[u8],
) -> Sources {
    let scratch = Scratch::new(tag);
    let hub = HubState::new(Some(TOKEN));
    hub.seed(REPO, &[("model.safetensors", hub_bytes)]);
    let hub_at = servers::start(servers::fake_hub::router(hub.clone())).await;
    let served = scratch.0.join("served.safetensors");
    std::fs::write(&served, endpoint_bytes).unwrap();
    let endpoint = FixedFile::open(served, Some("endpoint-rev".into())).unwrap();
    let endpoint_at = servers::start(router(Arc::new(endpoint))).await;
    let s3_root = scratch.0.join("s3");
    std::fs::create_dir_all(s3_root.join("bucket/ckpt")).unwrap();
    std::fs::write(s3_root.join("bucket/ckpt/model.safetensors"), store_bytes).unwrap();
    let s3_at = servers::start_s3(&s3_root).await;
    Sources {
        scratch,
        hub,
        hub_at,
        endpoint_at,
        s3_at,
        good: checkpoint_bytes(7, 5000),
    }
}

impl Sources {
    fn pipeline(&self, digest: &str, hub_timeout: &str) -> String {
        format!(
            "version: 1
name: fetcher
role: miner
resources:
  hub: {{ endpoint: \"http://{hub}\", repo: {REPO}, timeout: {hub_timeout} }}
  http: {{ url: \"http://{endpoint}\" }}
  store: {{ url: \"s3://bucket/ckpt\", endpoint: \"http://{s3}\", allow_http: true }}
stages:
  checkpoint:
    uses: download
    with: {{ from: [hub, http, store], object: model.safetensors, revision: main, digest: \"{digest}\" }}
",
            hub = self.hub_at,
            endpoint = self.endpoint_at,
            s3 = self.s3_at,
        )
    }

    fn env(&self) -> impl Fn(&str) -> Option<String> + use<> {
        env_of(
            &[
                ("AWS_ACCESS_KEY_ID", servers::S3_KEY),
                ("AWS_SECRET_ACCESS_KEY", servers::S3_SECRET),
            ],
            &self.scratch.0,
        )
    }

    /// Runs the download; returns the source that served and the bytes.
    async fn download(&self, tag: &str, hub_timeout: &str) -> Result<(String, Vec<u8>), String> {
        let digest = digest_of(&self.good);
        let (run, outcome) =
            run(tag, &self.pipeline(&digest, hub_timeout), &self.env(), None).await;
        let leftovers = partial_files(&self.scratch.0);
        assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
        match outcome {
            Ok(entries) => {
                let out = outputs(&entries, "checkpoint");
                assert_eq!(text(&out["digest"]), digest);
                Ok((
                    text(&out["source"]).to_owned(),
                    artifact_bytes(&run, &out["checkpoint"]),
                ))
            }
            Err(e) => {
                assert!(
                    run.dir
                        .entries()
                        .unwrap()
                        .iter()
                        .all(|e| e.stage != "checkpoint")
                );
                Err(e.to_string())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hub_serves_a_pinned_revision_into_the_hf_cache_layout() {
    let scratch = Scratch::new("hub-read");
    let hub = HubState::new(Some(TOKEN));
    let big = checkpoint_bytes(1, 5000);
    let sha = hub.seed(
        REPO,
        &[
            ("model.safetensors", &big),
            ("config.json", b"{\"n_layer\": 2}"),
        ],
    );
    let at = servers::start(servers::fake_hub::router(hub.clone())).await;
    let pipeline = format!(
        "version: 1
name: reader
role: miner
resources:
  hub: {{ endpoint: \"http://{at}\", repo: {REPO} }}
stages:
  weights:
    uses: download
    with: {{ from: [hub], object: model.safetensors, revision: main }}
  config:
    uses: download
    with: {{ from: [hub], as: blob, object: config.json, revision: \"{sha}\" }}
"
    );
    let env = env_of(&[], &scratch.0);
    let (run, outcome) = run("hub-read", &pipeline, &env, None).await;
    let entries = outcome.unwrap();
    let weights = outputs(&entries, "weights");
    assert_eq!(
        text(&weights["revision"]),
        sha,
        "the branch resolves to the commit SHA"
    );
    assert_eq!(text(&weights["source"]), "hub");
    assert_eq!(artifact_bytes(&run, &weights["checkpoint"]), big);
    assert_eq!(
        artifact_bytes(&run, &outputs(&entries, "config")["blob"]),
        b"{\"n_layer\": 2}"
    );
    let repo_dir = scratch.0.join("hf-cache/models--team--ckpt");
    let blob = repo_dir.join("blobs").join(servers::fake_hub::sha256(&big));
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        big,
        "LFS blobs are named by sha256"
    );
    let small = repo_dir
        .join("blobs")
        .join(servers::fake_hub::git_oid(b"{\"n_layer\": 2}"));
    assert!(small.is_file(), "git files are named by their blob id");
    let snapshot = repo_dir
        .join("snapshots")
        .join(&sha)
        .join("model.safetensors");
    assert!(
        std::fs::symlink_metadata(&snapshot)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(&snapshot).unwrap(), big);
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        sha
    );
    assert!(partial_files(&scratch.0).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_safetensors_header_is_read_from_the_hub_by_ranges_alone() {
    use gradline_engine::effects::{CallScope, Request};
    use gradline_stages::hub::HeaderArgs;
    use gradline_stages::live::hf::{HfConfig, HfHub};
    use gradline_stages::tensors::{StoredDtype, TensorSet};
    use gradline_stages::verify::precheck::summarize;

    let scratch = Scratch::new("hub-header");
    let hub = HubState::new(Some(TOKEN));
    let mut set = TensorSet::flat(vec![0.5; 3000]);
    set.shapes = vec![vec![30, 100]];
    let weights = set
        .to_safetensors_as("checkpoint", StoredDtype::Bf16)
        .unwrap();
    let sha = hub.seed(REPO, &[("model.safetensors", &weights)]);
    let at = servers::start(servers::fake_hub::router(hub.clone())).await;
    let face = HfHub::connect(&HfConfig {
        endpoint: format!("http://{at}"),
        token: Some(TOKEN.into()),
        timeout: Duration::from_secs(10),
        cache_dir: Some(scratch.0.join("hf-cache")),
        attempts: 2,
    })
    .unwrap();
    let args = HeaderArgs {
        repo: REPO.into(),
        revision: sha.clone(),
        path: "model.safetensors".into(),
    };
    let answer = face
        .call(
            &CallScope::scheduler(0),
            Request::new("hub", "header", serde_json::json!(args)),
        )
        .await
        .unwrap();
    let summary = summarize(&answer.body.unwrap()).unwrap();
    assert_eq!(summary.params, 3000);
    assert!(summary.dtypes.contains("BF16"));
    assert_eq!(answer.value["revision"], serde_json::json!(sha));
    assert_eq!(
        answer.value["hash"],
        serde_json::json!(servers::fake_hub::sha256(&weights)),
        "the LFS sha256 of the whole file"
    );
    let ranges = hub.ranges.lock().unwrap().clone();
    assert_eq!(ranges.len(), 2, "{ranges:?}");
    assert!(ranges[0].starts_with("bytes=0-"), "{ranges:?}");
    assert!(ranges[1].starts_with("bytes=8-"), "{ranges:?}");
    assert!(
        !scratch.0.join("hf-cache/models--team--ckpt/blobs").exists(),
        "no weights were downloaded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_hub_download_resumes_from_where_it_stopped() {
    let s = sources("resume", &checkpoint_bytes(7, 5000), b"", b"").await;
    s.hub.fault(Fault::Truncate(2000));
    let (source, bytes) = s.download("resume", "60s").await.unwrap();
    assert_eq!(source, "hub");
    assert_eq!(bytes, s.good);
    assert_eq!(
        *s.hub.ranges.lock().unwrap(),
        vec!["bytes=2000-4999".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_answering_5xx_falls_back_to_the_endpoint() {
    let good = checkpoint_bytes(7, 5000);
    let s = sources("hub-5xx", &good, &good, b"").await;
    *s.hub.down.lock().unwrap() = Some(503);
    let (source, bytes) = s.download("hub-5xx", "60s").await.unwrap();
    assert_eq!((source.as_str(), bytes), ("http", good));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_that_stalls_times_out_and_falls_back_to_the_endpoint() {
    let good = checkpoint_bytes(7, 5000);
    let s = sources("hub-stall", &good, &good, b"").await;
    *s.hub.always.lock().unwrap() = Some(Fault::Stall(Duration::from_secs(30)));
    let started = std::time::Instant::now();
    let (source, bytes) = s.download("hub-stall", "300ms").await.unwrap();
    assert_eq!((source.as_str(), bytes), ("http", good));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hub_that_keeps_truncating_falls_back_and_leaves_no_partial_file() {
    let good = checkpoint_bytes(7, 5000);
    let s = sources("hub-truncate", &good, &good, b"").await;
    *s.hub.always.lock().unwrap() = Some(Fault::Truncate(100));
    let (source, bytes) = s.download("hub-truncate", "60s").await.unwrap();
    assert_eq!((source.as_str(), bytes), ("http", good));
    assert!(
        *s.hub.downloads.lock().unwrap() >= 2,
        "the hub download was retried"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_not_matching_the_hubs_own_hash_are_refused_before_the_cache() {
    let good = checkpoint_bytes(7, 5000);
    let s = sources("hub-corrupt", &good, &good, b"").await;
    *s.hub.always.lock().unwrap() = Some(Fault::Corrupt);
    let (source, bytes) = s.download("hub-corrupt", "60s").await.unwrap();
    assert_eq!((source.as_str(), bytes), ("http", good));
    let blobs = s.scratch.0.join("hf-cache/models--team--ckpt/blobs");
    assert!(
        std::fs::read_dir(&blobs).map_or(true, |d| d.count() == 0),
        "nothing entered the cache"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_digest_mismatch_on_hub_and_endpoint_falls_back_to_the_store() {
    let good = checkpoint_bytes(7, 5000);
    let s = sources(
        "mismatch",
        &checkpoint_bytes(8, 5000),
        &checkpoint_bytes(9, 5000),
        &good,
    )
    .await;
    let (source, bytes) = s.download("mismatch", "60s").await.unwrap();
    assert_eq!((source.as_str(), bytes), ("store", good));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_source_failing_is_one_error_naming_each_cause() {
    let s = sources(
        "all-fail",
        &checkpoint_bytes(8, 5000),
        &checkpoint_bytes(9, 5000),
        &checkpoint_bytes(10, 5000),
    )
    .await;
    let error = s.download("all-fail", "60s").await.unwrap_err();
    assert!(
        error.contains("no source served `model.safetensors`"),
        "{error}"
    );
    for cause in [
        "hub: digest mismatch",
        "http: digest mismatch",
        "store: digest mismatch",
    ] {
        assert!(error.contains(cause), "`{cause}` missing from: {error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_to_the_hub_commits_names_tags_and_writes_a_model_card() {
    let scratch = Scratch::new("hub-write");
    let hub = HubState::new(Some(TOKEN));
    let at = servers::start(servers::fake_hub::router(hub.clone())).await;
    let weights = checkpoint_bytes(3, 3000);
    let file = scratch.0.join("weights.safetensors");
    std::fs::write(&file, &weights).unwrap();
    let pipeline = format!(
        "version: 1
name: publisher
role: publisher
resources:
  hub: {{ endpoint: \"http://{at}\", repo: {REPO} }}
stages:
  results:
    uses: emit
    with: {{ text: '{{\"hellaswag\": 0.31, \"arc_easy\": 0.42}}' }}
  release:
    uses: publish
    with:
      target: hub
      files: [\"{file}\"]
      create_repo: true
      branch: bf16
      tag: v1
      naming: {{ name: nanogpt, size: 10M, quant: BF16, ext: safetensors }}
      results: \"${{{{ stages.results.outputs.blob }}}}\"
      card:
        license: apache-2.0
        language: [en]
        tags: [text-generation]
        hardware: [{{ device: H100, memory: 80GB, tokens_per_second: 1200000 }}]
",
        file = file.display()
    );
    let env = env_of(&[("HF_TOKEN", TOKEN)], &scratch.0);
    let tape = scratch.0.join("tape");
    let (_run, outcome) = run("hub-write", &pipeline, &env, Some(&tape)).await;
    let entries = outcome.unwrap();
    let release = outputs(&entries, "release");
    let revision = text(&release["revision"]).to_owned();
    assert_eq!(
        hub.resolve(REPO, "bf16").as_deref(),
        Some(revision.as_str())
    );
    assert_eq!(
        hub.resolve(REPO, "v1").as_deref(),
        Some(revision.as_str()),
        "the tag names the commit"
    );
    assert_eq!(
        hub.file(REPO, &revision, "nanogpt-10m-bf16.safetensors")
            .unwrap(),
        weights
    );
    let card = String::from_utf8(hub.file(REPO, &revision, "README.md").unwrap()).unwrap();
    for needle in [
        "license: \"apache-2.0\"",
        "  - \"en\"",
        "  - \"text-generation\"",
        "| H100 | 80GB | 1200000 |",
        "| hellaswag | 0.31 |",
        "hf_hub_download(\"team/ckpt\", \"nanogpt-10m-bf16.safetensors\")",
    ] {
        assert!(
            card.contains(needle),
            "`{needle}` missing from the card:\n{card}"
        );
    }
    assert!(card.starts_with("---\n"));
    let taped = std::fs::read_dir(&tape)
        .unwrap()
        .flatten()
        .chain(std::fs::read_dir(tape.join("blobs")).unwrap().flatten());
    for entry in taped {
        if entry.path().is_file() {
            let bytes = std::fs::read(entry.path()).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(TOKEN),
                "the token leaked into {}",
                entry.path().display()
            );
        }
    }
    // The published revision downloads back, byte for byte.
    let reader = format!(
        "version: 1
name: reader
role: miner
resources:
  hub: {{ endpoint: \"http://{at}\", repo: {REPO} }}
stages:
  weights:
    uses: download
    with: {{ from: [hub], object: nanogpt-10m-bf16.safetensors, revision: \"{revision}\", digest: \"{}\" }}
",
        digest_of(&weights)
    );
    let (run, outcome) = run("hub-write-read", &reader, &env, None).await;
    let entries = outcome.unwrap();
    assert_eq!(
        artifact_bytes(&run, &outputs(&entries, "weights")["checkpoint"]),
        weights
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_refused_without_the_token_in_the_error() {
    let scratch = Scratch::new("hub-auth");
    let hub = HubState::new(Some(TOKEN));
    hub.seed(REPO, &[("a.txt", b"a")]);
    let at = servers::start(servers::fake_hub::router(hub.clone())).await;
    let pipeline = format!(
        "version: 1
name: publisher
role: publisher
resources:
  hub: {{ endpoint: \"http://{at}\", repo: {REPO} }}
stages:
  note: {{ uses: emit, with: {{ text: hello }} }}
  up:
    uses: publish
    with: {{ target: hub, artifact: \"${{{{ stages.note.outputs.blob }}}}\", path: hello.txt }}
"
    );
    let wrong = "hf_wrong_token_9876543210";
    let env = env_of(&[("HF_TOKEN", wrong)], &scratch.0);
    let (_run, outcome) = run("hub-auth", &pipeline, &env, None).await;
    let error = outcome.unwrap_err().to_string();
    assert!(error.contains("stage `up`"), "{error}");
    assert!(!error.contains(wrong), "{error}");
    assert_eq!(hub.file(REPO, "main", "hello.txt"), None);
}

#[test]
fn publishing_to_the_hub_without_a_token_or_a_repository_is_refused_at_start_up() {
    let registry = gradline_stages::registry();
    let text = "version: 1
name: publisher
role: publisher
params:
  repo: { type: string, default: \"\" }
resources:
  hub: { endpoint: \"https://huggingface.co\", repo: \"${{ params.repo }}\" }
stages:
  note: { uses: emit, with: { text: x } }
  up:
    uses: publish
    with: { target: hub, artifact: \"${{ stages.note.outputs.blob }}\" }
";
    let loaded = gradline_engine::load("p.yaml", text, &registry, &[]);
    assert!(!loaded.has_errors(), "{}", loaded.render());
    let pipeline = loaded.pipeline.unwrap();
    let nothing = |_: &str| None;
    let messages: Vec<String> = gradline_engine::preflight::check(&pipeline, &nothing)
        .into_iter()
        .map(|n| format!("{}: {}", n.stage, n.message))
        .collect();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(
        messages[0].contains("needs a token")
            && messages[0].contains("HF_TOKEN, HUGGING_FACE_HUB_TOKEN, HUGGINGFACE_API_KEY"),
        "{messages:?}"
    );
    assert!(messages[1].contains("needs a repository"), "{messages:?}");
    let token_only_in_third =
        |name: &str| (name == "HUGGINGFACE_API_KEY").then(|| "hf_x".to_owned());
    let left = gradline_engine::preflight::check(&pipeline, &token_only_in_third);
    assert_eq!(left.len(), 1, "the third variable counts: {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_s3_store_round_trips_small_and_multipart_objects() {
    let scratch = Scratch::new("s3");
    let at = servers::start_s3(&scratch.0.join("s3")).await;
    std::fs::create_dir_all(scratch.0.join("s3/bucket")).unwrap();
    let big = checkpoint_bytes(
        5,
        gradline_stages::live::object_store::MULTIPART_THRESHOLD + (3 << 20),
    );
    let file = scratch.0.join("big.bin");
    std::fs::write(&file, &big).unwrap();
    let pipeline = format!(
        "version: 1
name: s3
role: miner
resources:
  store: {{ url: \"s3://bucket/run\", endpoint: \"http://{at}\", allow_http: true }}
stages:
  note: {{ uses: emit, with: {{ text: a small blob }} }}
  small:
    uses: publish
    with: {{ target: store, artifact: \"${{{{ stages.note.outputs.blob }}}}\", key: small.bin }}
  big:
    uses: publish
    with: {{ target: store, files: [\"{file}\"], key: big.bin }}
  back:
    uses: download
    needs: [small, big]
    with: {{ from: [store], as: blob, object: big.bin, digest: \"{digest}\" }}
",
        file = file.display(),
        digest = digest_of(&big)
    );
    let env = env_of(
        &[
            ("AWS_ACCESS_KEY_ID", servers::S3_KEY),
            ("AWS_SECRET_ACCESS_KEY", servers::S3_SECRET),
        ],
        &scratch.0,
    );
    let (run, outcome) = run("s3", &pipeline, &env, None).await;
    let entries = outcome.unwrap();
    assert_eq!(
        std::fs::read(scratch.0.join("s3/bucket/run/small.bin")).unwrap(),
        b"a small blob"
    );
    assert_eq!(
        std::fs::read(scratch.0.join("s3/bucket/run/big.bin"))
            .unwrap()
            .len(),
        big.len()
    );
    assert_eq!(
        artifact_bytes(&run, &outputs(&entries, "back")["blob"]),
        big
    );
    assert!(partial_files(&scratch.0).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_s3_store_refuses_plain_http_unless_asked_and_caps_downloads() {
    let registry = gradline_stages::registry();
    let scratch = Scratch::new("s3-refuse");
    let text = "version: 1
name: s3
role: miner
resources:
  store: { url: \"s3://bucket\", endpoint: \"http://127.0.0.1:9\" }
stages:
  back:
    uses: download
    with: { from: [store], as: blob, object: x.bin }
";
    let pipeline = gradline_engine::load("p.yaml", text, &registry, &[])
        .pipeline
        .unwrap();
    let env = env_of(&[], &scratch.0);
    let error = connect(&pipeline, &env, &LiveOptions::from_env(&env))
        .await
        .err()
        .unwrap();
    assert!(error.contains("allow_http: true"), "{error}");

    let at = servers::start_s3(&scratch.0.join("s3")).await;
    std::fs::create_dir_all(scratch.0.join("s3/bucket")).unwrap();
    std::fs::write(scratch.0.join("s3/bucket/x.bin"), vec![0u8; 4096]).unwrap();
    let capped = format!(
        "version: 1
name: s3
role: miner
resources:
  store: {{ url: \"s3://bucket\", endpoint: \"http://{at}\", allow_http: true }}
stages:
  back:
    uses: download
    with: {{ from: [store], as: blob, object: x.bin, max_bytes: 1KiB }}
"
    );
    let env = env_of(
        &[
            ("AWS_ACCESS_KEY_ID", servers::S3_KEY),
            ("AWS_SECRET_ACCESS_KEY", servers::S3_SECRET),
        ],
        &scratch.0,
    );
    let (_run, outcome) = run("s3-cap", &capped, &env, None).await;
    let error = outcome.unwrap_err().to_string();
    assert!(error.contains("over the cap"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_hub_keeps_immutable_revisions_branches_and_tags() {
    let scratch = Scratch::new("local-hub");
    let hub_dir = scratch.0.join("hub");
    let weights = checkpoint_bytes(2, 2048);
    let publish = format!(
        "version: 1
name: local-pub
role: validator
resources:
  hub: {{ endpoint: \"local://{dir}\", repo: demo/ckpt }}
stages:
  note: {{ uses: emit, with: {{ text: \"{text}\" }} }}
  first:
    uses: publish
    with: {{ target: hub, artifact: \"${{{{ stages.note.outputs.blob }}}}\", path: model.safetensors, create_repo: true, tag: v1 }}
",
        dir = hub_dir.display(),
        text = "first version"
    );
    let env = env_of(&[], &scratch.0);
    let (_run, outcome) = run("local-pub", &publish, &env, None).await;
    let first = text(&outputs(&outcome.unwrap(), "first")["revision"]).to_owned();
    assert_eq!(first.len(), 40);
    let file = scratch.0.join("w.safetensors");
    std::fs::write(&file, &weights).unwrap();
    let second = publish
        .replace(
            "artifact: \"${{ stages.note.outputs.blob }}\"",
            &format!("files: [\"{}\"]", file.display()),
        )
        .replace(", tag: v1", "");
    let (_run, outcome) = run("local-pub-2", &second, &env, None).await;
    let latest = text(&outputs(&outcome.unwrap(), "first")["revision"]).to_owned();
    assert_ne!(first, latest);
    let read = |revision: &str| {
        format!(
            "version: 1
name: local-read
role: miner
resources:
  hub: {{ endpoint: \"local://{dir}\", repo: demo/ckpt }}
stages:
  get:
    uses: download
    with: {{ from: [hub], object: model.safetensors, revision: \"{revision}\" }}
",
            dir = hub_dir.display()
        )
    };
    for (revision, want, sha) in [
        ("v1", b"first version".to_vec(), &first),
        (first.as_str(), b"first version".to_vec(), &first),
        ("main", weights.clone(), &latest),
    ] {
        let (run, outcome) = run("local-read", &read(revision), &env, None).await;
        let entries = outcome.unwrap();
        let out = outputs(&entries, "get");
        assert_eq!(
            artifact_bytes(&run, &out["checkpoint"]),
            want,
            "at {revision}"
        );
        assert_eq!(text(&out["revision"]), sha.as_str());
    }
    // A damaged object is refused, not served.
    let objects = hub_dir.join("demo/ckpt/objects");
    let object = objects.join(blake3::hash(&weights).to_hex().as_str());
    std::fs::write(&object, b"tampered").unwrap();
    let (_run, outcome) = run("local-read-bad", &read("main"), &env, None).await;
    let error = outcome.unwrap_err().to_string();
    assert!(error.contains("damaged"), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_checkpoint_endpoint_serves_ranges_with_revision_and_digest() {
    let scratch = Scratch::new("endpoint");
    let bytes = checkpoint_bytes(4, 10_000);
    let path = scratch.0.join("ckpt.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let at = servers::start(router(Arc::new(
        FixedFile::open(path, Some("abc123".into())).unwrap(),
    )))
    .await;
    let client = reqwest::Client::new();
    let full = client
        .get(format!("http://{at}/get-checkpoint"))
        .send()
        .await
        .unwrap();
    assert_eq!(full.status(), 200);
    let digest = digest_of(&bytes);
    assert_eq!(full.headers()["x-gradline-digest"], digest.as_str());
    assert_eq!(full.headers()["x-gradline-revision"], "abc123");
    assert_eq!(full.headers()["etag"], format!("\"{digest}\"").as_str());
    assert_eq!(full.bytes().await.unwrap().to_vec(), bytes);
    let part = client
        .get(format!("http://{at}/get-checkpoint"))
        .header("range", "bytes=9000-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 9000-9999/10000");
    assert_eq!(part.bytes().await.unwrap().to_vec(), &bytes[9000..]);
    let stale = client
        .get(format!("http://{at}/get-checkpoint"))
        .header("range", "bytes=9000-")
        .header("if-range", "\"another-digest\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200, "a changed checkpoint is sent whole");
    let health: serde_json::Value = client
        .get(format!("http://{at}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["revision"], "abc123");
}

#[tokio::test(flavor = "multi_thread")]
async fn hf_endpoint_replaces_the_public_hub_and_a_recorded_download_replays_offline() {
    let scratch = Scratch::new("hf-endpoint");
    let hub = HubState::new(None);
    let weights = checkpoint_bytes(6, 4000);
    hub.seed(REPO, &[("model.safetensors", &weights)]);
    let at = servers::start(servers::fake_hub::router(hub.clone())).await;
    let pipeline = format!(
        "version: 1
name: mirror
role: miner
resources:
  hub: {{ endpoint: \"https://huggingface.co\", repo: {REPO} }}
stages:
  weights:
    uses: download
    with: {{ from: [hub], object: model.safetensors, revision: main, digest: \"{}\" }}
",
        digest_of(&weights)
    );
    let endpoint = format!("http://{at}");
    let env = env_of(&[("HF_ENDPOINT", endpoint.as_str())], &scratch.0);
    let tape = scratch.0.join("tape");
    let (_run, outcome) = run("hf-endpoint", &pipeline, &env, Some(&tape)).await;
    let recorded = outputs(&outcome.unwrap(), "weights").clone();
    assert_eq!(text(&recorded["source"]), "hub");

    // Offline: the hub is down, the tape answers.
    *hub.down.lock().unwrap() = Some(503);
    let registry = gradline_stages::registry();
    let replayer = Arc::new(gradline_engine::effects::Replayer::open(&tape).unwrap());
    let (replayed, outcome) = common::try_run_pipeline(
        "hf-endpoint-replay",
        &pipeline,
        &registry,
        replayer,
        1,
        Duration::from_secs(60),
    )
    .await;
    outcome.unwrap();
    let entries = replayed.dir.entries().unwrap();
    assert_eq!(outputs(&entries, "weights"), &recorded);
}

#[tokio::test(flavor = "multi_thread")]
async fn publishing_to_a_missing_hub_repository_says_how_to_create_it() {
    let scratch = Scratch::new("hub-missing");
    let hub = HubState::new(Some(TOKEN));
    let at = servers::start(servers::fake_hub::router(hub.clone())).await;
    let pipeline = format!(
        "version: 1
name: publisher
role: publisher
resources:
  hub: {{ endpoint: \"http://{at}\", repo: team/absent }}
stages:
  note: {{ uses: emit, with: {{ text: hello }} }}
  up:
    uses: publish
    with: {{ target: hub, artifact: \"${{{{ stages.note.outputs.blob }}}}\", path: hello.txt }}
"
    );
    let env = env_of(&[("HF_TOKEN", TOKEN)], &scratch.0);
    let (_run, outcome) = run("hub-missing", &pipeline, &env, None).await;
    let RunError::Stage { error, .. } = outcome.unwrap_err() else {
        panic!("a stage error")
    };
    let message = format!("{} {}", error.message, error.causes.join(" "));
    assert!(
        message.contains("`team/absent` does not exist"),
        "{message}"
    );
    assert!(message.contains("create_repo: true"), "{message}");
    assert!(hub.repos.lock().unwrap().is_empty(), "nothing was created");
}
