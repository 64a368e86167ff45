//! The outer step of a merge: combine the accepted updates (pseudo-gradients: where the
//! start weights should move *from*, `θ_start − θ_trained`) into one, then apply it with an
//! outer optimizer — plain SGD, or Nesterov momentum as in DiLoCo, whose velocity is carried
//! from cycle to cycle.

use super::{OuterOptimizer, Policy};

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum OuterError {
    #[error("there are no updates to merge")]
    Empty,
    #[error("update {index} has {got} values; the checkpoint has {want}")]
    Length {
        index: usize,
        got: usize,
        want: usize,
    },
    #[error("{updates} updates but {weights} weights")]
    Weights { updates: usize, weights: usize },
    #[error("the weights must be finite, non-negative and not all zero")]
    BadWeights,
    #[error("`trim` is a fraction in [0, 0.5), got {0}")]
    Trim(f64),
    #[error("the carried momentum has {got} values; the checkpoint has {want}")]
    State { got: usize, want: usize },
}

/// One update out of many, by `policy`. `weights` (one per update, e.g. scores) count only
/// for `weighted`; `trim` only for `trimmed-mean` (that fraction of values dropped at each
/// end, per coordinate, before averaging).
pub fn combine(
    updates: &[&[f32]],
    weights: &[f64],
    policy: Policy,
    trim: f64,
) -> Result<Vec<f32>, OuterError> {
    let want = updates.first().ok_or(OuterError::Empty)?.len();
    if let Some((index, u)) = updates.iter().enumerate().find(|(_, u)| u.len() != want) {
        return Err(OuterError::Length {
            index,
            got: u.len(),
            want,
        });
    }
    let n = updates.len();
    match policy {
        Policy::Mean => Ok(weighted(updates, &vec![1.0; n], want)),
        Policy::Weighted => {
            if weights.len() != n {
                return Err(OuterError::Weights {
                    updates: n,
                    weights: weights.len(),
                });
            }
            let total: f64 = weights.iter().sum();
            if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || total <= 0.0 {
                return Err(OuterError::BadWeights);
            }
            Ok(weighted(updates, weights, want))
        }
        Policy::TrimmedMean => {
            if !(0.0..0.5).contains(&trim) {
                return Err(OuterError::Trim(trim));
            }
            let cut = (trim * n as f64).floor() as usize;
            let kept = (n - 2 * cut) as f64;
            let mut column = vec![0f32; n];
            Ok((0..want)
                .map(|i| {
                    column
                        .iter_mut()
                        .zip(updates)
                        .for_each(|(slot, u)| *slot = u[i]);
                    column.sort_unstable_by(f32::total_cmp);
                    let sum: f64 = column[cut..n - cut].iter().map(|&v| f64::from(v)).sum();
                    (sum / kept) as f32
                })
                .collect())
        }
    }
}

fn weighted(updates: &[&[f32]], weights: &[f64], len: usize) -> Vec<f32> {
    let total: f64 = weights.iter().sum();
    let mut sum = vec![0f64; len];
    for (update, &w) in updates.iter().zip(weights) {
        for (acc, &v) in sum.iter_mut().zip(update.iter()) {
            *acc += w * f64::from(v);
        }
    }
    sum.into_iter().map(|s| (s / total) as f32).collect()
}

