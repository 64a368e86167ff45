//! The wgpu backend (here: Mesa's software Vulkan) computes what the CPU backend does:
//! the same checkpoint gives the same logits, and one training step the same gradient,
//! within float tolerance.
//!
//! `cargo test -p gradline-stages --features wgpu --test wgpu` (needs a Vulkan driver:
//! `apt-get install mesa-vulkan-drivers libvulkan1`).
#![cfg(feature = "wgpu")]

use burn::backend::{Autodiff, Wgpu};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use gradline_stages::model::train::{TrainOptions, train};
use gradline_stages::model::{Cpu, Gpt, GptConfig, checkpoint};

fn tokens<B: Backend>(device: &B::Device) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = (0..2 * 33).map(|i| (i * 37 % 257) as i64).collect();
    Tensor::from_data(TensorData::new(data, [2, 33]), device)
}

fn max_relative_gap(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn auto_finds_the_vulkan_adapter() {
    assert_eq!(
        gradline_stages::model::best_device(),
        gradline_engine::spec::Device::Wgpu
    );
}

#[test]
fn wgpu_matches_the_cpu_backend() {
    let cpu = Default::default();
    <Cpu as Backend>::seed(&cpu, 4);
    let model: Gpt<Cpu> = GptConfig::tiny().init(&cpu);
    let (weights, _) = checkpoint::save(&model).unwrap();
    let gpu = Default::default();
    let on_gpu: Gpt<Wgpu> = checkpoint::load(&weights, GptConfig::tiny(), &gpu).unwrap();

    let logits_cpu: Vec<f32> = model
        .forward(tokens::<Cpu>(&cpu))
        .into_data()
        .to_vec()
        .unwrap();
    let logits_gpu: Vec<f32> = on_gpu
        .forward(tokens::<Wgpu>(&gpu))
        .into_data()
        .to_vec()
        .unwrap();
    let gap = max_relative_gap(&logits_cpu, &logits_gpu);
    assert!(gap < 1e-4, "logits differ by {gap}");

    let options = TrainOptions {
        steps: 1,
        lr: 1e-3,
        warmup: 0,
        grad_clip: 1.0,
        weight_decay: 0.1,
        only: None,
    };
    let cpu_model: Gpt<Autodiff<Cpu>> =
        checkpoint::load(&weights, GptConfig::tiny(), &cpu).unwrap();
    let gpu_model: Gpt<Autodiff<Wgpu>> =
        checkpoint::load(&weights, GptConfig::tiny(), &gpu).unwrap();
    let a = train(cpu_model, tokens(&cpu), &options, |_, _| {});
    let b = train(gpu_model, tokens(&gpu), &options, |_, _| {});
    assert!(
        (a.loss_before - b.loss_before).abs() < 1e-4,
        "{} vs {}",
        a.loss_before,
        b.loss_before
    );
    let gap = max_relative_gap(&a.gradient.values, &b.gradient.values);
    assert!(gap < 1e-3, "gradients differ by {gap} of the largest");
}
