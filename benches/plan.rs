//! Validate + plan of generated pipelines (the target: 2,000 stages under 200 ms).
//!
//! `cargo bench --bench plan`

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gradline_engine::load;

/// A pipeline of `n` stages: downloads feeding trainers feeding compressors, with
/// interpolated settings, parameters and `when:` conditions — every checker path exercised.
fn generate(n: usize) -> String {
    let downloads = (n / 10).max(1);
    let pairs = (n - downloads) / 2;
    let mut out = String::from(
        "version: 1\nname: generated\nrole: miner\nparams:\n  uid: { type: int, default: 3 }\n  density: { type: float, default: 0.01 }\nresources:\n  store: { url: \"file://.gradline/store\" }\n  chain: { url: \"local://.gradline/chain\", netuid: 3 }\ntrigger: { every: window }\nstages:\n",
    );
    for i in 0..downloads {
        let _ = writeln!(
            out,
            "  d{i}:\n    uses: download\n    with: {{ from: [store], object: \"ckpt/${{{{ params.uid }}}}/{i}\" }}"
        );
    }
    for i in 0..pairs {
        let d = i % downloads;
        let _ = writeln!(
            out,
            "  t{i}:\n    uses: train\n    when: \"${{{{ cycle.index > 0 && params.uid != {i} }}}}\"\n    with: {{ checkpoint: \"${{{{ stages.d{d}.outputs.checkpoint }}}}\", uid: \"${{{{ params.uid }}}}\", steps: 2 }}\n  c{i}:\n    uses: compress\n    with: {{ gradient: \"${{{{ stages.t{i}.outputs.gradient }}}}\", density: \"${{{{ params.density }}}}\" }}"
        );
    }
    out
}

fn bench(c: &mut Criterion) {
    let registry = gradline_stages::registry();
    let mut group = c.benchmark_group("validate+plan");
    group.sample_size(20);
    for n in [200, 2000] {
        let text = generate(n);
        let loaded = load("generated.yaml", &text, &registry, &[]);
        assert!(!loaded.has_errors(), "{}", loaded.render());
        assert_eq!(
            loaded.pipeline.as_ref().map(|p| p.stages.len()),
            Some(n - (n - n / 10) % 2)
        );
        group.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| {
                let loaded = load("generated.yaml", black_box(text), &registry, &[]);
                black_box(loaded.plan(&|_| false))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
