//! `topk-ef`, gradline's own sparse-gradient format: the same top-k as `topk-f16`, about
//! three times smaller. Indices are sorted and Elias-Fano coded (≈ 2 + log2(n/k) bits each,
//! near the information-theoretic minimum); each value is a sign and a magnitude quantized
//! linearly between its block's smallest and largest kept magnitude (6 bits by default).
//! Top-k keeps only magnitudes above a threshold, so blocks span a narrow range and the
//! error is small (≤ (hi − lo) / 60 per value). The header names the layout it covers; a
//! blake3 checksum closes the blob. Spec: `schemas/codec-topk-ef.md`.

use super::bits::{BitReader, BitSet, BitWriter};
use super::{CodecError, Cursor, Layout, Limits, Sparse, check_finite_input, select};

pub const NAME: &str = "topk-ef";
pub const MAGIC: &[u8; 4] = b"GLEF";
pub const VERSION: u8 = 1;
/// Bits per value, the sign included.
pub const DEFAULT_VALUE_BITS: u8 = 6;
/// Values sharing one magnitude range.
pub const BLOCK: u32 = 256;
const FLAG_CHUNKED: u8 = 1;
const FLAG_NAMES: u8 = 2;
const CHECKSUM_LEN: u64 = 8;
const MAX_NAMES_BYTES: u64 = 16 << 20;

/// How to encode.
#[derive(Clone, Debug)]
pub struct Options {
    pub density: f64,
    /// Select per chunk of this many values instead of globally.
    pub chunk: Option<usize>,
    pub value_bits: u8,
    /// Write the tensor names and sizes, not only their digest.
    pub names: bool,
}

impl Options {
    pub fn new(density: f64) -> Self {
        Self {
            density,
            chunk: None,
            value_bits: DEFAULT_VALUE_BITS,
            names: false,
        }
    }
}

/// The lower-bits width Elias-Fano uses for k sorted values below n.
fn low_bits(n: u64, k: u64) -> u32 {
    if k == 0 || n / k < 2 {
        0
    } else {
        (n / k).ilog2().min(31)
    }
}

fn high_bits_len(n: u64, k: u64, low: u32) -> u64 {
    if k == 0 { 0 } else { ((n - 1) >> low) + k }
}

fn checked(parts: &[u64]) -> Option<u64> {
    parts.iter().try_fold(0u64, |acc, &p| acc.checked_add(p))
}

pub fn encode(values: &[f32], layout: &Layout, options: &Options) -> Result<Vec<u8>, CodecError> {
    let n = values.len() as u64;
    if layout.numel() != n {
        return Err(CodecError::LayoutMismatch(format!(
            "the gradient has {n} values, its layout covers {}",
            layout.numel()
        )));
    }
    if !(2..=8).contains(&options.value_bits) {
        return Err(CodecError::BadHeader(format!(
            "value bits must be 2..=8, not {}",
            options.value_bits
        )));
    }
    check_finite_input(values)?;
    let mut indices = match options.chunk {
        Some(c) => select::top_k_chunked(values, options.density, c),
        None => select::top_k(values, select::k_for(options.density, values.len())),
    };
    indices.sort_unstable();
    let k = indices.len() as u64;
    let low = low_bits(n, k);

    let mut out = Vec::with_capacity(64 + (k as usize) * 2);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let mut flags = 0;
    if options.chunk.is_some() {
        flags |= FLAG_CHUNKED;
    }
    if options.names {
        flags |= FLAG_NAMES;
    }
    out.push(flags);
    out.push(options.value_bits);
    out.push(low as u8);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&k.to_le_bytes());
    out.extend_from_slice(&BLOCK.to_le_bytes());
    out.extend_from_slice(&layout.digest());
    if options.names {
        let names = serde_json::to_vec(layout).unwrap_or_default();
        out.extend_from_slice(&(names.len() as u32).to_le_bytes());
        out.extend_from_slice(&names);
    }

    let mut lows = BitWriter::with_capacity_bits((k * low as u64) as usize);
    let mut highs = BitSet::with_len_bits(high_bits_len(n, k, low) as usize);
    for (i, &x) in indices.iter().enumerate() {
        lows.put(x & ((1u64 << low) - 1) as u32, low);
        highs.set((x as u64 >> low) as usize + i);
    }
    let mut low_bytes = lows.into_bytes();
    low_bytes.resize((k * low as u64).div_ceil(8) as usize, 0);
    let mut high_bytes = highs.into_bytes();
    high_bytes.resize(high_bits_len(n, k, low).div_ceil(8) as usize, 0);
    out.extend_from_slice(&low_bytes);
    out.extend_from_slice(&high_bytes);

    let kept: Vec<f32> = indices.iter().map(|&i| values[i as usize]).collect();
    let levels = (1u32 << (options.value_bits - 1)) - 1;
    let mut codes = BitWriter::with_capacity_bits(kept.len() * options.value_bits as usize);
    for block in kept.chunks(BLOCK as usize) {
        let (lo, hi) = magnitude_range(block);
        out.extend_from_slice(&lo.to_le_bytes());
        out.extend_from_slice(&hi.to_le_bytes());
        for &v in block {
            let sign = u32::from(v.is_sign_negative() && v != 0.0);
            codes.put(
                sign << (options.value_bits - 1) | quantize(v.abs(), lo, hi, levels),
                options.value_bits as u32,
            );
        }
    }
    let mut code_bytes = codes.into_bytes();
    code_bytes.resize((k * options.value_bits as u64).div_ceil(8) as usize, 0);
    out.extend_from_slice(&code_bytes);
    let checksum = super::checksum(&out);
    out.extend_from_slice(&checksum);
    Ok(out)
}

