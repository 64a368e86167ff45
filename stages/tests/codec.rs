//! The codecs: golden vectors byte for byte, round trips, sizes and accuracy, and decoders
//! that turn every malformed blob into a typed error.

use std::path::PathBuf;

use gradline_stages::codec::{self, CodecError, Layout, Limits, topk_ef, topk_f16};
use proptest::prelude::*;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/codec")
}

/// A deterministic pseudo-gradient: heavy-tailed, signed.
fn gradient(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 11) as f64 / (1u64 << 53) as f64;
            let g = (u - 0.5) * 2.0;
            (g * g * g * 0.01) as f32
        })
        .collect()
}

#[derive(serde::Deserialize, serde::Serialize)]
struct Golden {
    values: Vec<f32>,
    density: f64,
    chunk: Option<usize>,
}

fn goldens() -> Vec<(String, Golden)> {
    vec![
        (
            "small".into(),
            Golden {
                values: vec![0.5, -2.0, 0.0, 1.0, 3.0, -0.25, 0.75, -3.0],
                density: 0.5,
                chunk: None,
            },
        ),
        (
            "seeded-1000".into(),
            Golden {
                values: gradient(1000, 7),
                density: 0.01,
                chunk: None,
            },
        ),
        (
            "chunked-1000".into(),
            Golden {
                values: gradient(1000, 8),
                density: 0.02,
                chunk: Some(100),
            },
        ),
    ]
}

/// `GRADLINE_BLESS=1 cargo test -p gradline-stages --test codec` rewrites the golden files.
#[test]
fn golden_vectors_match_byte_for_byte() {
    let bless = std::env::var_os("GRADLINE_BLESS").is_some();
    for (name, g) in goldens() {
        let f16 = topk_f16::encode(&g.values, g.density, g.chunk).unwrap();
        let mut options = topk_ef::Options::new(g.density);
        options.chunk = g.chunk;
        let ef =
            topk_ef::encode(&g.values, &Layout::flat(g.values.len() as u64), &options).unwrap();
        let input = serde_json::to_string_pretty(&g).unwrap();
        for (file, bytes) in [
            (format!("{name}.input.json"), input.into_bytes()),
            (format!("{name}.topk-f16.bin"), f16),
            (format!("{name}.topk-ef.bin"), ef),
        ] {
            let path = fixtures().join(&file);
            if bless {
                std::fs::create_dir_all(fixtures()).unwrap();
                std::fs::write(&path, &bytes).unwrap();
            }
            let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(
                golden == bytes,
                "{file} differs from what the encoder writes now"
            );
        }
    }
}

#[test]
fn the_worked_example_of_the_spec() {
    let bytes = std::fs::read(fixtures().join("small.topk-f16.bin")).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let expected = "08000000 04000000 04000000 07000000 01000000 03000000 0042 00c2 00c0 003c";
    assert_eq!(hex, expected.replace(' ', ""));
    let decoded = topk_f16::decode(&bytes, Limits::default()).unwrap();
    assert_eq!(decoded.indices, [4, 7, 1, 3]);
    assert_eq!(decoded.values, [3.0, -3.0, -2.0, 1.0]);
}

fn exact_top_k_dense(values: &[f32], density: f64) -> Vec<f32> {
    let k = codec::select::k_for(density, values.len());
    let mut dense = vec![0.0; values.len()];
    for i in codec::select::top_k(values, k) {
        dense[i as usize] = values[i as usize];
    }
    dense
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn topk_ef_is_much_smaller_and_as_faithful() {
    let n = 1_000_000;
    let values = gradient(n, 42);
    let density = 0.01;
    let f16 = topk_f16::encode(&values, density, None).unwrap();
    let ef = topk_ef::encode(
        &values,
        &Layout::flat(n as u64),
        &topk_ef::Options::new(density),
    )
    .unwrap();
    assert!(
        f16.len() >= 2 * ef.len(),
        "f16 {} bytes, ef {} bytes",
        f16.len(),
        ef.len()
    );
    assert!(
        (4 * n) / ef.len() >= 200,
        "ef is {}× smaller than dense f32",
        (4 * n) / ef.len()
    );
    let exact = exact_top_k_dense(&values, density);
    let from_ef = codec::decode(&ef, Limits::default())
        .unwrap()
        .to_dense()
        .unwrap();
    let from_f16 = codec::decode(&f16, Limits::default())
        .unwrap()
        .to_dense()
        .unwrap();
    assert!(
        cosine(&from_ef, &exact) >= 0.999,
        "cosine {}",
        cosine(&from_ef, &exact)
    );
    assert!(cosine(&from_f16, &exact) >= 0.999);
    let same_set = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (*x == 0.0) == (*y == 0.0));
    assert!(
        same_set(&from_ef, &exact) && same_set(&from_f16, &exact),
        "both keep exactly the top-k"
    );
}

