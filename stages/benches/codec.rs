//! Codec throughput (GB/s of f32 input, one core), compression ratio against dense f32, and
//! reconstruction error against the exact top-k.
//!
//! `cargo bench -p gradline-stages --bench codec` (`-- 10000000` for one size).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gradline_stages::codec::{self, Layout, Limits, select, topk_ef, topk_f16};

/// A gradient-like vector: approximately normal, deterministic.
fn gradient(n: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (uniform() + uniform() + uniform() + uniform() - 2.0) * 1e-3)
        .collect()
}

fn encode(codec: &str, values: &[f32], density: f64) -> Vec<u8> {
    match codec {
        "topk-f16" => topk_f16::encode(values, density, None).unwrap(),
        _ => topk_ef::encode(
            values,
            &Layout::flat(values.len() as u64),
            &topk_ef::Options::new(density),
        )
        .unwrap(),
    }
}

fn report(values: &[f32], density: f64, codec: &str, blob: &[u8]) {
    let k = select::k_for(density, values.len());
    let exact = select::top_k(values, k);
    let decoded = codec::decode(blob, Limits::default()).unwrap();
    let truth: std::collections::HashMap<u32, f32> =
        exact.iter().map(|&i| (i, values[i as usize])).collect();
    let (mut dot, mut na, mut nb, mut diff) = (0f64, 0f64, 0f64, 0f64);
    for (i, v) in decoded.indices.iter().zip(&decoded.values) {
        let t = truth.get(i).copied().unwrap_or(0.0) as f64;
        dot += t * *v as f64;
        nb += (*v as f64).powi(2);
        diff += (t - *v as f64).powi(2);
    }
    for v in truth.values() {
        na += (*v as f64).powi(2);
    }
    let full: f64 = values.iter().map(|v| (*v as f64).powi(2)).sum();
    let dropped = full - na;
    println!(
        "report n={} density={density} codec={codec}: {} bytes, {:.1}x smaller than dense f32, cosine to exact top-k {:.6}, rel L2 to exact top-k {:.2e}, rel L2 to the full gradient {:.4} (exact top-k alone: {:.4})",
        values.len(),
        blob.len(),
        (values.len() * 4) as f64 / blob.len() as f64,
        dot / (na.sqrt() * nb.sqrt()),
        (diff / na).sqrt(),
        ((dropped + diff) / full).sqrt(),
        (dropped / full).sqrt(),
    );
}

fn bench(c: &mut Criterion) {
    let only: Option<usize> = std::env::args().skip(1).find_map(|a| a.parse().ok());
    let sizes: Vec<usize> = match only {
        Some(n) => vec![n],
        None => vec![1_000_000, 10_000_000, 100_000_000],
    };
    for n in sizes {
        let values = gradient(n);
        let mut group = c.benchmark_group(format!("n={n}"));
        group.throughput(Throughput::Bytes(4 * n as u64));
        group.sample_size(10);
        for density in [0.01, 0.001] {
            for codec in ["topk-f16", "topk-ef"] {
                let blob = encode(codec, &values, density);
                report(&values, density, codec, &blob);
                group.bench_with_input(
                    BenchmarkId::new(format!("encode {codec}"), density),
                    &values,
                    |b, v| b.iter(|| encode(codec, black_box(v), density)),
                );
                group.bench_with_input(
                    BenchmarkId::new(format!("decode {codec}"), density),
                    &blob,
                    |b, blob| b.iter(|| codec::decode(black_box(blob), Limits::default()).unwrap()),
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
