//! Throughput of moving a checkpoint over loopback with integrity checks on (1 GiB unless
//! `GRADLINE_BENCH_BYTES` says otherwise):
//!
//! - hub download: hf-hub against a server speaking the hub's API, resolve + paths-info +
//!   streamed GET through a CDN redirect into the HF cache, sha256 checked, then blake3;
//! - the same file fetched by Python's `huggingface_hub` (`hf_hub_download`) from the same
//!   server (`GRADLINE_BENCH_PYTHON`, default `python3`; skipped if it lacks the package);
//! - hub upload: a commit through hf-hub (preupload, then the commit with the file inline);
//! - store upload (multipart) and download over S3 (s3s-fs), blake3 checked;
//! - the same through a `file://` store: the client path without a server.
//!
//! `cargo bench -p gradline-stages --bench transfer`

#[path = "../tests/servers/mod.rs"]
#[allow(dead_code)]
mod servers;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gradline_engine::effects::{CallScope, Request, Transport};
use gradline_engine::runtime::digest_of;
use gradline_stages::hub::{CommitArgs, FileEntry, GetArgs};
use gradline_stages::live::hf::{HfConfig, HfHub};
use gradline_stages::live::object_store::{StoreConfig, StoreSystem};
use servers::fake_hub::HubState;

const REPO: &str = "bench/ckpt";
const FILE: &str = "model.safetensors";
const ROUNDS: usize = 3;

