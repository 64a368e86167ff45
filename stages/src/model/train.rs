//! Inner training: AdamW with warm-up and cosine decay and gradient clipping, on one batch,
//! returning the pseudo-gradient θ_start − θ_end (the raw gradient when steps = 1) as a
//! tensor set in the parameter contract's order.

use std::collections::BTreeSet;

use burn::module::AutodiffModule;
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor};
use burn_store_reexport::ModuleSnapshot;

use super::gpt::Gpt;
use crate::codec::Layout;
use crate::tensors::TensorSet;

mod burn_store_reexport {
    pub use burn::store::ModuleSnapshot;
}

/// How the inner loop trains.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOptions {
    pub steps: u32,
    /// Peak learning rate.
    pub lr: f64,
    /// Linear warm-up steps; then cosine decay to a tenth of the peak.
    pub warmup: u32,
    /// Clip each parameter's gradient to this norm (burn clips per tensor); 0 turns it off.
    pub grad_clip: f32,
    pub weight_decay: f32,
    /// Train only these tensors (a fragment job); the others keep their values.
    pub only: Option<BTreeSet<String>>,
}

impl TrainOptions {
    /// The learning rate at `step` (0-based).
    pub fn lr_at(&self, step: u32) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let decay_steps = self.steps.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / decay_steps).min(1.0);
        let floor = self.lr * 0.1;
        floor + 0.5 * (self.lr - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// What one training run produced.
pub struct TrainOutcome<B: AutodiffBackend> {
    pub model: Gpt<B>,
    pub loss_before: f32,
    pub loss_after: f32,
    pub tokens: u64,
    /// θ_start − θ_end (or the raw gradient when steps = 1), in contract order.
    pub gradient: TensorSet,
}

/// The parameters of a model as a tensor set, in collection order (the contract's).
pub fn parameters<B: burn::tensor::backend::Backend>(model: &Gpt<B>) -> TensorSet {
    let mut set = TensorSet {
        layout: Layout {
            tensors: Vec::new(),
        },
        shapes: Vec::new(),
        values: Vec::new(),
    };
    for snapshot in model.collect(None, None, false) {
        let data = snapshot.to_data().map(|d| d.convert::<f32>());
        let values: Vec<f32> = data
            .ok()
            .and_then(|d| d.to_vec::<f32>().ok())
            .unwrap_or_default();
        set.layout
            .tensors
            .push((snapshot.full_path(), values.len() as u64));
        set.shapes.push(snapshot.shape.to_vec());
        set.values.extend(values);
    }
    set
}

/// Trains on `batch` (`[batch, seq + 1]` tokens) and reports the losses and the update.
pub fn train<B: AutodiffBackend>(
    model: Gpt<B>,
    batch: Tensor<B, 2, Int>,
    options: &TrainOptions,
    mut progress: impl FnMut(u32, f32),
) -> TrainOutcome<B> {
    let start = parameters(&model);
    let [rows, cols] = batch.dims();
    let loss_before: f32 = model
        .valid()
        .loss(batch.clone().inner())
        .into_scalar()
        .to_f32_lossy();
    let mut config = AdamWConfig::new().with_weight_decay(options.weight_decay);
    if options.grad_clip > 0.0 {
        config = config.with_grad_clipping(Some(GradientClippingConfig::Norm(options.grad_clip)));
    }
    let mut optim = config.init::<B, Gpt<B>>();
    let mut model = model;
    let mut raw_gradient = None;
    for step in 0..options.steps.max(1) {
        let loss = model.loss(batch.clone());
        let value: f32 = loss.clone().into_scalar().to_f32_lossy();
        let mut grads = GradientsParams::from_grads(loss.backward(), &model);
        if let Some(only) = &options.only {
            keep_only(&model, &mut grads, only);
        }
        if options.steps <= 1 {
            raw_gradient = Some(gradient_set(&model, &grads, &start));
        }
        model = optim.step(options.lr_at(step), model, grads);
        progress(step + 1, value);
    }
    let loss_after: f32 = model
        .valid()
        .loss(batch.inner())
        .into_scalar()
        .to_f32_lossy();
    let gradient = raw_gradient.unwrap_or_else(|| {
        let end = parameters(&model);
        let values = start
            .values
            .iter()
            .zip(&end.values)
            .map(|(a, b)| a - b)
            .collect();
        TensorSet { values, ..start }
    });
    TrainOutcome {
        model,
        loss_before,
        loss_after,
        tokens: (rows * (cols - 1)) as u64 * options.steps.max(1) as u64,
        gradient,
    }
}

/// Drops the gradients of every tensor not named in `only`, so the optimizer (weight decay
/// included) leaves those tensors as they are.
fn keep_only<B: AutodiffBackend>(
    model: &Gpt<B>,
    grads: &mut GradientsParams,
    only: &BTreeSet<String>,
) {
    for snapshot in model.collect(None, None, false) {
        if only.contains(&snapshot.full_path()) {
            continue;
        }
        if let Some(id) = snapshot.tensor_id {
            match snapshot.shape.as_slice().len() {
                1 => drop(grads.remove::<B::InnerBackend, 1>(id)),
                2 => drop(grads.remove::<B::InnerBackend, 2>(id)),
                3 => drop(grads.remove::<B::InnerBackend, 3>(id)),
                _ => {}
            }
        }
    }
}

/// The raw gradient of every parameter, laid out like `like`.
fn gradient_set<B: AutodiffBackend>(
    model: &Gpt<B>,
    grads: &GradientsParams,
    like: &TensorSet,
) -> TensorSet {
    let mut values = Vec::with_capacity(like.values.len());
    for snapshot in model.collect(None, None, false) {
        let numel: usize = snapshot.shape.as_slice().iter().product();
        let grad = snapshot
            .tensor_id
            .and_then(|id| match snapshot.shape.as_slice().len() {
                1 => grads.get::<B::InnerBackend, 1>(id).map(|t| t.into_data()),
                2 => grads.get::<B::InnerBackend, 2>(id).map(|t| t.into_data()),
                _ => None,
            });
        match grad.and_then(|d| d.convert::<f32>().to_vec::<f32>().ok()) {
            Some(g) => values.extend(g),
            None => values.extend(std::iter::repeat_n(0.0, numel)),
        }
    }
    TensorSet {
        values,
        ..like.clone()
    }
}

trait ToF32 {
    fn to_f32_lossy(self) -> f32;
}

impl<E: burn::tensor::Element> ToF32 for E {
    fn to_f32_lossy(self) -> f32 {
        burn::tensor::ElementConversion::elem::<f32>(self)
    }
}
