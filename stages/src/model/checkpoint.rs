//! Checkpoints: the weights as safetensors, and the parameter contract beside them — the
//! tensor names, shapes, dtypes and trainable flags, in order — which the orchestrator uses to
//! split tensors into fragments without the model code.
//!
//! Names are gradline's (GPT-2's module names, burn's parameter names): `wte.weight`,
//! `wpe.weight`, `h.N.ln_1.gamma|beta`, `h.N.attn.c_attn.weight|bias`,
//! `h.N.attn.c_proj.weight|bias`, `h.N.ln_2.gamma|beta`, `h.N.mlp.c_fc.weight|bias`,
//! `h.N.mlp.c_proj.weight|bias`, `ln_f.gamma|beta`. Linear weights are `[in, out]` (as
//! GPT-2's Conv1D). Files with Hugging Face GPT-2 names (`transformer.h.0.ln_1.weight`, ...)
//! load through [`gpt2_name`].
//!
//! The digest is canonical: blake3 over the tensors sorted by name (name, shape, f32 values),
//! so the same weights give the same digest whatever the file's order or dtype encoding.

use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::gpt::{Gpt, GptConfig};
use super::train::parameters;
use crate::tensors::{StoredDtype, TensorError, TensorSet};

pub const CONTRACT_FORMAT: &str = "gradline.contract/v1";

/// What a checkpoint holds, for tools that do not load the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contract {
    pub format: String,
    /// The model's shape, when the tensors are a gradline GPT's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<GptConfig>,
    pub tensors: Vec<ContractTensor>,
    /// The canonical digest of the weights.
    pub digest: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContractTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    pub trainable: bool,
}

