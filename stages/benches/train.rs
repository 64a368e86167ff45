//! Tokens per second of a training step (forward, backward, AdamW) on the CPU backend.
//!
//! `cargo bench -p gradline-stages --bench train` (`-- tiny` or `-- nanogpt-10m` for one).
//! Compare with `stages/benches/torch_train.py` (the same model in PyTorch).

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::{Int, Tensor, TensorData};
use gradline_stages::model::train::{TrainOptions, train};
use gradline_stages::model::{Cpu, Gpt, GptConfig};

type B = Autodiff<Cpu>;

fn measure(name: &str, config: GptConfig, batch: usize, steps: u32) {
    let device = Default::default();
    <B as burn::tensor::backend::Backend>::seed(&device, 0);
    let model: Gpt<B> = config.init(&device);
    let tokens: Vec<i64> = (0..batch * (config.context + 1))
        .map(|i| ((i * 7919) % config.vocab) as i64)
        .collect();
    let batch_tensor = Tensor::<B, 2, Int>::from_data(
        TensorData::new(tokens, [batch, config.context + 1]),
        &device,
    );
    let options = |steps| TrainOptions {
        steps,
        lr: 3e-4,
        warmup: 0,
        grad_clip: 1.0,
        weight_decay: 0.1,
        only: None,
    };
    let warm = train(model, batch_tensor.clone(), &options(2), |_, _| {});
    let started = Instant::now();
    let outcome = train(warm.model, batch_tensor, &options(steps), |_, _| {});
    let seconds = started.elapsed().as_secs_f64();
    let params: usize = outcome.gradient.values.len();
    println!(
        "{name}: {params} parameters, batch {batch} × {} tokens, {steps} steps: {:.1} ms/step, {:.0} tokens/s",
        config.context,
        seconds * 1000.0 / steps as f64,
        outcome.tokens as f64 / seconds
    );
}

fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    if only.as_deref().is_none_or(|o| o == "tiny") {
        measure("tiny", GptConfig::tiny(), 8, 20);
    }
    if only.as_deref().is_none_or(|o| o == "nanogpt-10m") {
        measure("nanogpt-10m", GptConfig::nanogpt_10m(), 4, 3);
    }
}