/// The smallest non-zero and the largest magnitude of a block.
fn magnitude_range(block: &[f32]) -> (f32, f32) {
    let hi = block.iter().fold(0f32, |m, v| m.max(v.abs()));
    let lo = block
        .iter()
        .map(|v| v.abs())
        .filter(|&m| m > 0.0)
        .fold(f32::INFINITY, f32::min);
    if lo.is_finite() { (lo, hi) } else { (0.0, 0.0) }
}

/// 0 for zero; otherwise 1..=levels, evenly spaced from lo (1) to hi (levels).
fn quantize(magnitude: f32, lo: f32, hi: f32, levels: u32) -> u32 {
    if magnitude == 0.0 {
        return 0;
    }
    if levels == 1 || hi <= lo {
        return levels;
    }
    let t = (magnitude as f64 - lo as f64) / (hi as f64 - lo as f64);
    (1 + (t * (levels - 1) as f64).round() as i64).clamp(1, levels as i64) as u32
}

fn dequantize(code: u32, lo: f32, hi: f32, levels: u32) -> f32 {
    if code == 0 {
        return 0.0;
    }
    if levels == 1 || hi <= lo {
        return hi;
    }
    let t = (code - 1) as f64 / (levels - 1) as f64;
    (lo as f64 + t * (hi as f64 - lo as f64)) as f32
}

