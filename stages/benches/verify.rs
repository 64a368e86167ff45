//! Time to verify one miner's gradient on the CPU, as `verify` (loss-delta) does it: decode
//! the top-k blob, apply it to the checkpoint, and measure the losses before and after on
//! the miner's batch and on a random batch.
//!
//! `cargo bench -p gradline-stages --bench verify` (`-- tiny` or `-- nanogpt-10m` for one).

use std::time::Instant;

use gradline_stages::codec::{Limits, decode, topk_f16};
use gradline_stages::model::checkpoint;
use gradline_stages::model::train::parameters;
use gradline_stages::model::{Cpu, Gpt, GptConfig};
use gradline_stages::verify::loss_delta::Measure;

fn measure(name: &str, config: GptConfig, batch: usize, runs: u32) {
    let device = Default::default();
    <Cpu as burn::tensor::backend::Backend>::seed(&device, 0);
    let model: Gpt<Cpu> = config.init(&device);
    let base = parameters(&model);
    let n = base.values.len();
    let gradient: Vec<f32> = (0..n)
        .map(|i| ((i as f32 * 12.9898).sin() * 43758.547).fract() * 1e-3)
        .collect();
    let blob = topk_f16::encode(&gradient, 0.01, None).unwrap();
    let span = batch * config.context + 1;
    let tokens = |offset: usize| -> Vec<u32> {
        (0..span)
            .map(|i| ((i * 7919 + offset) % config.vocab) as u32)
            .collect()
    };
    let (assigned, random) = (tokens(1), tokens(2));
    let _ = checkpoint::digest(&base);
    let mut best = f64::INFINITY;
    for _ in 0..runs {
        let started = Instant::now();
        let update = decode(&blob, Limits::default()).unwrap();
        update.check_layout(&base.layout).unwrap();
        let losses = Measure {
            base: &base,
            update: &update,
            factor: 1.0,
            config,
            batch,
            assigned: &assigned,
            random: &random,
        }
        .losses()
        .unwrap();
        assert!(losses.assigned_before.is_finite());
        best = best.min(started.elapsed().as_secs_f64());
    }
    println!(
        "{name}: {n} parameters, 1% top-k blob of {} KiB, batch {batch} × {} tokens: {:.0} ms per miner (best of {runs})",
        blob.len() / 1024,
        config.context,
        best * 1000.0
    );
}

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if only.as_deref().is_none_or(|o| o == "tiny") {
        measure("tiny", GptConfig::tiny(), 8, 5);
    }
    if only.as_deref().is_none_or(|o| o == "nanogpt-10m") {
        measure("nanogpt-10m", GptConfig::nanogpt_10m(), 4, 2);
    }
}
