//! Little-endian bit packing: bit i of the stream is bit (i % 8) of byte i / 8.

pub struct BitWriter {
    bytes: Vec<u8>,
    pending: u64,
    pending_bits: u32,
}

impl BitWriter {
    pub fn with_capacity_bits(bits: usize) -> Self {
        Self {
            bytes: Vec::with_capacity(bits.div_ceil(8)),
            pending: 0,
            pending_bits: 0,
        }
    }

    /// Appends the low `width` bits of `value` (width ≤ 32).
    pub fn put(&mut self, value: u32, width: u32) {
        let masked = if width == 32 {
            value as u64
        } else {
            (value as u64) & ((1u64 << width) - 1)
        };
        self.pending |= masked << self.pending_bits;
        self.pending_bits += width;
        while self.pending_bits >= 8 {
            self.bytes.push(self.pending as u8);
            self.pending >>= 8;
            self.pending_bits -= 8;
        }
    }

    pub fn into_bytes(mut self) -> Vec<u8> {
        if self.pending_bits > 0 {
            self.bytes.push(self.pending as u8);
        }
        self.bytes
    }
}

/// A fixed-length bit vector, set bit by bit.
pub struct BitSet {
    bytes: Vec<u8>,
}

impl BitSet {
    pub fn with_len_bits(bits: usize) -> Self {
        Self {
            bytes: vec![0; bits.div_ceil(8)],
        }
    }

    /// Sets bit `position`, growing the vector if needed.
    pub fn set(&mut self, position: usize) {
        let need = position / 8 + 1;
        if self.bytes.len() < need {
            self.bytes.resize(need, 0);
        }
        self.bytes[position / 8] |= 1 << (position % 8);
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Reads fixed-width fields from a byte slice; never reads past it.
pub struct BitReader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    /// The next `width` bits, or `None` past the end.
    pub fn get(&mut self, width: u32) -> Option<u32> {
        if self.position + width as usize > self.bytes.len() * 8 {
            return None;
        }
        let mut value = 0u32;
        for b in 0..width {
            let p = self.position + b as usize;
            if (self.bytes[p / 8] >> (p % 8)) & 1 == 1 {
                value |= 1 << b;
            }
        }
        self.position += width as usize;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_mixed_widths() {
        let mut w = BitWriter::with_capacity_bits(64);
        w.put(5, 3);
        w.put(0x3ff, 10);
        w.put(1, 1);
        let bytes = w.into_bytes();
        let mut r = BitReader::new(&bytes);
        assert_eq!(
            (r.get(3), r.get(10), r.get(1)),
            (Some(5), Some(0x3ff), Some(1))
        );
        assert_eq!(r.get(8), None);
    }
}
