//! Any bytes into the topk-ef decoder (re-sealed half the time, so the checks past the
//! checksum are reached): an error or a valid sparse gradient, never a panic.
#![no_main]

use gradline_stages::codec::{Limits, topk_ef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_params: 1 << 24, max_entries: 1 << 20 };
    let mut bytes = data.to_vec();
    if bytes.len() > 8 && bytes[0] & 1 == 1 {
        let body = bytes.len() - 8;
        let checksum = gradline_stages::codec::checksum(&bytes[..body]);
        bytes[body..].copy_from_slice(&checksum);
    }
    if let Ok(sparse) = topk_ef::decode(&bytes, limits) {
        assert!(sparse.indices.windows(2).all(|w| w[0] < w[1]));
        assert!(sparse.indices.iter().all(|&i| (i as u64) < sparse.n));
        assert!(sparse.values.iter().all(|v| v.is_finite()));
    }
});
