//! Gradient codecs: what miners upload and validators decode.
//!
//! - [`topk_f16`]: the window-loop seed format, bit-exact:
//!   `[n u32][k u32][k × index u32][k × f16 value]`, little-endian.
//! - [`topk_ef`]: gradline's own: Elias-Fano indices and log-quantized values, with a
//!   magic, a version, the layout it covers and a checksum; ~3× smaller at the same k.
//!
//! Decoders read blobs from strangers: they never panic, never allocate from a length
//! they have not checked against the blob's size and the caps, and say what is wrong.
//! The specs are in `schemas/codec-topk-f16.md` and `schemas/codec-topk-ef.md`.

pub mod bits;
pub mod select;
pub mod topk_ef;
pub mod topk_f16;

use serde::{Deserialize, Serialize};

/// The tensors a gradient covers, in the parameter contract's order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// `(tensor name, number of elements)`, in order.
    pub tensors: Vec<(String, u64)>,
}

impl Layout {
    /// One unnamed tensor of `n` elements.
    pub fn flat(n: u64) -> Self {
        Self {
            tensors: vec![("flat".into(), n)],
        }
    }

    pub fn numel(&self) -> u64 {
        self.tensors.iter().map(|(_, n)| *n).sum()
    }

    /// blake3 of the canonical JSON of the layout.
    pub fn digest(&self) -> [u8; 32] {
        let json = serde_json::to_string(&self.tensors).unwrap_or_default();
        *blake3::hash(json.as_bytes()).as_bytes()
    }
}

/// Limits on what a decoder accepts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest `n` (parameters covered).
    pub max_params: u64,
    /// The largest `k` (entries).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_params: 1 << 36,
            max_entries: 1 << 30,
        }
    }
}

impl Limits {
    /// A header's `n` and `k` are within the limits, and `k ≤ n`.
    pub fn check(&self, n: u64, k: u64) -> Result<(), CodecError> {
        if n > self.max_params {
            return Err(CodecError::TooLarge {
                what: "n",
                value: n,
                cap: self.max_params,
            });
        }
        if k > n {
            return Err(CodecError::KExceedsN { k, n });
        }
        if k > self.max_entries {
            return Err(CodecError::TooLarge {
                what: "k",
                value: k,
                cap: self.max_entries,
            });
        }
        Ok(())
    }
}

/// A decoded sparse gradient: `values[i]` at `indices[i]` of `n`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sparse {
    pub n: u64,
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
    /// The layout's digest, when the format carries it.
    pub layout_digest: Option<[u8; 32]>,
    /// The layout's names, when the format carries them.
    pub layout: Option<Layout>,
}

impl Sparse {
    /// The dense gradient (zeros where nothing was kept). This allocates `n` values: call
    /// [`Sparse::check_layout`] against the checkpoint's contract first.
    pub fn to_dense(&self) -> Result<Vec<f32>, CodecError> {
        let n = usize::try_from(self.n).map_err(|_| CodecError::TooLarge {
            what: "n",
            value: self.n,
            cap: usize::MAX as u64,
        })?;
        let mut dense = vec![0.0; n];
        for (&i, &v) in self.indices.iter().zip(&self.values) {
            if let Some(slot) = dense.get_mut(i as usize) {
                *slot = v;
            }
        }
        Ok(dense)
    }

    /// Checks the blob covers exactly this layout.
    pub fn check_layout(&self, expected: &Layout) -> Result<(), CodecError> {
        if self.n != expected.numel() {
            return Err(CodecError::LayoutMismatch(format!(
                "the blob covers {} parameters, the checkpoint's contract has {}",
                self.n,
                expected.numel()
            )));
        }
        if let Some(digest) = self.layout_digest
            && digest != expected.digest()
        {
            return Err(CodecError::LayoutMismatch(
                "the blob's tensor layout (names and sizes) differs from the checkpoint's contract"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Why a blob was not accepted (or a gradient not encoded).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("the blob is truncated: {what} needs {need} bytes, {have} remain")]
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    #[error("{0} bytes follow the end of the blob")]
    TrailingBytes(u64),
    #[error("not a {expected} blob (magic {found:02x?})")]
    BadMagic {
        expected: &'static str,
        found: Vec<u8>,
    },
    #[error("format version {0} is not supported (this gradline reads version 1)")]
    UnsupportedVersion(u8),
    #[error("k = {k} exceeds n = {n}")]
    KExceedsN { k: u64, n: u64 },
    #[error("{what} = {value} is over the limit of {cap}")]
    TooLarge {
        what: &'static str,
        value: u64,
        cap: u64,
    },
    #[error("index {index} at entry {entry} is outside 0..{n}")]
    IndexOutOfRange { entry: u64, index: u64, n: u64 },
    #[error("index {index} appears more than once")]
    DuplicateIndex { index: u64 },
    #[error("indices are not strictly increasing at entry {entry}")]
    Unsorted { entry: u64 },
    #[error("value at entry {entry} is {value}, not a finite number")]
    NonFinite { entry: u64, value: String },
    #[error("the checksum does not match: the blob was altered or damaged")]
    ChecksumMismatch,
    #[error("layout mismatch: {0}")]
    LayoutMismatch(String),
    #[error("the header is invalid: {0}")]
    BadHeader(String),
    #[error("the gradient has {value} at index {index}; only finite values can be encoded")]
    NonFiniteInput { index: u64, value: f32 },
}

/// The 8-byte checksum closing a topk-ef blob: the first bytes of blake3 of the rest.
pub fn checksum(body: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&blake3::hash(body).as_bytes()[..8]);
    out
}

/// Which codec a blob is in, by its first bytes.
pub fn sniff(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(topk_ef::MAGIC) {
        topk_ef::NAME
    } else {
        topk_f16::NAME
    }
}

/// Decodes a blob of either codec.
pub fn decode(bytes: &[u8], limits: Limits) -> Result<Sparse, CodecError> {
    match sniff(bytes) {
        topk_ef::NAME => topk_ef::decode(bytes, limits),
        _ => topk_f16::decode(bytes, limits),
    }
}

fn check_finite_input(values: &[f32]) -> Result<(), CodecError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(CodecError::NonFiniteInput {
            index: i as u64,
            value: values[i],
        }),
        None => Ok(()),
    }
}

/// Little-endian reads that never go past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn remaining(&self) -> u64 {
        (self.bytes.len() - self.at) as u64
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<&'a [u8], CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated {
                what,
                need: n,
                have: self.remaining(),
            });
        }
        let start = self.at;
        self.at += n as usize;
        Ok(&self.bytes[start..self.at])
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn f32(&mut self, what: &'static str) -> Result<f32, CodecError> {
        Ok(f32::from_bits(self.u32(what)?))
    }

    fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(CodecError::TrailingBytes(extra)),
        }
    }
}