/// Moves `params` by the combined update. Nesterov reads and updates `velocity` (zeros on
/// the first cycle): `v ← μ·v + g`, `θ ← θ − lr·(g + μ·v)`; SGD: `θ ← θ − lr·g`.
pub fn step(
    params: &mut [f32],
    update: &[f32],
    optimizer: OuterOptimizer,
    lr: f64,
    momentum: f64,
    velocity: &mut Vec<f32>,
) -> Result<(), OuterError> {
    if update.len() != params.len() {
        return Err(OuterError::Length {
            index: 0,
            got: update.len(),
            want: params.len(),
        });
    }
    match optimizer {
        OuterOptimizer::Sgd => {
            for (p, &g) in params.iter_mut().zip(update) {
                *p = (f64::from(*p) - lr * f64::from(g)) as f32;
            }
        }
        OuterOptimizer::Nesterov => {
            if velocity.is_empty() {
                velocity.resize(params.len(), 0.0);
            }
            if velocity.len() != params.len() {
                return Err(OuterError::State {
                    got: velocity.len(),
                    want: params.len(),
                });
            }
            for ((p, &g), v) in params.iter_mut().zip(update).zip(velocity.iter_mut()) {
                let g = f64::from(g);
                let next = momentum * f64::from(*v) + g;
                *v = next as f32;
                *p = (f64::from(*p) - lr * (g + momentum * next)) as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_weighted_are_exact() {
        let (a, b) = ([1.0f32, 2.0, -4.0], [3.0f32, 0.0, 0.0]);
        let updates: [&[f32]; 2] = [&a, &b];
        assert_eq!(
            combine(&updates, &[], Policy::Mean, 0.0).unwrap(),
            [2.0, 1.0, -2.0]
        );
        assert_eq!(
            combine(&updates, &[3.0, 1.0], Policy::Weighted, 0.0).unwrap(),
            [1.5, 1.5, -3.0]
        );
        assert_eq!(
            combine(&updates, &[0.0, 0.0], Policy::Weighted, 0.0),
            Err(OuterError::BadWeights)
        );
        assert_eq!(
            combine(&updates, &[1.0], Policy::Weighted, 0.0),
            Err(OuterError::Weights {
                updates: 2,
                weights: 1
            })
        );
        let short = [1.0f32];
        assert!(matches!(
            combine(&[&a, &short], &[], Policy::Mean, 0.0),
            Err(OuterError::Length { index: 1, .. })
        ));
        assert_eq!(combine(&[], &[], Policy::Mean, 0.0), Err(OuterError::Empty));
    }

    #[test]
    fn a_trimmed_mean_ignores_an_outlier() {
        let honest = [[1.0f32, -1.0], [1.2, -0.8], [0.8, -1.2], [1.0, -1.0]];
        let attacker = [1000.0f32, 1000.0];
        let mut updates: Vec<&[f32]> = honest.iter().map(|u| u.as_slice()).collect();
        updates.push(&attacker);
        let robust = combine(&updates, &[], Policy::TrimmedMean, 0.2).unwrap();
        // Per coordinate, the largest and smallest are dropped; three values remain.
        assert!((robust[0] - 1.0666667).abs() < 1e-6, "{robust:?}");
        assert!((robust[1] - -0.9333333).abs() < 1e-6, "{robust:?}");
        let naive = combine(&updates, &[], Policy::Mean, 0.0).unwrap();
        assert!(naive[0] > 100.0);
        assert_eq!(
            combine(&updates, &[], Policy::TrimmedMean, 0.5),
            Err(OuterError::Trim(0.5))
        );
    }

    #[test]
    fn sgd_and_nesterov_steps_are_exact_and_carry_momentum() {
        let mut params = vec![1.0f32, -2.0];
        let mut velocity = Vec::new();
        step(
            &mut params,
            &[0.5, -1.0],
            OuterOptimizer::Sgd,
            0.1,
            0.0,
            &mut velocity,
        )
        .unwrap();
        assert_eq!(params, [0.95, -1.9]);
        assert!(velocity.is_empty(), "SGD keeps no state");

        let mut params = vec![1.0f32];
        step(
            &mut params,
            &[1.0],
            OuterOptimizer::Nesterov,
            0.5,
            0.9,
            &mut velocity,
        )
        .unwrap();
        // v = 1; θ = 1 − 0.5·(1 + 0.9·1) = 0.05
        assert_eq!(velocity, [1.0]);
        assert!((params[0] - 0.05).abs() < 1e-6);
        step(
            &mut params,
            &[1.0],
            OuterOptimizer::Nesterov,
            0.5,
            0.9,
            &mut velocity,
        )
        .unwrap();
        // v = 0.9·1 + 1 = 1.9; θ = 0.05 − 0.5·(1 + 0.9·1.9) = −1.305
        assert!((velocity[0] - 1.9).abs() < 1e-6);
        assert!((params[0] - -1.305).abs() < 1e-6, "{params:?}");
        let mut wrong = vec![0.0f32; 3];
        assert_eq!(
            step(
                &mut params,
                &[1.0],
                OuterOptimizer::Nesterov,
                0.5,
                0.9,
                &mut wrong
            ),
            Err(OuterError::State { got: 3, want: 1 })
        );
    }
}
