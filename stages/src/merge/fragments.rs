//! Fragments: the trainable tensors of a parameter contract split into `n` groups balanced
//! by size, so miners train and validators merge one fragment at a time; and the release of
//! a full checkpoint from the base tree with each fragment's latest absolute state laid in.
//!
//! The split depends only on the trainable tensors' names and sizes — not on their order in
//! the contract, nor on their values — so it is the same for every release of a model.

use serde::{Deserialize, Serialize};

use crate::model::checkpoint::Contract;
use crate::tensors::TensorSet;

/// One fragment: the tensors it owns, by name, and their total size.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fragment {
    pub index: u32,
    pub tensors: Vec<String>,
    pub params: u64,
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum FragmentError {
    #[error("{fragments} fragments asked for, but the contract has {tensors} trainable tensors")]
    TooMany { fragments: u32, tensors: usize },
    #[error("`fragments` must be at least 1")]
    Zero,
    #[error("tensor `{0}` is not in the checkpoint")]
    Missing(String),
    #[error("tensor `{name}` has {got} values in the state, {want} in the checkpoint")]
    Size {
        name: String,
        got: usize,
        want: usize,
    },
}

/// Splits the trainable tensors into `n` fragments: largest first, each to the lightest
/// fragment so far (ties to the lower index; equal sizes in name order).
pub fn split(contract: &Contract, n: u32) -> Result<Vec<Fragment>, FragmentError> {
    let trainable: Vec<(String, u64)> = contract
        .tensors
        .iter()
        .filter(|t| t.trainable)
        .map(|t| (t.name.clone(), t.shape.iter().product::<usize>() as u64))
        .collect();
    split_tensors(&trainable, n)
}

/// [`split`] over `(name, size)` pairs, all trainable.
pub fn split_tensors(trainable: &[(String, u64)], n: u32) -> Result<Vec<Fragment>, FragmentError> {
    if n == 0 {
        return Err(FragmentError::Zero);
    }
    let mut tensors: Vec<(&str, u64)> = trainable
        .iter()
        .map(|(name, size)| (name.as_str(), *size))
        .collect();
    if tensors.len() < n as usize {
        return Err(FragmentError::TooMany {
            fragments: n,
            tensors: tensors.len(),
        });
    }
    tensors.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut fragments: Vec<Fragment> = (0..n)
        .map(|index| Fragment {
            index,
            tensors: Vec::new(),
            params: 0,
        })
        .collect();
    for (name, size) in tensors {
        let lightest = fragments
            .iter_mut()
            .min_by_key(|f| (f.params, f.index))
            .expect("n is at least 1");
        lightest.tensors.push(name.to_owned());
        lightest.params += size;
    }
    fragments.iter_mut().for_each(|f| f.tensors.sort());
    Ok(fragments)
}

/// A fragment's tensors out of a full set, in the set's order.
pub fn extract(set: &TensorSet, fragment: &Fragment) -> Result<TensorSet, FragmentError> {
    let mut out = TensorSet {
        layout: crate::codec::Layout {
            tensors: Vec::new(),
        },
        shapes: Vec::new(),
        values: Vec::new(),
    };
    for name in &fragment.tensors {
        let (index, range) = locate(set, name)?;
        out.layout.tensors.push(set.layout.tensors[index].clone());
        out.shapes.push(set.shapes[index].clone());
        out.values.extend_from_slice(&set.values[range]);
    }
    Ok(out)
}

/// The base tree with each state's tensors laid over it (later states win).
pub fn release(base: &TensorSet, states: &[TensorSet]) -> Result<TensorSet, FragmentError> {
    let mut out = base.clone();
    for state in states {
        let mut at = 0usize;
        for (name, numel) in &state.layout.tensors {
            let numel = *numel as usize;
            let (_, range) = locate(&out, name)?;
            let values = state
                .values
                .get(at..at + numel)
                .ok_or_else(|| FragmentError::Size {
                    name: name.clone(),
                    got: state.values.len().saturating_sub(at),
                    want: numel,
                })?;
            if range.len() != numel {
                return Err(FragmentError::Size {
                    name: name.clone(),
                    got: numel,
                    want: range.len(),
                });
            }
            out.values[range].copy_from_slice(values);
            at += numel;
        }
    }
    Ok(out)
}