pub fn decode(bytes: &[u8], limits: Limits) -> Result<Sparse, CodecError> {
    let mut c = Cursor::new(bytes);
    let magic = c.take(4, "the magic")?;
    if magic != MAGIC {
        return Err(CodecError::BadMagic {
            expected: NAME,
            found: magic.to_vec(),
        });
    }
    let version = c.u8("the version")?;
    if version != VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let flags = c.u8("the flags")?;
    if flags & !(FLAG_CHUNKED | FLAG_NAMES) != 0 {
        return Err(CodecError::BadHeader(format!("unknown flags {flags:#04x}")));
    }
    let value_bits = c.u8("the value width")?;
    if !(2..=8).contains(&value_bits) {
        return Err(CodecError::BadHeader(format!(
            "value bits must be 2..=8, not {value_bits}"
        )));
    }
    let low = c.u8("the index width")? as u32;
    let n = c.u64("n")?;
    let k = c.u64("k")?;
    let block = c.u32("the block size")?;
    limits.check(n, k)?;
    if block == 0 || block > 1 << 16 {
        return Err(CodecError::BadHeader(format!(
            "block size {block} is outside 1..=65536"
        )));
    }
    if low != low_bits(n, k) {
        return Err(CodecError::BadHeader(format!(
            "index width {low} is not the canonical {}",
            low_bits(n, k)
        )));
    }
    // Everything the header implies must be exactly what follows: check before allocating.
    let digest_len = 32;
    let blocks = k.div_ceil(block as u64);
    let fixed = checked(&[
        digest_len,
        (k * low as u64).div_ceil(8),
        high_bits_len(n, k, low).div_ceil(8),
        blocks * 8,
        (k * value_bits as u64).div_ceil(8),
        CHECKSUM_LEN,
    ])
    .ok_or(CodecError::TooLarge {
        what: "section sizes",
        value: u64::MAX,
        cap: u64::MAX,
    })?;
    if fixed > c.remaining() {
        return Err(CodecError::Truncated {
            what: "the sections the header announces",
            need: fixed,
            have: c.remaining(),
        });
    }
    let body_end = bytes.len() - CHECKSUM_LEN as usize;
    if bytes[body_end..] != super::checksum(&bytes[..body_end]) {
        return Err(CodecError::ChecksumMismatch);
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(c.take(digest_len, "the layout digest")?);
    let layout = if flags & FLAG_NAMES != 0 {
        let len = c.u32("the names' length")? as u64;
        if len > MAX_NAMES_BYTES {
            return Err(CodecError::TooLarge {
                what: "the names' length",
                value: len,
                cap: MAX_NAMES_BYTES,
            });
        }
        let names = c.take(len, "the names")?;
        let layout: Layout = serde_json::from_slice(names)
            .map_err(|e| CodecError::BadHeader(format!("the layout names are not valid: {e}")))?;
        if layout.digest() != digest || layout.numel() != n {
            return Err(CodecError::BadHeader(
                "the layout names do not match the layout digest".into(),
            ));
        }
        Some(layout)
    } else {
        None
    };
    let low_bytes = c.take((k * low as u64).div_ceil(8), "the low index bits")?;
    let high_bytes = c.take(high_bits_len(n, k, low).div_ceil(8), "the high index bits")?;
    let scale_bytes = c.take(blocks * 8, "the block ranges")?;
    let code_bytes = c.take((k * value_bits as u64).div_ceil(8), "the values")?;
    c.take(CHECKSUM_LEN, "the checksum")?;
    c.finish()?;

    let indices = decode_indices(n, k, low, low_bytes, high_bytes)?;
    let mut ranges = Cursor::new(scale_bytes);
    let mut codes = BitReader::new(code_bytes);
    let levels = (1u32 << (value_bits - 1)) - 1;
    let mut values = Vec::with_capacity(k as usize);
    for b in 0..blocks {
        let lo = ranges.f32("a block range")?;
        let hi = ranges.f32("a block range")?;
        if !(lo.is_finite() && hi.is_finite() && lo >= 0.0 && lo <= hi) {
            return Err(CodecError::NonFinite {
                entry: b * block as u64,
                value: format!("block range [{lo}, {hi}]"),
            });
        }
        let count = (k - b * block as u64).min(block as u64);
        for _ in 0..count {
            let code = codes.get(value_bits as u32).ok_or(CodecError::Truncated {
                what: "the values",
                need: 1,
                have: 0,
            })?;
            let magnitude = dequantize(code & levels, lo, hi, levels);
            values.push(if code >> (value_bits - 1) == 1 {
                -magnitude
            } else {
                magnitude
            });
        }
    }
    Ok(Sparse {
        n,
        indices,
        values,
        layout_digest: Some(digest),
        layout,
    })
}

fn decode_indices(
    n: u64,
    k: u64,
    low: u32,
    low_bytes: &[u8],
    high_bytes: &[u8],
) -> Result<Vec<u32>, CodecError> {
    if n > u32::MAX as u64 + 1 && k > 0 {
        return Err(CodecError::TooLarge {
            what: "n (indices are 32-bit)",
            value: n,
            cap: u32::MAX as u64 + 1,
        });
    }
    let mut lows = BitReader::new(low_bytes);
    let mut indices = Vec::with_capacity(k as usize);
    let high_len = high_bits_len(n, k, low);
    let mut previous: Option<u64> = None;
    for position in 0..high_len {
        if (high_bytes[(position / 8) as usize] >> (position % 8)) & 1 == 0 {
            continue;
        }
        let entry = indices.len() as u64;
        if entry == k {
            return Err(CodecError::BadHeader(format!(
                "the index bits hold more than k = {k} entries"
            )));
        }
        let high = position - entry;
        let low_part = lows.get(low).ok_or(CodecError::Truncated {
            what: "the low index bits",
            need: 1,
            have: 0,
        })? as u64;
        let index = (high << low) | low_part;
        if index >= n {
            return Err(CodecError::IndexOutOfRange { entry, index, n });
        }
        if previous.is_some_and(|p| index <= p) {
            return Err(CodecError::Unsorted { entry });
        }
        previous = Some(index);
        indices.push(index as u32);
    }
    if (indices.len() as u64) < k {
        return Err(CodecError::BadHeader(format!(
            "the index bits hold {} entries, k = {k}",
            indices.len()
        )));
    }
    Ok(indices)
}
