//! Scheduler overhead per stage: a 10,000-stage no-op DAG and a 1,000-item fan-out, with
//! the journal written as in a real run. Target: under 50 µs per stage.
//!
//! `cargo bench -p gradline-engine --bench schedule`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::future::BoxFuture;
use gradline_engine::effects::Live;
use gradline_engine::journal::{RunDir, RunInfo};
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{Port, Registry, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::{Quiet, RunOptions, Runner, StageRun, StopSignal};
use gradline_engine::{Pipeline, load};
use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Debug, Deserialize, JsonSchema)]
struct Noop {}

impl StageKind for Noop {
    const NAME: &'static str = "noop";
    const DESCRIPTION: &'static str = "does nothing";
    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn outputs(&self) -> Vec<Port> {
        Vec::new()
    }
    fn effects(&self, _: &PlanContext) -> Vec<Effect> {
        Vec::new()
    }
    fn run<'a>(&'a self, _: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async { Ok(BTreeMap::new()) })
    }
}

/// `layers` × `width` stages; each needs two stages of the layer before.
fn dag(layers: usize, width: usize) -> String {
    let mut out = String::from("version: 1\nname: bench\nrole: miner\nstages:\n");
    for l in 0..layers {
        for w in 0..width {
            let _ = write!(out, "  s{l}-{w}: {{ uses: noop");
            if l > 0 {
                let _ = write!(
                    out,
                    ", needs: [s{}-{w}, s{}-{}]",
                    l - 1,
                    l - 1,
                    (w + 1) % width
                );
            }
            out.push_str(" }\n");
        }
    }
    out
}

fn fan_out(items: usize) -> String {
    let list: Vec<String> = (0..items).map(|i| i.to_string()).collect();
    format!(
        "version: 1\nname: bench\nrole: miner\nstages:\n  each: {{ uses: noop, for_each: [{}] }}\n",
        list.join(", ")
    )
}

fn pipeline(text: &str) -> Arc<Pipeline> {
    let mut registry = Registry::new();
    registry.register::<Noop>();
    let loaded = load("bench.yaml", text, &registry, &[]);
    assert!(!loaded.has_errors(), "{}", loaded.render());
    Arc::new(loaded.pipeline.unwrap())
}

fn run_once(
    runtime: &tokio::runtime::Runtime,
    pipeline: &Arc<Pipeline>,
    base: &std::path::Path,
) -> Duration {
    let info = RunInfo {
        run_id: String::new(),
        pipeline: "bench".into(),
        file: String::new(),
        file_digest: String::new(),
        overrides: vec![],
    };
    let run_dir = Arc::new(RunDir::create(base, info).unwrap());
    let options = RunOptions {
        jobs: 2,
        cycles: Some(1),
        window: Duration::from_secs(60),
    };
    let runner = Runner::new(
        pipeline.clone(),
        Arc::new(Live::new()),
        Arc::new(Quiet),
        run_dir,
        options,
        StopSignal::new(),
    )
    .unwrap();
    let started = Instant::now();
    runtime.block_on(runner.run()).unwrap();
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = std::env::temp_dir().join(format!("gradline-bench-{}", std::process::id()));
    let mut group = c.benchmark_group("scheduler");
    group.sample_size(10);
    for (name, text, stages) in [
        ("dag-10000", dag(100, 100), 10_000u32),
        ("fan-out-1000", fan_out(1000), 1000),
    ] {
        let p = pipeline(&text);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run_once(&runtime, &p, &base)).sum())
        });
        let per_stage = run_once(&runtime, &p, &base) / stages;
        println!("{name}: {per_stage:?} per stage");
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&base);
}

criterion_group!(benches, bench);
criterion_main!(benches);
