//! The model trained and scored by the `train` and `verify` stages, on burn.

pub mod gpt;

pub use gpt::{Gpt, GptConfig};

/// The CPU backend every build has.
#[cfg(feature = "flex")]
pub type Cpu = burn::backend::Flex;

#[cfg(test)]
mod tests {
    use burn::backend::Autodiff;
    use burn::tensor::{Int, Tensor, TensorData};

    use super::*;

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
