//! Running a pipeline in a test: load it (failing on any error), run it in a fresh run folder
//! under the temp dir, and hand back the folder to read its journal and objects; and a store
//! that serves the repository's token shards.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use gradline_engine::effects::{CallScope, EffectError, Request, Response, Transport};
use gradline_engine::journal::{RunDir, RunInfo};
use gradline_engine::runtime::Outputs;
use gradline_engine::schedule::{CycleReport, Quiet, RunError, RunOptions, Runner, StopSignal};
use gradline_engine::{Registry, load};

/// A run's folder; removed when dropped.
pub struct TestRun {
    pub dir: Arc<RunDir>,
    base: PathBuf,
}

impl TestRun {
    /// The outputs a stage finished with in a cycle.
    #[allow(dead_code)]
    pub fn outputs(&self, stage: &str, cycle: u64) -> Outputs {
        self.dir
            .entries()
            .unwrap()
            .into_iter()
            .find(|e| e.stage == stage && e.cycle == cycle)
            .unwrap_or_else(|| panic!("{stage} in cycle {cycle}"))
            .outputs
    }
}

/// A store that serves the repository's `fixtures/shards/` folder.
#[allow(dead_code)]
pub struct FixtureStore(pub PathBuf);

#[allow(dead_code)]
impl FixtureStore {
    pub fn shards() -> Self {
        Self(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/shards"))
    }
}

impl Transport for FixtureStore {
    fn call<'a>(
        &'a self,
        _: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            let key = request.args["key"].as_str().unwrap_or_default();
            match std::fs::read(self.0.join(key)) {
                Ok(body) => Ok(Response {
                    value: serde_json::json!({}),
                    body: Some(body),
                }),
                Err(e) => Err(EffectError::final_(format!("{key}: {e}"))),
            }
        })
    }
}

/// The live resources a pipeline text names (its store, hub, ledger, keys), with no
/// environment variables set.
#[allow(dead_code)]
pub async fn live_for(name: &str, text: &str, registry: &Registry) -> Arc<dyn Transport> {
    let pipeline = load(name, text, registry, &[]).pipeline.unwrap();
    let env = |_: &str| None;
    let options = gradline_stages::live::LiveOptions::from_env(&env);
    Arc::new(
        gradline_stages::live::connect(&pipeline, &env, &options)
            .await
            .unwrap(),
    )
}

/// Copies the repository's token shards into `store/data/shards` under `root`, as a
/// `file://` store serves them.
#[allow(dead_code)]
pub fn store_with_shards(root: &std::path::Path) {
    let shards = root.join("store/data/shards");
    std::fs::create_dir_all(&shards).unwrap();
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/shards/bytes");
    for entry in std::fs::read_dir(fixtures).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), shards.join(entry.file_name())).unwrap();
    }
}

/// A clock stopped at one instant, so a test's windows (and batches) are always the same.
#[allow(dead_code)]
pub struct StoppedClock(pub u64);

impl Transport for StoppedClock {
    fn call<'a>(
        &'a self,
        _: &'a CallScope,
        _: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move { Ok(Response::value(serde_json::json!({ "unix_ms": self.0 }))) })
    }
}

impl Drop for TestRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

#[allow(dead_code)]
pub async fn run_pipeline(
    tag: &str,
    text: &str,
    registry: &Registry,
    transport: Arc<dyn Transport>,
    cycles: u64,
    window: Duration,
) -> TestRun {
    let (run, outcome) = try_run_pipeline(tag, text, registry, transport, cycles, window).await;
    if let Err(e) = outcome {
        panic!("{e}");
    }
    run
}

/// Like [`run_pipeline`], handing back the run's outcome instead of failing on it.
#[allow(dead_code)]
pub async fn try_run_pipeline(
    tag: &str,
    text: &str,
    registry: &Registry,
    transport: Arc<dyn Transport>,
    cycles: u64,
    window: Duration,
) -> (TestRun, Result<Vec<CycleReport>, RunError>) {
    let loaded = load(&format!("{tag}.yaml"), text, registry, &[]);
    assert!(!loaded.has_errors(), "{}", loaded.render());
    let pipeline = Arc::new(loaded.pipeline.unwrap());
    let base = std::env::temp_dir().join(format!("gradline-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let info = RunInfo {
        run_id: String::new(),
        pipeline: pipeline.spec.name.value.clone(),
        file: String::new(),
        file_digest: String::new(),
        overrides: vec![],
    };
    let dir = Arc::new(RunDir::create(&base, info).unwrap());
    let options = RunOptions {
        jobs: 2,
        cycles: Some(cycles),
        window,
    };
    let runner = Runner::new(
        pipeline,
        transport,
        Arc::new(Quiet),
        dir.clone(),
        options,
        StopSignal::new(),
    )
    .unwrap();
    let outcome = runner.run().await;
    (TestRun { dir, base }, outcome)
}
