//! Loss-delta scoring of a gradient: the miner's update applied to the checkpoint at a
//! factor must lower the loss on the miner's own assigned batch, and by clearly more than on
//! a batch the validator picks at random (else the miner did not train on its data). Copies
//! — updates nearly parallel to one committed earlier — score nothing.

use crate::codec::Sparse;
use crate::model::{Cpu, GptConfig, eval};
use crate::signed::Check;
use crate::tensors::TensorSet;

/// By default an update must improve its own batch by more than a random one, by at least
/// this fraction of its own improvement: early in training every update helps every batch a
/// little, and only the excess is the miner's own data.
pub const OWN_DATA_MARGIN: f64 = 0.1;

/// The four losses measured for one update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Losses {
    pub assigned_before: f32,
    pub assigned_after: f32,
    pub random_before: f32,
    pub random_after: f32,
}

impl Losses {
    /// Relative improvement on the assigned batch.
    pub fn assigned(&self) -> f64 {
        relative(self.assigned_before, self.assigned_after)
    }

    /// Relative improvement on the random batch.
    pub fn random(&self) -> f64 {
        relative(self.random_before, self.random_after)
    }
}

fn relative(before: f32, after: f32) -> f64 {
    if before.is_finite() && after.is_finite() && before > 0.0 {
        f64::from(before - after) / f64::from(before)
    } else {
        f64::NEG_INFINITY
    }
}

/// What measuring one update needs: the checkpoint, the update, and the two batches.
pub struct Measure<'a> {
    pub base: &'a TensorSet,
    pub update: &'a Sparse,
    pub factor: f64,
    pub config: GptConfig,
    pub batch: usize,
    pub assigned: &'a [u32],
    pub random: &'a [u32],
}

impl Measure<'_> {
    /// The four losses, on the CPU: the update applied as θ − factor·g.
    pub fn losses(&self) -> Result<Losses, String> {
        let device = Default::default();
        let mut after = self.base.clone();
        for (&i, &g) in self.update.indices.iter().zip(&self.update.values) {
            let p = after
                .values
                .get_mut(i as usize)
                .ok_or_else(|| format!("index {i} is outside the checkpoint"))?;
            *p = (f64::from(*p) - self.factor * f64::from(g)) as f32;
        }
        let windows = [self.assigned, self.random];
        let measure = |set: &TensorSet| {
            eval::losses::<Cpu>(set, self.config, &windows, self.batch, &device)
                .map_err(|e| e.to_string())
        };
        let (before, after) = (measure(self.base)?, measure(&after)?);
        Ok(Losses {
            assigned_before: before[0],
            assigned_after: after[0],
            random_before: before[1],
            random_after: after[1],
        })
    }
}

/// The checks of measured losses, and the score: the relative improvement on the assigned
/// batch when every check passes, else 0.
pub fn judge(losses: &Losses, own_data_margin: f64) -> (Vec<Check>, f64) {
    let (own, random) = (losses.assigned(), losses.random());
    let improves = own > 0.0;
    let own_data = own - random > own_data_margin * own.abs();
    let checks = vec![
        Check {
            name: "improves".into(),
            passed: improves,
            reason: (!improves).then(|| {
                format!(
                    "the update does not lower the loss on its own batch ({:.4} → {:.4})",
                    losses.assigned_before, losses.assigned_after
                )
            }),
        },
        Check {
            name: "own-data".into(),
            passed: own_data,
            reason: (!own_data).then(|| {
                format!(
                    "it lowers its own batch's loss by {:.2}% and a random batch's by {:.2}%: not trained on its data",
                    own * 100.0,
                    random * 100.0
                )
            }),
        },
    ];
    let score = if improves && own_data { own } else { 0.0 };
    (checks, score)
}