fn locate(set: &TensorSet, name: &str) -> Result<(usize, std::ops::Range<usize>), FragmentError> {
    let mut start = 0usize;
    for (index, (tensor, numel)) in set.layout.tensors.iter().enumerate() {
        let end = start + *numel as usize;
        if tensor == name {
            return Ok((index, start..end));
        }
        start = end;
    }
    Err(FragmentError::Missing(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::checkpoint::{contract, digest};
    use crate::model::gpt::GptConfig;

    /// A set shaped like a small model: uneven tensor sizes.
    fn model_like(scale: f32) -> TensorSet {
        let sizes = [
            ("wte", vec![64, 16]),
            ("wpe", vec![32, 16]),
            ("h.0.attn", vec![16, 48]),
            ("h.0.mlp.fc", vec![16, 64]),
            ("h.0.mlp.proj", vec![64, 16]),
            ("h.0.ln_1", vec![16]),
            ("h.1.attn", vec![16, 48]),
            ("h.1.mlp.fc", vec![16, 64]),
            ("h.1.mlp.proj", vec![64, 16]),
            ("h.1.ln_1", vec![16]),
            ("ln_f", vec![16]),
        ];
        let mut set = TensorSet {
            layout: crate::codec::Layout {
                tensors: Vec::new(),
            },
            shapes: Vec::new(),
            values: Vec::new(),
        };
        for (name, shape) in sizes {
            let numel: usize = shape.iter().product();
            set.layout.tensors.push((name.to_owned(), numel as u64));
            set.values
                .extend((0..numel).map(|i| scale * (i as f32 + name.len() as f32)));
            set.shapes.push(shape);
        }
        set
    }

    fn config() -> GptConfig {
        GptConfig::tiny()
    }

    #[test]
    fn fragments_cover_every_trainable_tensor_once_and_balance() {
        let contract = contract(&model_like(1.0), Some(config()));
        let fragments = split(&contract, 4).unwrap();
        let mut names: Vec<&str> = fragments
            .iter()
            .flat_map(|f| f.tensors.iter().map(String::as_str))
            .collect();
        names.sort();
        let mut all: Vec<&str> = contract.tensors.iter().map(|t| t.name.as_str()).collect();
        all.sort();
        assert_eq!(names, all);
        let sizes: Vec<u64> = fragments.iter().map(|f| f.params).collect();
        assert_eq!(sizes.iter().sum::<u64>(), contract.trainable_params());
        let largest = 64 * 16;
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= largest,
            "{sizes:?}"
        );
        assert_eq!(
            split(&contract, 12),
            Err(FragmentError::TooMany {
                fragments: 12,
                tensors: 11
            })
        );
        assert_eq!(split(&contract, 0), Err(FragmentError::Zero));
    }

    #[test]
    fn the_split_is_stable_across_releases() {
        let first = contract(&model_like(1.0), Some(config()));
        let mut later = contract(&model_like(-3.5), Some(config()));
        later.tensors.reverse();
        assert_ne!(first.digest, later.digest);
        assert_eq!(split(&first, 5).unwrap(), split(&later, 5).unwrap());
    }

    #[test]
    fn split_train_and_release_round_trips_to_the_same_digest() {
        let base = model_like(1.0);
        let trained = model_like(0.25);
        let fragments = split(&contract(&base, Some(config())), 3).unwrap();
        let states: Vec<TensorSet> = fragments
            .iter()
            .map(|f| extract(&trained, f).unwrap())
            .collect();
        let released = release(&base, &states).unwrap();
        assert_eq!(digest(&released), digest(&trained));
        let partial = release(&base, &states[..1]).unwrap();
        assert_ne!(digest(&partial), digest(&trained));
        assert_ne!(digest(&partial), digest(&base));
        let mut wrong = states[0].clone();
        wrong.values.pop();
        assert!(matches!(
            release(&base, &[wrong]),
            Err(FragmentError::Size { .. })
        ));
    }
}
