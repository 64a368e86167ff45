//! `gradline inspect FILE`: what an artifact is, or why it is not valid.

use std::path::Path;

use gradline_stages::codec::{self, CodecError, Limits, topk_ef};

/// Describes a gradient blob; `Err` says why the file is not a valid one.
pub fn inspect(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let codec = codec::sniff(&bytes);
    let sparse = codec::decode(&bytes, Limits::default()).map_err(|e| explain(codec, &e))?;
    let k = sparse.indices.len() as u64;
    let mut out = format!("file      {} ({} bytes)\n", path.display(), bytes.len());
    out += &format!(
        "codec     {codec}{}\n",
        if codec == topk_ef::NAME { " v1" } else { "" }
    );
    out += &format!("n         {} parameters\n", sparse.n);
    let density = if sparse.n > 0 {
        k as f64 / sparse.n as f64
    } else {
        0.0
    };
    out += &format!("k         {k} entries (density {density:.4})\n");
    out += &match (&sparse.layout, sparse.layout_digest) {
        (Some(layout), _) => {
            let names: Vec<String> = layout
                .tensors
                .iter()
                .map(|(n, c)| format!("{n} {c}"))
                .collect();
            format!(
                "layout    {} tensors: {}\n",
                layout.tensors.len(),
                names.join(", ")
            )
        }
        (None, Some(d)) => format!("layout    digest {} (names not in the blob)\n", hex(&d)),
        (None, None) => {
            "layout    not in this format: check n against the checkpoint's contract\n".into()
        }
    };
    if !sparse.values.is_empty() {
        let min = sparse.values.iter().copied().fold(f32::INFINITY, f32::min);
        let max = sparse
            .values
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        let mean_abs = sparse.values.iter().map(|v| v.abs() as f64).sum::<f64>() / k as f64;
        out += &format!("values    min {min:e}, max {max:e}, mean |v| {mean_abs:e}\n");
    }
    out += match codec {
        topk_ef::NAME => "checksum  ok\n",
        _ => "checksum  none in this format\n",
    };
    if sparse.n > 0 {
        let dense = sparse.n * 4;
        out += &format!(
            "size      {:.1}× smaller than dense f32",
            dense as f64 / bytes.len() as f64
        );
        if codec == topk_ef::NAME && k > 0 {
            out += &format!(
                ", {:.1}× smaller than topk-f16 at this k",
                (8 + 6 * k) as f64 / bytes.len() as f64
            );
        }
        out.push('\n');
    }
    Ok(out)
}

fn explain(codec: &str, error: &CodecError) -> String {
    match codec {
        topk_ef::NAME => format!("invalid topk-ef blob: {error}"),
        // topk-f16 has no magic: a file that does not parse may be something else entirely.
        _ => format!(
            "not a valid gradient blob: it has no topk-ef magic, and read as topk-f16: {error}"
        ),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + "…"
}