#[test]
fn layouts_are_checked() {
    let values = gradient(100, 1);
    let layout = Layout {
        tensors: vec![("wte".into(), 60), ("ln.weight".into(), 40)],
    };
    let mut options = topk_ef::Options::new(0.1);
    options.names = true;
    let blob = topk_ef::encode(&values, &layout, &options).unwrap();
    let decoded = topk_ef::decode(&blob, Limits::default()).unwrap();
    assert_eq!(decoded.layout.as_ref(), Some(&layout));
    decoded.check_layout(&layout).unwrap();
    let other = Layout {
        tensors: vec![("wte".into(), 40), ("ln.weight".into(), 60)],
    };
    assert!(matches!(
        decoded.check_layout(&other),
        Err(CodecError::LayoutMismatch(_))
    ));
    let f16 = topk_f16::decode(
        &topk_f16::encode(&values, 0.1, None).unwrap(),
        Limits::default(),
    )
    .unwrap();
    assert!(matches!(
        f16.check_layout(&Layout::flat(99)),
        Err(CodecError::LayoutMismatch(_))
    ));
    assert!(topk_ef::encode(&values, &Layout::flat(99), &options).is_err());
}

#[test]
fn non_finite_gradients_are_refused() {
    let mut values = gradient(50, 2);
    values[7] = f32::NAN;
    assert!(matches!(
        topk_f16::encode(&values, 0.1, None),
        Err(CodecError::NonFiniteInput { index: 7, .. })
    ));
}

fn f16_blob(n: u32, k: u32, indices: &[u32], values: &[u16]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&n.to_le_bytes());
    b.extend_from_slice(&k.to_le_bytes());
    indices
        .iter()
        .for_each(|i| b.extend_from_slice(&i.to_le_bytes()));
    values
        .iter()
        .for_each(|v| b.extend_from_slice(&v.to_le_bytes()));
    b
}

type Check = fn(&CodecError) -> bool;

#[test]
fn hostile_topk_f16_blobs_get_typed_errors() {
    let l = Limits::default();
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        ("empty", vec![], |e| {
            matches!(e, CodecError::Truncated { .. })
        }),
        ("k > n", f16_blob(2, 3, &[0, 1, 1], &[0, 0, 0]), |e| {
            matches!(e, CodecError::KExceedsN { .. })
        }),
        ("index >= n", f16_blob(4, 1, &[4], &[0x3c00]), |e| {
            matches!(e, CodecError::IndexOutOfRange { .. })
        }),
        (
            "duplicate",
            f16_blob(4, 2, &[1, 1], &[0x3c00, 0x3c00]),
            |e| matches!(e, CodecError::DuplicateIndex { index: 1 }),
        ),
        ("NaN", f16_blob(4, 1, &[1], &[0x7e00]), |e| {
            matches!(e, CodecError::NonFinite { .. })
        }),
        ("Inf", f16_blob(4, 1, &[1], &[0x7c00]), |e| {
            matches!(e, CodecError::NonFinite { .. })
        }),
        (
            "truncated",
            f16_blob(4, 2, &[1, 2], &[0x3c00])[..16].to_vec(),
            |e| matches!(e, CodecError::Truncated { .. }),
        ),
        (
            "trailing",
            [f16_blob(4, 1, &[1], &[0x3c00]), vec![0]].concat(),
            |e| matches!(e, CodecError::TrailingBytes(1)),
        ),
        ("absurd k", f16_blob(u32::MAX, u32::MAX, &[], &[]), |e| {
            matches!(
                e,
                CodecError::TooLarge { .. } | CodecError::Truncated { .. }
            )
        }),
    ];
    for (name, blob, expected) in cases {
        let err = topk_f16::decode(&blob, l).expect_err(name);
        assert!(expected(&err), "{name}: {err}");
    }
    let tight = Limits {
        max_params: 1000,
        max_entries: 10,
    };
    assert!(matches!(
        topk_f16::decode(&f16_blob(5000, 0, &[], &[]), tight),
        Err(CodecError::TooLarge { what: "n", .. })
    ));
}