fn main() {
    let size: usize = std::env::var("GRADLINE_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 30);
    let scratch =
        std::env::temp_dir().join(format!("gradline-bench-transfer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).unwrap();
    let data = checkpoint(size);
    let digest = digest_of(&data);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        println!(
            "checkpoint: {} MiB, {ROUNDS} rounds each, best round reported",
            size >> 20
        );
        let hub = HubState::new(None);
        let revision = hub.seed(REPO, &[(FILE, &data)]);
        let at = servers::start(servers::fake_hub::router(hub.clone())).await;
        let endpoint = format!("http://{at}");
        let scope = CallScope::scheduler(0);

        let hf_cache = scratch.join("hf-cache");
        let client = HfHub::connect(&HfConfig {
            endpoint: endpoint.clone(),
            token: None,
            timeout: Duration::from_secs(60),
            cache_dir: Some(hf_cache.clone()),
            attempts: 3,
        })
        .unwrap();
        let get = serde_json::json!(GetArgs {
            repo: REPO.into(),
            revision: revision.clone(),
            path: FILE.into(),
            max_bytes: u64::MAX,
        });
        let hub_down = best(ROUNDS, || {
            let _ = std::fs::remove_dir_all(&hf_cache);
            let request = Request::new("hub", "get", get.clone());
            let (client, scope, digest) = (&client, &scope, &digest);
            async move {
                let response = client.call(scope, request).await.unwrap();
                let body = response.body.unwrap();
                assert_eq!(&digest_of(&body), digest);
            }
        })
        .await;
        report("hub download (hf-hub, sha256 + blake3)", hub_down);

        let python = python_download(&endpoint, &revision, &scratch.join("py-cache"), size).await;
        match python {
            Some(seconds) => {
                report("hub download (Python huggingface_hub)", seconds);
                println!("  ratio python / gradline: {:.2}", seconds / hub_down);
            }
            None => println!(
                "  hub download (Python huggingface_hub): skipped (no python with huggingface_hub)"
            ),
        }

        let commit = serde_json::json!(CommitArgs {
            repo: REPO.into(),
            branch: "main".into(),
            message: "bench".into(),
            files: vec![FileEntry {
                path: "upload.safetensors".into(),
                size: size as u64
            }],
            create_repo: false,
        });
        let hub_up = best(ROUNDS, || {
            let request = Request::new("hub", "commit", commit.clone()).with_body(data.clone());
            let (client, scope) = (&client, &scope);
            async move {
                client.call(scope, request).await.unwrap();
            }
        })
        .await;
        report("hub upload (hf-hub commit, file inline)", hub_up);

        let s3_root = scratch.join("s3");
        std::fs::create_dir_all(s3_root.join("bucket")).unwrap();
        let s3 = servers::start_s3(&s3_root).await;
        let env = |name: &str| match name {
            "AWS_ACCESS_KEY_ID" => Some(servers::S3_KEY.to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some(servers::S3_SECRET.to_owned()),
            _ => None,
        };
        let store = StoreSystem::open(
            &StoreConfig {
                url: "s3://bucket/bench".into(),
                endpoint: Some(format!("http://{s3}")),
                allow_http: true,
                ..StoreConfig::default()
            },
            &env,
            scratch.join("partials"),
        )
        .unwrap();
        let store = Arc::new(store);
        let put = serde_json::json!({ "key": FILE });
        let store_up = best(ROUNDS, || {
            let request = Request::new("store", "put", put.clone()).with_body(data.clone());
            let (store, scope) = (&store, &scope);
            async move {
                store.call(scope, request).await.unwrap();
            }
        })
        .await;
        report("store upload (S3 multipart)", store_up);
        let get = serde_json::json!({ "key": FILE });
        let store_down = best(ROUNDS, || {
            let request = Request::new("store", "get", get.clone());
            let (store, scope, digest) = (&store, &scope, &digest);
            async move {
                let body = store.call(scope, request).await.unwrap().body.unwrap();
                assert_eq!(&digest_of(&body), digest);
            }
        })
        .await;
        report("store download (S3, blake3)", store_down);

        let local = StoreSystem::open(
            &StoreConfig {
                url: format!("file://{}", scratch.join("files").display()),
                ..StoreConfig::default()
            },
            &env,
            scratch.join("partials"),
        )
        .unwrap();
        let local = Arc::new(local);
        let file_up = best(ROUNDS, || {
            let request = Request::new("store", "put", put.clone()).with_body(data.clone());
            let (local, scope) = (&local, &scope);
            async move {
                local.call(scope, request).await.unwrap();
            }
        })
        .await;
        report("store upload (file://)", file_up);
        let file_down = best(ROUNDS, || {
            let request = Request::new("store", "get", get.clone());
            let (local, scope, digest) = (&local, &scope, &digest);
            async move {
                let body = local.call(scope, request).await.unwrap().body.unwrap();
                assert_eq!(&digest_of(&body), digest);
            }
        })
        .await;
        report("store download (file://, blake3)", file_down);
    });
    let _ = std::fs::remove_dir_all(&scratch);
}

/// The best of `rounds` timings, in seconds.
async fn best<F, Fut>(rounds: usize, mut round: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut best = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        round().await;
        best = best.min(started.elapsed().as_secs_f64());
    }
    best
}

fn report(what: &str, seconds: f64) {
    let size: f64 = std::env::var("GRADLINE_BENCH_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or((1u64 << 30) as f64);
    println!(
        "  {what}: {seconds:.2} s, {:.0} MiB/s",
        size / seconds / (1 << 20) as f64
    );
}

/// Bytes that do not compress: weights look like noise.
fn checkpoint(size: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(size);
    out
}

/// Seconds Python's `hf_hub_download` takes for the same file (best of the rounds).
async fn python_download(endpoint: &str, revision: &str, cache: &Path, size: usize) -> Option<f64> {
    let python = std::env::var("GRADLINE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        "import shutil, time\n\
         from huggingface_hub import hf_hub_download\n\
         best = None\n\
         for _ in range({ROUNDS}):\n\
         \x20   shutil.rmtree({cache:?}, ignore_errors=True)\n\
         \x20   t = time.perf_counter()\n\
         \x20   p = hf_hub_download({REPO:?}, {FILE:?}, revision={revision:?}, cache_dir={cache:?})\n\
         \x20   d = time.perf_counter() - t\n\
         \x20   assert __import__('os').path.getsize(p) == {size}\n\
         \x20   best = d if best is None else min(best, d)\n\
         print(best)\n",
        cache = cache.display().to_string(),
    );
    let output = tokio::process::Command::new(python)
        .args(["-c", &script])
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .output()
        .await
        .ok()?;
    if !output.status.success() {
        eprintln!(
            "python: {}",
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    String::from_utf8_lossy(&output.stdout).trim().parse().ok()
}
