//! A checkpoint's loss on a batch, without gradients: what a validator measures before and
//! after applying a miner's update.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::GptConfig;
use super::checkpoint::{self, CheckpointError};
use crate::tensors::TensorSet;

/// `batch` rows of `context + 1` tokens, row `r` starting at `r × context` of `tokens`
/// (which holds at least `batch × context + 1`).
pub fn rows<B: Backend>(
    tokens: &[u32],
    batch: usize,
    context: usize,
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    let rows: Vec<i64> = (0..batch)
        .flat_map(|r| {
            tokens[r * context..r * context + context + 1]
                .iter()
                .map(|&t| t as i64)
        })
        .collect();
    Tensor::from_data(TensorData::new(rows, [batch, context + 1]), device)
}

/// The mean next-token loss of the weights `set` on `batch` rows of each of `windows`
/// (the model is loaded once).
pub fn losses<B: Backend>(
    set: &TensorSet,
    config: GptConfig,
    windows: &[&[u32]],
    batch: usize,
    device: &B::Device,
) -> Result<Vec<f32>, CheckpointError> {
    let needed = batch * config.context + 1;
    if let Some(short) = windows.iter().find(|w| w.len() < needed) {
        return Err(CheckpointError::Shape {
            config,
            why: format!("{} tokens for a batch that needs {needed}", short.len()),
        });
    }
    let bytes = set.to_safetensors("checkpoint")?;
    let model = checkpoint::load::<B>(&bytes, config, device)?;
    Ok(windows
        .iter()
        .map(|tokens| {
            let value = model.loss(rows::<B>(tokens, batch, config.context, device));
            burn::tensor::ElementConversion::elem::<f32>(value.into_scalar())
        })
        .collect())
}
