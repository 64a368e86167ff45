//! Dense tensor sets (gradients, residuals) as safetensors files, in the parameter
//! contract's order. safetensors does not keep tensor order, so the order is written in the
//! metadata (`gradline.order`), and the set reads back as one flat vector plus its layout.

use std::collections::HashMap;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::codec::Layout;

const ORDER_KEY: &str = "gradline.order";
const KIND_KEY: &str = "gradline.kind";

/// How values are stored in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoredDtype {
    F32,
    Bf16,
    F16,
}

/// A safetensors file with its header's keys (and its metadata's) in sorted order, so the
/// same tensors always give the same bytes and digest (the writer's metadata map has no order).
fn canonical(bytes: Vec<u8>) -> Result<Vec<u8>, TensorError> {
    let malformed = || TensorError::Format("a safetensors file without a header".into());
    let length: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(malformed)?;
    let end = usize::try_from(u64::from_le_bytes(length))
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&end| end <= bytes.len())
        .ok_or_else(malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..end]).map_err(|e| TensorError::Format(e.to_string()))?;
    let sorted = |map: serde_json::Map<String, serde_json::Value>| {
        let mut entries: Vec<(String, serde_json::Value)> = map.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.into_iter().collect::<serde_json::Map<_, _>>()
    };
    let header: serde_json::Map<String, serde_json::Value> = sorted(header)
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::Object(inner) if key == "__metadata__" => {
                (key, serde_json::Value::Object(sorted(inner)))
            }
            other => (key, other),
        })
        .collect();
    let mut text = serde_json::to_vec(&header).map_err(|e| TensorError::Format(e.to_string()))?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - end);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[end..]);
    Ok(out)
}

/// Tensors flattened in contract order.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSet {
    pub layout: Layout,
    pub shapes: Vec<Vec<usize>>,
    pub values: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    #[error("not a safetensors file: {0}")]
    Format(String),
    #[error("the file has no `{ORDER_KEY}` metadata: gradline does not know the tensors' order")]
    NoOrder,
    #[error("tensor `{0}` is listed in the order but missing")]
    Missing(String),
    #[error("tensor `{name}` is {dtype:?}; gradients are F32, F16 or BF16")]
    Dtype { name: String, dtype: Dtype },
    #[error("shapes and values disagree: {0}")]
    Shape(String),
}

impl TensorSet {
    /// The tensors whose names pass `keep`, in this set's order.
    pub fn select(&self, keep: impl Fn(&str) -> bool) -> Self {
        let mut out = Self {
            layout: Layout {
                tensors: Vec::new(),
            },
            shapes: Vec::new(),
            values: Vec::new(),
        };
        let mut at = 0usize;
        for ((name, numel), shape) in self.layout.tensors.iter().zip(&self.shapes) {
            let range = at..at + *numel as usize;
            at = range.end;
            if keep(name) {
                out.layout.tensors.push((name.clone(), *numel));
                out.shapes.push(shape.clone());
                out.values.extend_from_slice(&self.values[range]);
            }
        }
        out
    }

    /// One flat tensor.
    pub fn flat(values: Vec<f32>) -> Self {
        Self {
            layout: Layout::flat(values.len() as u64),
            shapes: vec![vec![values.len()]],
            values,
        }
    }

    pub fn to_safetensors(&self, kind: &str) -> Result<Vec<u8>, TensorError> {
        self.to_safetensors_as(kind, StoredDtype::F32)
    }

