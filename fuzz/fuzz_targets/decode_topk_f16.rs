//! Any bytes into the topk-f16 decoder: an error or a valid sparse gradient, never a panic
//! or an allocation beyond the limits.
#![no_main]

use gradline_stages::codec::{Limits, topk_f16};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_params: 1 << 24, max_entries: 1 << 20 };
    if let Ok(sparse) = topk_f16::decode(data, limits) {
        assert!(sparse.indices.len() as u64 <= sparse.n);
        assert!(sparse.indices.iter().all(|&i| (i as u64) < sparse.n));
        assert!(sparse.values.iter().all(|v| v.is_finite()));
    }
});
