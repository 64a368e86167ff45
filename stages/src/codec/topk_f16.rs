//! The window-loop seed format, bit-exact: `[n u32][k u32][k × index u32][k × f16 value]`,
//! little-endian. Entries are written largest magnitude first (ties: smaller index first);
//! decoders accept any order but no duplicate.

use half::f16;

use super::{CodecError, Cursor, Limits, Sparse, check_finite_input, select};

pub const NAME: &str = "topk-f16";

/// Encodes the `ceil(density × n)` largest magnitudes (or, with `chunk`, that fraction of
/// each chunk). Values beyond f16's range are clamped to ±65504.
pub fn encode(values: &[f32], density: f64, chunk: Option<usize>) -> Result<Vec<u8>, CodecError> {
    check_finite_input(values)?;
    let n = u32::try_from(values.len()).map_err(|_| CodecError::TooLarge {
        what: "n",
        value: values.len() as u64,
        cap: u32::MAX as u64,
    })?;
    let picked = match chunk {
        Some(c) => select::top_k_chunked(values, density, c),
        None => select::top_k(values, select::k_for(density, values.len())),
    };
    Ok(write(n, &picked, values))
}

/// Writes chosen entries in the given order.
pub fn write(n: u32, indices: &[u32], values: &[f32]) -> Vec<u8> {
    let k = indices.len();
    let mut out = Vec::with_capacity(8 + 6 * k);
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&(k as u32).to_le_bytes());
    for &i in indices {
        out.extend_from_slice(&i.to_le_bytes());
    }
    for &i in indices {
        let v = values[i as usize].clamp(-f16::MAX.to_f32(), f16::MAX.to_f32());
        out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    }
    out
}

pub fn decode(bytes: &[u8], limits: Limits) -> Result<Sparse, CodecError> {
    let mut c = Cursor::new(bytes);
    let n = c.u32("the header's n")? as u64;
    let k = c.u32("the header's k")? as u64;
    limits.check(n, k)?;
    let index_bytes = c.take(4 * k, "the indices")?;
    let value_bytes = c.take(2 * k, "the values")?;
    c.finish()?;
    let indices: Vec<u32> = index_bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for (entry, &i) in indices.iter().enumerate() {
        if i as u64 >= n {
            return Err(CodecError::IndexOutOfRange {
                entry: entry as u64,
                index: i as u64,
                n,
            });
        }
    }
    let mut sorted = indices.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(CodecError::DuplicateIndex { index: w[0] as u64 });
    }
    let mut values = Vec::with_capacity(k as usize);
    for (entry, b) in value_bytes.chunks_exact(2).enumerate() {
        let v = f16::from_le_bytes([b[0], b[1]]);
        if !v.is_finite() {
            return Err(CodecError::NonFinite {
                entry: entry as u64,
                value: v.to_string(),
            });
        }
        values.push(v.to_f32());
    }
    Ok(Sparse {
        n,
        indices,
        values,
        layout_digest: None,
        layout: None,
    })
}