/// Re-seals a tampered topk-ef blob so the checks past the checksum are reached.
fn reseal(mut blob: Vec<u8>) -> Vec<u8> {
    let body = blob.len() - 8;
    let checksum = blake3::hash(&blob[..body]);
    blob[body..].copy_from_slice(&checksum.as_bytes()[..8]);
    blob
}

#[test]
fn hostile_topk_ef_blobs_get_typed_errors() {
    let l = Limits::default();
    let values = gradient(1000, 3);
    let good = topk_ef::encode(&values, &Layout::flat(1000), &topk_ef::Options::new(0.05)).unwrap();
    topk_ef::decode(&good, l).unwrap();
    let mut wrong_magic = good.clone();
    wrong_magic[0] = b'X';
    assert!(codec::decode(&wrong_magic, l).is_err());
    assert!(matches!(
        topk_ef::decode(&wrong_magic, l),
        Err(CodecError::BadMagic { .. })
    ));
    let mut version = good.clone();
    version[4] = 9;
    assert!(matches!(
        topk_ef::decode(&version, l),
        Err(CodecError::UnsupportedVersion(9))
    ));
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    assert!(matches!(
        topk_ef::decode(&flipped, l),
        Err(CodecError::ChecksumMismatch)
    ));
    let mut k_big = good.clone();
    k_big[16..24].copy_from_slice(&5000u64.to_le_bytes());
    assert!(matches!(
        topk_ef::decode(&reseal(k_big), l),
        Err(CodecError::KExceedsN { .. })
    ));
    let mut n_absurd = good.clone();
    n_absurd[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        topk_ef::decode(&reseal(n_absurd), l),
        Err(CodecError::TooLarge { what: "n", .. })
    ));
    let mut range = good.clone();
    let ranges_at = good.len() - 8 - (50 * 6usize).div_ceil(8) - 8;
    range[ranges_at..ranges_at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    assert!(matches!(
        topk_ef::decode(&reseal(range), l),
        Err(CodecError::NonFinite { .. })
    ));
    for cut in 0..good.len() {
        assert!(
            topk_ef::decode(&good[..cut], l).is_err(),
            "a blob cut at {cut} decodes"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn random_gradients_round_trip(
        values in proptest::collection::vec(-1e3f32..1e3, 1..2000),
        density in 0.001f64..1.0,
        chunk in proptest::option::of(1usize..300),
    ) {
        let n = values.len();
        let f16 = topk_f16::decode(&topk_f16::encode(&values, density, chunk).unwrap(), Limits::default()).unwrap();
        let mut options = topk_ef::Options::new(density);
        options.chunk = chunk;
        let blob = topk_ef::encode(&values, &Layout::flat(n as u64), &options).unwrap();
        let ef = topk_ef::decode(&blob, Limits::default()).unwrap();
        let mut f16_set = f16.indices.clone();
        f16_set.sort_unstable();
        prop_assert_eq!(&f16_set, &ef.indices, "both codecs keep the same entries");
        // Linear quantization between a block's smallest and largest kept magnitude:
        // off by at most half a step, (hi − lo) / (2 × 30) for 6-bit values.
        let largest = ef.indices.iter().map(|i| values[*i as usize].abs()).fold(0f32, f32::max);
        for (i, v) in ef.indices.iter().zip(&ef.values) {
            let truth = values[*i as usize];
            prop_assert!((v - truth).abs() <= largest / 60.0 * 1.001 + 1e-6, "{} vs {}", v, truth);
            prop_assert!(v.signum() == truth.signum() || truth == 0.0);
        }
        for (i, v) in f16.indices.iter().zip(&f16.values) {
            let truth = values[*i as usize];
            prop_assert!((v - truth).abs() <= truth.abs() * 1e-3 + 1e-7);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode(&bytes, Limits::default());
        let _ = topk_f16::decode(&bytes, Limits::default());
        let _ = topk_ef::decode(&bytes, Limits::default());
    }

    #[test]
    fn mutated_blobs_never_panic(at in 0usize..4096, byte in any::<u8>(), reseal_it in any::<bool>()) {
        let values = gradient(500, 9);
        for blob in [
            topk_f16::encode(&values, 0.05, None).unwrap(),
            topk_ef::encode(&values, &Layout::flat(500), &topk_ef::Options::new(0.05)).unwrap(),
        ] {
            let mut bad = blob.clone();
            let at = at % bad.len();
            bad[at] = byte;
            if reseal_it && bad.starts_with(topk_ef::MAGIC) && bad.len() > 8 {
                bad = reseal(bad);
            }
            let _ = codec::decode(&bad, Limits::default());
        }
    }
}