    /// Writes the set with its values stored as `dtype` (bf16 halves a checkpoint).
    pub fn to_safetensors_as(
        &self,
        kind: &str,
        dtype: StoredDtype,
    ) -> Result<Vec<u8>, TensorError> {
        let (width, st_dtype) = match dtype {
            StoredDtype::F32 => (4, Dtype::F32),
            StoredDtype::Bf16 => (2, Dtype::BF16),
            StoredDtype::F16 => (2, Dtype::F16),
        };
        let bytes: Vec<u8> = match dtype {
            StoredDtype::F32 => self.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            StoredDtype::Bf16 => self
                .values
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
            StoredDtype::F16 => self
                .values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        let mut views = Vec::new();
        let mut offset = 0;
        for ((name, numel), shape) in self.layout.tensors.iter().zip(&self.shapes) {
            let len = *numel as usize * width;
            let slice = bytes
                .get(offset..offset + len)
                .ok_or_else(|| TensorError::Shape(name.clone()))?;
            views.push((
                name.clone(),
                TensorView::new(st_dtype, shape.clone(), slice)
                    .map_err(|e| TensorError::Shape(e.to_string()))?,
            ));
            offset += len;
        }
        let order: Vec<&str> = self
            .layout
            .tensors
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        let metadata = HashMap::from([
            (
                ORDER_KEY.to_owned(),
                serde_json::to_string(&order).unwrap_or_default(),
            ),
            (KIND_KEY.to_owned(), kind.to_owned()),
        ]);
        let bytes = safetensors::serialize(views, Some(metadata))
            .map_err(|e| TensorError::Format(e.to_string()))?;
        canonical(bytes)
    }

    /// Reads a set whose order is in its metadata (gradients, residuals).
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, TensorError> {
        let (_, header) =
            SafeTensors::read_metadata(bytes).map_err(|e| TensorError::Format(e.to_string()))?;
        let order: Vec<String> = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(ORDER_KEY))
            .and_then(|o| serde_json::from_str(o).ok())
            .ok_or(TensorError::NoOrder)?;
        Self::read(bytes, order)
    }

    /// Reads any safetensors file: in its recorded order when it has one, else by name
    /// (checkpoints made elsewhere).
    pub fn from_safetensors_by_name(bytes: &[u8]) -> Result<Self, TensorError> {
        match Self::from_safetensors(bytes) {
            Err(TensorError::NoOrder) => {
                let file = SafeTensors::deserialize(bytes)
                    .map_err(|e| TensorError::Format(e.to_string()))?;
                let mut names: Vec<String> = file.names().into_iter().map(str::to_owned).collect();
                names.sort();
                Self::read(bytes, names)
            }
            other => other,
        }
    }

    fn read(bytes: &[u8], order: Vec<String>) -> Result<Self, TensorError> {
        let file =
            SafeTensors::deserialize(bytes).map_err(|e| TensorError::Format(e.to_string()))?;
        let mut set = TensorSet {
            layout: Layout {
                tensors: Vec::new(),
            },
            shapes: Vec::new(),
            values: Vec::new(),
        };
        for name in order {
            let view = file
                .tensor(&name)
                .map_err(|_| TensorError::Missing(name.clone()))?;
            let data = view.data();
            match view.dtype() {
                Dtype::F32 => set.values.extend(
                    data.chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                ),
                Dtype::F16 => set.values.extend(
                    data.chunks_exact(2)
                        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                Dtype::BF16 => set.values.extend(
                    data.chunks_exact(2)
                        .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
                ),
                dtype => return Err(TensorError::Dtype { name, dtype }),
            }
            let numel: usize = view.shape().iter().product();
            set.layout.tensors.push((name, numel as u64));
            set.shapes.push(view.shape().to_vec());
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_contract_order() {
        let set = TensorSet {
            layout: Layout {
                tensors: vec![("z.weight".into(), 4), ("a.bias".into(), 2)],
            },
            shapes: vec![vec![2, 2], vec![2]],
            values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        };
        let bytes = set.to_safetensors("gradient").unwrap();
        assert_eq!(TensorSet::from_safetensors(&bytes).unwrap(), set);
        let halved = set
            .to_safetensors_as("checkpoint", StoredDtype::Bf16)
            .unwrap();
        assert!(halved.len() < bytes.len());
        assert_eq!(
            TensorSet::from_safetensors(&halved).unwrap(),
            set,
            "these values are exact in bf16"
        );
        assert!(matches!(
            TensorSet::from_safetensors(b"not safetensors"),
            Err(TensorError::Format(_))
        ));
    }

    #[test]
    fn the_same_tensors_always_give_the_same_bytes() {
        let mut set = TensorSet::flat(vec![1.0, -2.0, 3.5]);
        set.layout.tensors = vec![("b".into(), 1), ("a".into(), 2)];
        set.shapes = vec![vec![1], vec![2]];
        let first = set.to_safetensors("checkpoint").unwrap();
        for _ in 0..20 {
            assert_eq!(set.to_safetensors("checkpoint").unwrap(), first);
        }
        assert_eq!(TensorSet::from_safetensors(&first).unwrap(), set);
    }
}