/// The cosine of two sparse updates over the same parameters.
pub fn cosine(a: &Sparse, b: &Sparse) -> f64 {
    let dot_with = |x: &Sparse, y: &Sparse| {
        let mut dot = 0f64;
        let (mut i, mut j) = (0, 0);
        let (xi, yi) = (sorted(x), sorted(y));
        while i < xi.len() && j < yi.len() {
            match xi[i].0.cmp(&yi[j].0) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    dot += f64::from(xi[i].1) * f64::from(yi[j].1);
                    i += 1;
                    j += 1;
                }
            }
        }
        dot
    };
    let norm = |x: &Sparse| {
        x.values
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let denominator = norm(a) * norm(b);
    if denominator == 0.0 {
        return 0.0;
    }
    dot_with(a, b) / denominator
}

fn sorted(x: &Sparse) -> Vec<(u32, f32)> {
    let mut pairs: Vec<(u32, f32)> = x
        .indices
        .iter()
        .copied()
        .zip(x.values.iter().copied())
        .collect();
    pairs.sort_unstable_by_key(|p| p.0);
    pairs
}

/// For each update, the uid of an earlier one it nearly copies (cosine at or above
/// `threshold`); updates are `(uid, commitment block, update)`, and the earlier block (then
/// the lower uid) is the original.
pub fn copies(updates: &[(u16, i64, &Sparse)], threshold: f64) -> Vec<Option<u16>> {
    updates
        .iter()
        .map(|(uid, block, update)| {
            updates
                .iter()
                .filter(|(other, other_block, _)| (*other_block, *other) < (*block, *uid))
                .find(|(_, _, earlier)| cosine(update, earlier) >= threshold)
                .map(|(other, _, _)| *other)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse(indices: &[u32], values: &[f32]) -> Sparse {
        Sparse {
            n: 100,
            indices: indices.to_vec(),
            values: values.to_vec(),
            layout_digest: None,
            layout: None,
        }
    }

    #[test]
    fn an_update_that_fits_its_own_batch_scores_its_improvement() {
        let honest = Losses {
            assigned_before: 5.0,
            assigned_after: 4.0,
            random_before: 5.0,
            random_after: 4.8,
        };
        let (checks, score) = judge(&honest, OWN_DATA_MARGIN);
        assert!(checks.iter().all(|c| c.passed), "{checks:?}");
        assert!((score - 0.2).abs() < 1e-9);
    }

    #[test]
    fn noise_and_other_data_score_nothing_and_say_why() {
        let noise = Losses {
            assigned_before: 5.0,
            assigned_after: 5.3,
            random_before: 5.0,
            random_after: 5.31,
        };
        let (checks, score) = judge(&noise, OWN_DATA_MARGIN);
        assert_eq!(score, 0.0);
        assert!(
            checks[0]
                .reason
                .as_deref()
                .unwrap()
                .contains("does not lower")
        );
        let elsewhere = Losses {
            assigned_before: 5.0,
            assigned_after: 4.9,
            random_before: 5.0,
            random_after: 4.905,
        };
        let (checks, score) = judge(&elsewhere, OWN_DATA_MARGIN);
        assert_eq!(score, 0.0);
        assert!(
            checks[1]
                .reason
                .as_deref()
                .unwrap()
                .contains("not trained on its data")
        );
        let broken = Losses {
            assigned_before: 5.0,
            assigned_after: f32::NAN,
            random_before: 5.0,
            random_after: 5.0,
        };
        assert_eq!(judge(&broken, OWN_DATA_MARGIN).1, 0.0);
    }

    #[test]
    fn a_near_copy_is_found_and_the_earlier_one_is_the_original() {
        let original = sparse(&[3, 7, 9], &[1.0, -2.0, 0.5]);
        let copy = sparse(&[9, 3, 7], &[0.5001, 1.0, -2.0]);
        let different = sparse(&[1, 7, 50], &[1.0, -2.0, 0.5]);
        assert!(cosine(&original, &copy) > 0.9999);
        assert!(cosine(&original, &different) < 0.9);
        let found = copies(
            &[(2, 10, &copy), (1, 9, &original), (3, 8, &different)],
            0.9999,
        );
        assert_eq!(found, [Some(1), None, None]);
    }
}