impl Contract {
    pub fn trainable_params(&self) -> u64 {
        self.tensors
            .iter()
            .filter(|t| t.trainable)
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Tensors(#[from] TensorError),
    #[error("the checkpoint's tensors do not fit a {config:?} model: {why}")]
    Shape { config: GptConfig, why: String },
    #[error("loading the weights: {0}")]
    Load(String),
}

/// Writes a model as safetensors (F32) and returns its contract.
pub fn save<B: Backend>(model: &Gpt<B>) -> Result<(Vec<u8>, Contract), CheckpointError> {
    save_as(model, StoredDtype::F32)
}

/// Writes a model with its weights stored as `dtype`; the contract's digest is of the
/// stored values (what a loader will see).
pub fn save_as<B: Backend>(
    model: &Gpt<B>,
    dtype: StoredDtype,
) -> Result<(Vec<u8>, Contract), CheckpointError> {
    let set = parameters(model);
    let bytes = set.to_safetensors_as("checkpoint", dtype)?;
    let stored = TensorSet::from_safetensors(&bytes)?;
    let mut contract = contract(&stored, Some(model.config()));
    let name = match dtype {
        StoredDtype::F32 => "F32",
        StoredDtype::Bf16 => "BF16",
        StoredDtype::F16 => "F16",
    };
    contract
        .tensors
        .iter_mut()
        .for_each(|t| t.dtype = name.into());
    Ok((bytes, contract))
}

/// The contract of a tensor set.
pub fn contract(set: &TensorSet, model: Option<GptConfig>) -> Contract {
    let tensors = set
        .layout
        .tensors
        .iter()
        .zip(&set.shapes)
        .map(|((name, _), shape)| ContractTensor {
            name: name.clone(),
            shape: shape.clone(),
            dtype: "F32".into(),
            trainable: true,
        })
        .collect();
    Contract {
        format: CONTRACT_FORMAT.into(),
        model,
        tensors,
        digest: digest(set),
    }
}

/// blake3 over the tensors sorted by name: name, shape, little-endian f32 values.
pub fn digest(set: &TensorSet) -> String {
    let mut offsets = Vec::with_capacity(set.layout.tensors.len());
    let mut at = 0usize;
    for (i, (name, numel)) in set.layout.tensors.iter().enumerate() {
        offsets.push((name.as_str(), i, at, *numel as usize));
        at += *numel as usize;
    }
    offsets.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = blake3::Hasher::new();
    for (name, i, start, len) in offsets {
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        let shape = &set.shapes[i];
        hasher.update(&(shape.len() as u64).to_le_bytes());
        shape.iter().for_each(|d| {
            hasher.update(&(*d as u64).to_le_bytes());
        });
        for v in &set.values[start..start + len] {
            hasher.update(&v.to_le_bytes());
        }
    }
    hasher.finalize().to_hex().to_string()
}

/// Hugging Face GPT-2 names to gradline's (`transformer.` dropped, LayerNorm
/// `weight`/`bias` → `gamma`/`beta`); gradline's names pass through.
pub fn gpt2_name(name: &str) -> String {
    let name = name.strip_prefix("transformer.").unwrap_or(name);
    let is_norm = name.starts_with("ln_f.") || name.contains(".ln_1.") || name.contains(".ln_2.");
    match (is_norm, name.rsplit_once('.')) {
        (true, Some((base, "weight"))) => format!("{base}.gamma"),
        (true, Some((base, "bias"))) => format!("{base}.beta"),
        _ => name.to_owned(),
    }
}

/// Loads a model from safetensors bytes (F32, F16 or BF16; gradline or GPT-2 names).
pub fn load<B: Backend>(
    bytes: &[u8],
    config: GptConfig,
    device: &B::Device,
) -> Result<Gpt<B>, CheckpointError> {
    let mut set = TensorSet::from_safetensors_by_name(bytes)?;
    for (name, _) in &mut set.layout.tensors {
        *name = gpt2_name(name);
    }
    set.layout
        .tensors
        .retain(|(name, _)| !name.ends_with(".attn.bias") && !name.ends_with(".attn.masked_bias"));
    let mut model: Gpt<B> = config.init(device);
    let expected = parameters(&model);
    if expected.layout.tensors.len() != set.layout.tensors.len() {
        return Err(CheckpointError::Shape {
            config,
            why: format!(
                "{} tensors, the model has {}",
                set.layout.tensors.len(),
                expected.layout.tensors.len()
            ),
        });
    }
    let normalized = set.to_safetensors("checkpoint")?;
    let mut store = SafetensorsStore::from_bytes(Some(normalized));
    let result = model
        .load_from(&mut store)
        .map_err(|e| CheckpointError::Load(e.to_string()))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(CheckpointError::Load(format!(
            "missing {:?}, errors {:?}",
            result.missing, result.errors
        )));
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use safetensors::tensor::{Dtype, TensorView};

    use super::*;
    use crate::model::Cpu;

    fn model() -> Gpt<Cpu> {
        let device = Default::default();
        <Cpu as Backend>::seed(&device, 5);
        GptConfig::tiny().init(&device)
    }

    #[test]
    fn save_then_load_is_exact_and_the_contract_matches() {
        let original = model();
        let (bytes, contract) = save(&original).unwrap();
        let loaded: Gpt<Cpu> = load(&bytes, GptConfig::tiny(), &Default::default()).unwrap();
        let (a, b) = (parameters(&original), parameters(&loaded));
        assert_eq!(a.layout, b.layout);
        assert!(
            a.values
                .iter()
                .zip(&b.values)
                .all(|(x, y)| x.to_bits() == y.to_bits())
        );
        assert_eq!(contract.tensors.len(), a.layout.tensors.len());
        for (t, (name, numel)) in contract.tensors.iter().zip(&a.layout.tensors) {
            assert_eq!(&t.name, name);
            assert_eq!(t.shape.iter().product::<usize>() as u64, *numel);
        }
        assert_eq!(contract.trainable_params(), a.values.len() as u64);
        assert_eq!(contract.digest, digest(&b));
    }

    /// The same weights written with GPT-2 names, in another order and as F16-exact BF16.
    #[test]
    fn the_digest_ignores_file_order_and_gpt2_names_load() {
        let original = model();
        let set = parameters(&original);
        let renamed: Vec<(String, Vec<usize>, Vec<u8>)> = set
            .layout
            .tensors
            .iter()
            .zip(&set.shapes)
            .scan(0usize, |at, ((name, numel), shape)| {
                let values = &set.values[*at..*at + *numel as usize];
                *at += *numel as usize;
                let hf = match name.rsplit_once('.') {
                    Some((base, "gamma")) => format!("transformer.{base}.weight"),
                    Some((base, "beta")) => format!("transformer.{base}.bias"),
                    _ => format!("transformer.{name}"),
                };
                Some((
                    hf,
                    shape.clone(),
                    values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ))
            })
            .collect();
        let views: Vec<(String, TensorView)> = renamed
            .iter()
            .rev()
            .map(|(n, s, d)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, s.clone(), d).unwrap(),
                )
            })
            .collect();
        let bytes = safetensors::serialize(views, None::<HashMap<String, String>>).unwrap();
        let loaded: Gpt<Cpu> = load(&bytes, GptConfig::tiny(), &Default::default()).unwrap();
        assert_eq!(digest(&parameters(&loaded)), digest(&set));
        assert_eq!(gpt2_name("transformer.h.3.ln_2.bias"), "h.3.ln_2.beta");
        assert_eq!(
            gpt2_name("h.3.attn.c_attn.weight"),
            "h.3.attn.c_attn.weight"
        );
    }

    #[test]
    fn bf16_checkpoints_load_to_their_stored_values() {
        let original = model();
        let (bytes, contract) = save_as(&original, StoredDtype::Bf16).unwrap();
        assert!(contract.tensors.iter().all(|t| t.dtype == "BF16"));
        let loaded: Gpt<Cpu> = load(&bytes, GptConfig::tiny(), &Default::default()).unwrap();
        assert_eq!(digest(&parameters(&loaded)), contract.digest);
        let (a, b) = (parameters(&original), parameters(&loaded));
        assert!(
            a.values
                .iter()
                .zip(&b.values)
                .all(|(x, y)| (x - y).abs() <= x.abs() / 128.0)
        );
    }

    #[test]
    fn a_checkpoint_for_another_shape_is_refused() {
        let (bytes, _) = save(&model()).unwrap();
        let bigger = GptConfig {
            layers: 3,
            ..GptConfig::tiny()
        };
        assert!(matches!(
            load::<Cpu>(&bytes, bigger, &Default::default()),
            Err(CheckpointError::Shape { .. })
        ));
    }
}
