//! Weights from scores: the policies subnets use to turn validator scores into weights, and
//! the chain's encoding of them as `u16` (the Bittensor SDK's: scaled so the largest weight
//! is `u16::MAX`).
//!
//! Everything is deterministic: ties go to the lower uid, and the order scores arrive in
//! does not matter.

use std::collections::BTreeMap;

/// How scores become weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Policy {
    /// Each miner's share of the total score.
    Normalized,
    /// All weight to the best miner; the reigning `king` keeps the crown unless beaten by
    /// more than `epsilon` (a fraction of the king's score).
    WinnerTakeAll { epsilon: f64, king: Option<u16> },
    /// Equal weight to the best `n` miners with a positive score.
    TopN { n: usize },
}

/// A fraction of all weight sent to one uid (the subnet owner's, to burn emissions).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Burn {
    pub fraction: f64,
    pub uid: u16,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WeightsError {
    #[error("uid {0} is scored twice")]
    DuplicateUid(u16),
    #[error("the burn fraction must be within [0, 1], got {0}")]
    BurnFraction(f64),
    #[error("epsilon must be a fraction of at least 0, got {0}")]
    Epsilon(f64),
}

/// Weights (fractions summing to 1, or nothing when no miner earned any) by uid, ascending.
/// Scores that are negative or not finite count as 0.
pub fn weights(
    scores: &[(u16, f64)],
    policy: Policy,
    burn: Option<Burn>,
) -> Result<Vec<(u16, f64)>, WeightsError> {
    let mut by_uid = BTreeMap::new();
    for &(uid, score) in scores {
        let score = if score.is_finite() && score > 0.0 {
            score
        } else {
            0.0
        };
        if by_uid.insert(uid, score).is_some() {
            return Err(WeightsError::DuplicateUid(uid));
        }
    }
    let ranked = ranked(&by_uid);
    let mut out: BTreeMap<u16, f64> = match policy {
        Policy::Normalized => {
            let total: f64 = by_uid.values().sum();
            by_uid
                .iter()
                .filter(|(_, s)| **s > 0.0)
                .map(|(&uid, &s)| (uid, s / total))
                .collect()
        }
        Policy::WinnerTakeAll { epsilon, king } => {
            if !(epsilon >= 0.0 && epsilon.is_finite()) {
                return Err(WeightsError::Epsilon(epsilon));
            }
            let winner = ranked
                .first()
                .filter(|(_, s)| *s > 0.0)
                .map(
                    |&(uid, best)| match king.and_then(|k| by_uid.get(&k).map(|&s| (k, s))) {
                        Some((king, held)) if held > 0.0 && best <= held * (1.0 + epsilon) => king,
                        _ => uid,
                    },
                );
            winner.into_iter().map(|uid| (uid, 1.0)).collect()
        }
        Policy::TopN { n } => {
            let chosen: Vec<u16> = ranked
                .iter()
                .filter(|(_, s)| *s > 0.0)
                .take(n)
                .map(|&(uid, _)| uid)
                .collect();
            let share = 1.0 / chosen.len().max(1) as f64;
            chosen.into_iter().map(|uid| (uid, share)).collect()
        }
    };
    if let Some(burn) = burn {
        if !(0.0..=1.0).contains(&burn.fraction) {
            return Err(WeightsError::BurnFraction(burn.fraction));
        }
        if out.is_empty() {
            out.insert(burn.uid, 1.0);
        } else if burn.fraction > 0.0 {
            out.values_mut().for_each(|w| *w *= 1.0 - burn.fraction);
            *out.entry(burn.uid).or_insert(0.0) += burn.fraction;
        }
    }
    Ok(out.into_iter().filter(|(_, w)| *w > 0.0).collect())
}

/// Scores as JSON: a map of uid to score (`{"3": 0.9}`), or a list of `{"uid", "score"}`.
pub fn parse_scores(json: &serde_json::Value) -> Result<Vec<(u16, f64)>, String> {
    let uid = |v: &serde_json::Value| -> Option<u16> {
        v.as_u64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .and_then(|u| u16::try_from(u).ok())
    };
    match json {
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| match (k.parse::<u16>(), v.as_f64()) {
                (Ok(u), Some(s)) => Ok((u, s)),
                _ => Err(format!("`{k}: {v}` is not a uid and a score")),
            })
            .collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| match (uid(&item["uid"]), item["score"].as_f64()) {
                (Some(u), Some(s)) => Ok((u, s)),
                _ => Err(format!("`{item}` is not `{{\"uid\", \"score\"}}`")),
            })
            .collect(),
        other => Err(format!("scores are a map of uid to score, got {other}")),
    }
}

/// Scores best first; equal scores by ascending uid.
fn ranked(by_uid: &BTreeMap<u16, f64>) -> Vec<(u16, f64)> {
    let mut ranked: Vec<(u16, f64)> = by_uid.iter().map(|(&u, &s)| (u, s)).collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
}

