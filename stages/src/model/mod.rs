//! The model trained and scored by the `train` and `verify` stages, on burn.

pub mod checkpoint;
pub mod distill;
pub mod eval;
pub mod gpt;
pub mod train;

pub use gpt::{Gpt, GptConfig};

/// The CPU backend every build has.
pub type Cpu = burn::backend::Flex;

use gradline_engine::spec::Device;

/// The device `auto` means: the first GPU backend compiled in whose device is present
/// (cuda:0, then wgpu — software Vulkan adapters count —, then metal), else the CPU.
/// Probed once per process.
pub fn best_device() -> Device {
    static CHOICE: std::sync::OnceLock<Device> = std::sync::OnceLock::new();
    *CHOICE.get_or_init(|| {
        #[cfg(feature = "cuda")]
        if usable::<burn::backend::Cuda>(&burn::backend::cuda::CudaDevice { index: 0 }) {
            return Device::Cuda(0);
        }
        #[cfg(feature = "wgpu")]
        if usable::<burn::backend::Wgpu>(&Default::default()) {
            return Device::Wgpu;
        }
        #[cfg(feature = "metal")]
        if usable::<burn::backend::Metal>(&Default::default()) {
            return Device::Metal;
        }
        Device::Cpu
    })
}

/// Whether a backend can allocate on a device; burn panics when the device is missing, so
/// the probe runs under `catch_unwind` with the panic message silenced.
#[cfg(any(feature = "cuda", feature = "wgpu", feature = "metal"))]
fn usable<B: burn::tensor::backend::Backend>(device: &B::Device) -> bool {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        burn::tensor::Tensor::<B, 1>::zeros([1], device).into_data()
    }))
    .is_ok();
    std::panic::set_hook(hook);
    ok
}

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::{Int, Tensor, TensorData};

    use super::*;
    use crate::model::checkpoint;

    #[test]
    fn auto_is_the_cpu_in_a_build_without_gpu_backends() {
        if !cfg!(any(feature = "cuda", feature = "wgpu", feature = "metal")) {
            assert_eq!(best_device(), gradline_engine::spec::Device::Cpu);
        }
    }

    #[test]
    fn forward_shapes_and_a_finite_loss() {
        let device = Default::default();
        let model: Gpt<Cpu> = GptConfig::tiny().init(&device);
        let tokens = Tensor::<Cpu, 2, Int>::from_data(
            TensorData::new(vec![1i64, 2, 3, 4, 5, 6, 7, 8], [2, 4]),
            &device,
        );
        assert_eq!(model.forward(tokens.clone()).dims(), [2, 4, 257]);
        let loss: f32 = model.loss(tokens).into_scalar();
        assert!(
            loss.is_finite() && (loss - (257f32).ln()).abs() < 1.5,
            "loss {loss}"
        );
    }

    fn corpus_batch<B: burn::tensor::backend::Backend>(
        rows: usize,
        cols: usize,
        device: &B::Device,
    ) -> Tensor<B, 2, Int> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/shards/bytes/shard_000000.bin");
        let tokens = crate::data::read_shard(&std::fs::read(path).unwrap()).unwrap();
        let data: Vec<i64> = tokens[..rows * cols].iter().map(|&t| t as i64).collect();
        Tensor::from_data(TensorData::new(data, [rows, cols]), device)
    }

    fn options(steps: u32) -> train::TrainOptions {
        train::TrainOptions {
            steps,
            lr: 3e-3,
            warmup: 5,
            grad_clip: 1.0,
            weight_decay: 0.1,
            only: None,
        }
    }

    #[test]
    fn a_fragment_job_changes_only_its_tensors() {
        type B = Autodiff<Cpu>;
        let device = Default::default();
        let model: Gpt<B> = GptConfig::tiny().init(&device);
        let before = train::parameters(&model);
        let only: std::collections::BTreeSet<String> =
            ["h.0.mlp.c_fc.weight".to_owned(), "ln_f.gamma".to_owned()].into();
        let options = train::TrainOptions {
            only: Some(only.clone()),
            ..options(3)
        };
        let outcome = train::train(
            model,
            corpus_batch::<B>(4, 65, &device),
            &options,
            |_, _| {},
        );
        let after = train::parameters(&outcome.model);
        let mut at = 0;
        for (name, numel) in &before.layout.tensors {
            let range = at..at + *numel as usize;
            at = range.end;
            let changed = before.values[range.clone()] != after.values[range];
            assert_eq!(changed, only.contains(name), "{name}");
        }
    }

    #[test]
    fn loss_falls_on_the_demo_corpus_within_50_steps() {
        type B = Autodiff<Cpu>;
        let device = Default::default();
        <B as burn::tensor::backend::Backend>::seed(&device, 7);
        let model: Gpt<B> = GptConfig::tiny().init(&device);
        let outcome = train::train(
            model,
            corpus_batch::<B>(8, 65, &device),
            &options(50),
            |_, _| {},
        );
        assert!(
            outcome.loss_before > 4.5,
            "starts near ln 257: {}",
            outcome.loss_before
        );
        assert!(
            outcome.loss_after < 2.5,
            "falls: {} → {}",
            outcome.loss_before,
            outcome.loss_after
        );
        assert_eq!(outcome.tokens, 8 * 64 * 50);
    }

    #[test]
    fn the_same_inputs_give_a_bit_identical_gradient() {
        type B = Autodiff<Cpu>;
        let device = Default::default();
        let run = || {
            <B as burn::tensor::backend::Backend>::seed(&device, 11);
            let model: Gpt<B> = GptConfig::tiny().init(&device);
            train::train(
                model,
                corpus_batch::<B>(4, 33, &device),
                &options(3),
                |_, _| {},
            )
            .gradient
        };
        let (a, b) = (run(), run());
        assert_eq!(a.layout, b.layout);
        assert!(
            a.values
                .iter()
                .zip(&b.values)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        assert!(a.values.iter().any(|v| *v != 0.0));
    }

    #[test]
    fn one_step_gives_the_raw_gradient_in_contract_order() {
        type B = Autodiff<Cpu>;
        let device = Default::default();
        <B as burn::tensor::backend::Backend>::seed(&device, 3);
        let model: Gpt<B> = GptConfig::tiny().init(&device);
        let batch = corpus_batch::<B>(2, 17, &device);
        let grads = model.loss(batch.clone()).backward();
        let wte: Vec<f32> = model
            .wte
            .weight
            .grad(&grads)
            .unwrap()
            .into_data()
            .to_vec()
            .unwrap();
        let outcome = train::train(model, batch, &options(1), |_, _| {});
        let names: Vec<&str> = outcome
            .gradient
            .layout
            .tensors
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names[0], "wte.weight");
        assert!(
            names.contains(&"h.1.attn.c_attn.weight") && names.contains(&"ln_f.gamma"),
            "{names:?}"
        );
        assert_eq!(&outcome.gradient.values[..wte.len()], &wte[..]);
    }

    #[test]
    fn gradients_match_finite_differences_on_a_toy_model() {
        type B = Autodiff<Cpu>;
        let config = GptConfig {
            vocab: 8,
            context: 4,
            layers: 1,
            heads: 2,
            dim: 8,
        };
        let device = Default::default();
        <B as burn::tensor::backend::Backend>::seed(&device, 9);
        let model: Gpt<B> = config.init(&device);
        let (bytes, _) = checkpoint::save(&model).unwrap();
        let tokens = || {
            Tensor::<Cpu, 2, Int>::from_data(
                TensorData::new(vec![1i64, 5, 2, 7, 3, 0, 6, 4, 2, 1], [2, 5]),
                &device,
            )
        };
        let batch = Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![1i64, 5, 2, 7, 3, 0, 6, 4, 2, 1], [2, 5]),
            &device,
        );
        let raw = train::train(model, batch, &options(1), |_, _| {}).gradient;
        let base = crate::tensors::TensorSet::from_safetensors(&bytes).unwrap();
        let loss_with = |index: usize, delta: f32| -> f64 {
            let mut set = base.clone();
            set.values[index] += delta;
            let perturbed: Gpt<Cpu> =
                checkpoint::load(&set.to_safetensors("checkpoint").unwrap(), config, &device)
                    .unwrap();
            perturbed.loss(tokens()).into_scalar() as f64
        };
        let eps = 1e-2f32;
        let mut checked = 0;
        for index in (0..base.values.len()).step_by(37) {
            let numeric = (loss_with(index, eps) - loss_with(index, -eps)) / (2.0 * eps as f64);
            let analytic = raw.values[index] as f64;
            if numeric.abs() < 1e-3 && analytic.abs() < 1e-3 {
                continue;
            }
            let error = (numeric - analytic).abs() / numeric.abs().max(analytic.abs());
            assert!(
                error < 0.05,
                "parameter {index}: finite difference {numeric}, gradient {analytic}"
            );
            checked += 1;
        }
        assert!(
            checked >= 10,
            "only {checked} parameters had a measurable gradient"
        );
    }

    #[test]
    fn gradients_flow_to_every_parameter() {
        let device = Default::default();
        let model: Gpt<Autodiff<Cpu>> = GptConfig::tiny().init(&device);
        let tokens = Tensor::<Autodiff<Cpu>, 2, Int>::from_data(
            TensorData::new(vec![1i64, 2, 3, 4, 5, 6], [1, 6]),
            &device,
        );
        let grads = model.loss(tokens).backward();
        let grad = model
            .wte
            .weight
            .grad(&grads)
            .expect("the tied head trains the embedding");
        assert!(grad.abs().sum().into_scalar() > 0.0);
    }
}
