//! Exact top-k selection by magnitude, in O(n).
//!
//! The order is total — larger |v| first, then the smaller index — so the kept set and its
//! order are the same on every machine. A strided sample estimates a threshold that keeps a
//! little more than k candidates in one streaming pass; the exact k are then selected among
//! those few. If the estimate keeps fewer than k, every element is a candidate.

use std::cmp::Ordering;

/// The number of values kept: `ceil(density × n)`, with `density × n` values that are whole
/// up to rounding (0.07 × 100) counting as whole.
pub fn k_for(density: f64, n: usize) -> usize {
    let exact = density * n as f64;
    let nearest = exact.round();
    let k = if (exact - nearest).abs() <= 1e-9 * nearest.max(1.0) {
        nearest
    } else {
        exact.ceil()
    };
    (k.max(0.0) as usize).min(n)
}

/// |v| as an integer that orders like |v| (finite inputs).
#[inline]
fn key(v: f32) -> u32 {
    v.to_bits() & 0x7fff_ffff
}

/// Larger magnitude first, then smaller index.
#[inline]
fn order(values: &[f32], a: u32, b: u32) -> Ordering {
    key(values[b as usize])
        .cmp(&key(values[a as usize]))
        .then(a.cmp(&b))
}

/// Indices of the k largest magnitudes of `values[offset..offset + len]` (as global indices),
/// in selection order (largest first).
fn top_k_range(values: &[f32], offset: usize, len: usize, k: usize) -> Vec<u32> {
    let k = k.min(len);
    if k == 0 {
        return Vec::new();
    }
    let slice = &values[offset..offset + len];
    let threshold = estimate_threshold(slice, k);
    let mut candidates: Vec<u32> = Vec::with_capacity(k + k / 4 + 64);
    for (i, &v) in slice.iter().enumerate() {
        if key(v) >= threshold {
            candidates.push((offset + i) as u32);
        }
    }
    if candidates.len() < k {
        candidates = (offset as u32..(offset + len) as u32).collect();
    }
    if candidates.len() > k {
        candidates.select_nth_unstable_by(k - 1, |&a, &b| order(values, a, b));
        candidates.truncate(k);
    }
    candidates.sort_unstable_by(|&a, &b| order(values, a, b));
    candidates
}

/// A magnitude key that at least k elements (probably) reach; 0 keeps everything.
fn estimate_threshold(slice: &[f32], k: usize) -> u32 {
    const SAMPLES: usize = 1 << 16;
    let n = slice.len();
    if n <= SAMPLES * 4 || k * 2 > n {
        return 0;
    }
    let stride = n / SAMPLES;
    let mut sample: Vec<u32> = slice.iter().step_by(stride).map(|&v| key(v)).collect();
    let m = sample.len();
    // Aim for ~25% more candidates than k, plus slack for sampling noise.
    let wanted = ((k as f64 / n as f64) * m as f64 * 1.25).ceil() as usize + 32;
    if wanted >= m {
        return 0;
    }
    let (_, nth, _) = sample.select_nth_unstable_by(wanted, |a, b| b.cmp(a));
    *nth
}

/// The k largest magnitudes over the whole slice, largest first.
pub fn top_k(values: &[f32], k: usize) -> Vec<u32> {
    top_k_range(values, 0, values.len(), k)
}

/// Per chunk of `chunk` values, the `ceil(density × chunk_len)` largest; chunks in order,
/// each chunk's entries largest first.
pub fn top_k_chunked(values: &[f32], density: f64, chunk: usize) -> Vec<u32> {
    let chunk = chunk.max(1);
    let mut out = Vec::with_capacity(k_for(density, values.len()) + values.len() / chunk + 1);
    let mut offset = 0;
    while offset < values.len() {
        let len = chunk.min(values.len() - offset);
        out.extend(top_k_range(values, offset, len, k_for(density, len)));
        offset += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(values: &[f32], k: usize) -> Vec<u32> {
        let mut all: Vec<u32> = (0..values.len() as u32).collect();
        all.sort_by(|&a, &b| order(values, a, b));
        all.truncate(k);
        all
    }

    #[test]
    fn k_rounds_up_but_not_over_float_noise() {
        assert_eq!(k_for(0.07, 100), 7);
        assert_eq!(k_for(0.01, 150), 2);
        assert_eq!(k_for(0.001, 10_000_000), 10_000);
        assert_eq!(k_for(1.0, 5), 5);
        assert_eq!(k_for(0.5, 0), 0);
    }

    #[test]
    fn matches_a_full_sort_with_ties_and_signs() {
        let mut values: Vec<f32> = (0..300_000i64)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 7.0)
            .collect();
        values[3] = -1e9;
        for k in [0, 1, 10, 999, 10_000] {
            assert_eq!(top_k(&values, k), naive(&values, k), "k = {k}");
        }
        assert_eq!(top_k(&values, 10)[0], 3);
    }

    #[test]
    fn chunked_selection_keeps_per_chunk_counts() {
        let values: Vec<f32> = (0..1050).map(|i| (i % 97) as f32).collect();
        let picked = top_k_chunked(&values, 0.01, 100);
        assert_eq!(picked.len(), 10 + 1);
        for (c, idx) in picked.iter().enumerate().take(10) {
            assert_eq!(*idx as usize / 100, c);
        }
    }
}