/// The chain's form: uids ascending and `u16` values, the largest weight `u16::MAX`;
/// weights that round to 0 are left out.
pub fn to_u16(weights: &[(u16, f64)]) -> (Vec<u16>, Vec<u16>) {
    let max = weights.iter().map(|&(_, w)| w).fold(0.0f64, f64::max);
    if max <= 0.0 {
        return (Vec::new(), Vec::new());
    }
    let mut pairs: Vec<(u16, u16)> = weights
        .iter()
        .map(|&(uid, w)| (uid, (w / max * f64::from(u16::MAX)).round() as u16))
        .filter(|&(_, v)| v > 0)
        .collect();
    pairs.sort_by_key(|&(uid, _)| uid);
    pairs.into_iter().unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KING_EPS: Policy = Policy::WinnerTakeAll {
        epsilon: 0.05,
        king: Some(3),
    };

    #[test]
    fn normalized_shares_the_total() {
        let w = weights(&[(1, 1.0), (2, 3.0), (3, 0.0)], Policy::Normalized, None).unwrap();
        assert_eq!(w, vec![(1, 0.25), (2, 0.75)]);
    }

    #[test]
    fn the_king_keeps_the_crown_within_epsilon() {
        let held = weights(&[(3, 1.0), (7, 1.04)], KING_EPS, None).unwrap();
        assert_eq!(held, vec![(3, 1.0)]);
        let taken = weights(&[(3, 1.0), (7, 1.06)], KING_EPS, None).unwrap();
        assert_eq!(taken, vec![(7, 1.0)]);
        let absent = weights(&[(7, 0.5), (8, 0.5)], KING_EPS, None).unwrap();
        assert_eq!(absent, vec![(7, 1.0)], "a tie goes to the lower uid");
    }

    #[test]
    fn top_n_with_a_burn() {
        let burn = Burn {
            fraction: 0.2,
            uid: 0,
        };
        let w = weights(
            &[(1, 0.9), (2, 0.5), (3, 0.7), (4, 0.0)],
            Policy::TopN { n: 2 },
            Some(burn),
        )
        .unwrap();
        assert_eq!(w, vec![(0, 0.2), (1, 0.4), (3, 0.4)]);
        let nobody = weights(&[(1, 0.0)], Policy::TopN { n: 2 }, Some(burn)).unwrap();
        assert_eq!(
            nobody,
            vec![(0, 1.0)],
            "with no one to pay, everything burns"
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(
            weights(&[(1, 1.0), (1, 2.0)], Policy::Normalized, None),
            Err(WeightsError::DuplicateUid(1))
        );
        let burn = Burn {
            fraction: 1.5,
            uid: 0,
        };
        assert!(weights(&[(1, 1.0)], Policy::Normalized, Some(burn)).is_err());
        let nan = weights(&[(1, f64::NAN), (2, 1.0)], Policy::Normalized, None).unwrap();
        assert_eq!(nan, vec![(2, 1.0)], "a NaN score counts as 0");
    }

    #[test]
    fn u16_scales_the_largest_to_max() {
        assert_eq!(
            to_u16(&[(5, 0.25), (2, 0.75)]),
            (vec![2, 5], vec![65535, 21845])
        );
        assert_eq!(to_u16(&[]), (vec![], vec![]));
    }

    fn scores() -> impl Strategy<Value = Vec<(u16, f64)>> {
        proptest::collection::btree_map(0u16..256, 0.0f64..100.0, 0..40)
            .prop_map(|m| m.into_iter().collect())
    }

    fn policies() -> impl Strategy<Value = Policy> {
        prop_oneof![
            Just(Policy::Normalized),
            (0.0f64..0.5, proptest::option::of(0u16..256))
                .prop_map(|(epsilon, king)| Policy::WinnerTakeAll { epsilon, king }),
            (1usize..10).prop_map(|n| Policy::TopN { n }),
        ]
    }

    proptest! {
        #[test]
        fn weights_sum_to_one_and_stay_in_bounds(
            scores in scores(),
            policy in policies(),
            burn in proptest::option::of((0.0f64..=1.0, 0u16..256)),
        ) {
            let burn = burn.map(|(fraction, uid)| Burn { fraction, uid });
            let w = weights(&scores, policy, burn).unwrap();
            let sum: f64 = w.iter().map(|(_, w)| w).sum();
            prop_assert!(w.is_empty() || (sum - 1.0).abs() < 1e-9, "sum {sum}");
            prop_assert!(w.iter().all(|&(_, x)| x > 0.0 && x <= 1.0 + 1e-12));
            prop_assert!(w.windows(2).all(|p| p[0].0 < p[1].0), "uids ascending, once each");
            let (uids, values) = to_u16(&w);
            prop_assert_eq!(uids.len(), values.len());
            prop_assert!(values.is_empty() || values.iter().max() == Some(&u16::MAX));
        }

        #[test]
        fn order_does_not_matter_and_ties_get_equal_weight(
            scores in scores(),
            policy in policies(),
            seed in any::<u64>(),
        ) {
            let mut shuffled = scores.clone();
            let mut state = seed | 1;
            for i in (1..shuffled.len()).rev() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                shuffled.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let a = weights(&scores, policy, None).unwrap();
            let b = weights(&shuffled, policy, None).unwrap();
            prop_assert_eq!(&a, &b);
            if policy == Policy::Normalized {
                for (i, &(u, s)) in scores.iter().enumerate() {
                    for &(v, t) in &scores[i + 1..] {
                        if s == t {
                            let get = |uid| a.iter().find(|(x, _)| *x == uid).map(|p| p.1);
                            prop_assert_eq!(get(u), get(v));
                        }
                    }
                }
            }
        }
    }
}
