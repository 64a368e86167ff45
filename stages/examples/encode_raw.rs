//! Encodes a raw little-endian f32 file as `topk-f16` (or `topk-ef`): for comparing with
//! other implementations of the seed format.
//!
//! `cargo run -p gradline-stages --release --example encode_raw -- IN.f32 DENSITY OUT.bin [topk-ef]`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, density, output, rest @ ..] = args.as_slice() else {
        return Err("usage: encode_raw IN.f32 DENSITY OUT.bin [topk-ef]".into());
    };
    let bytes = std::fs::read(input)?;
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let density: f64 = density.parse()?;
    use gradline_stages::codec::{Layout, topk_ef, topk_f16};
    let blob = match rest.first().map(String::as_str) {
        Some("topk-ef") => topk_ef::encode(
            &values,
            &Layout::flat(values.len() as u64),
            &topk_ef::Options::new(density),
        )?,
        _ => topk_f16::encode(&values, density, None)?,
    };
    std::fs::write(output, blob)?;
    Ok(())
}
