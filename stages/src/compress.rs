//! `compress`: encode a gradient with a sparse codec, keeping what was dropped as an
//! error-feedback residual for the next cycle.
//!
//! With error feedback on, the residual of the previous cycle (this stage's own `residual`
//! output, read through the scheduler's cycle state) is added to the gradient before
//! selection, and what the blob does not carry — `gradient + residual − decoded` — becomes
//! the next residual.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::Diagnostic;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Input, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::{COMPRESSED, DIGEST, GRADIENT};
use crate::codec::{self, Limits, topk_ef, topk_f16};
use crate::tensors::TensorSet;

/// Encode a gradient for upload.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Compress {
    /// The gradient to encode.
    pub gradient: Input,
    /// The wire format.
    #[serde(default)]
    pub codec: Codec,
    /// The fraction of values kept: k = ceil(density × n).
    #[serde(default = "default_density")]
    pub density: Value<f64>,
    /// Select top-k per block of this many values instead of over the whole tensor set.
    #[serde(default)]
    pub chunk: Option<Value<u32>>,
    /// Add last cycle's residual before selecting, and keep what is dropped now.
    #[serde(default = "yes")]
    pub error_feedback: bool,
    /// `topk-ef`: write the tensor names and sizes into the blob, not only their digest.
    #[serde(default)]
    pub layout_names: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Codec {
    /// `[n u32][k u32][k × index u32][k × f16 value]`, little-endian: the window-loop miners' format.
    #[default]
    #[serde(rename = "topk-f16")]
    TopkF16,
    /// gradline's own, ~3× smaller: Elias-Fano indices, 6-bit values with a per-block range,
    /// the layout it covers, and a checksum (`schemas/codec-topk-ef.md`).
    #[serde(rename = "topk-ef")]
    TopkEf,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::TopkF16 => topk_f16::NAME,
            Codec::TopkEf => topk_ef::NAME,
        }
    }
}

fn default_density() -> Value<f64> {
    Value::Lit(0.01)
}

fn yes() -> bool {
    true
}

impl StageKind for Compress {
    const NAME: &'static str = "compress";
    const DESCRIPTION: &'static str =
        "Encode a gradient (top-K f16, or gradline's smaller topk-ef) with error feedback.";

    fn inputs(&self) -> Vec<Port> {
        vec![Port::new("gradient", GRADIENT, "The gradient to encode.")]
    }

    fn outputs(&self) -> Vec<Port> {
        let mut ports = vec![
            Port::new("compressed", COMPRESSED, "The encoded blob."),
            Port::new("digest", DIGEST, "The blob's blake3 digest."),
            Port::new("bytes", Type::Int, "The blob's size."),
        ];
        if self.error_feedback {
            ports.push(Port::new(
                "residual",
                GRADIENT,
                "What the blob does not carry, added next cycle.",
            ));
        }
        ports
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        if let Value::Lit(d) = self.density
            && !(d > 0.0 && d <= 1.0)
        {
            out.push(
                Diagnostic::error(
                    "invalid-value",
                    format!("`density` is a fraction in (0, 1], got {d}"),
                )
                .at(cx.span_of("density"))
                .hint("0.01 keeps 1% of the values"),
            );
        }
        if let Some(Value::Lit(0)) = self.chunk {
            out.push(
                Diagnostic::error("invalid-value", "`chunk` must be at least 1")
                    .at(cx.span_of("chunk")),
            );
        }
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let feedback = if self.error_feedback {
            ", error feedback"
        } else {
            ""
        };
        let chunk = cx
            .render_opt(&self.chunk)
            .map(|c| format!(" per chunk of {c}"))
            .unwrap_or_default();
        vec![Effect::compute(
            None,
            format!(
                "encode {} at density {}{chunk}{feedback}",
                self.codec.name(),
                cx.render(&self.density)
            ),
        )]
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let density = cx.get(&self.density)?;
            if !(density > 0.0 && density <= 1.0) {
                return Err(StageError::final_(format!(
                    "`density` is a fraction in (0, 1], got {density}"
                )));
            }
            let chunk = match &self.chunk {
                Some(c) => Some(cx.get(c)?.max(1) as usize),
                None => None,
            };
            let gradient = read_tensors(cx, &cx.input(&self.gradient)?)
                .await
                .map_err(|e| e.context("reading the gradient"))?;
            let mut set = gradient;
            if self.error_feedback
                && let Some(Val::Artifact(residual)) =
                    cx.previous().and_then(|p| p.get("residual").cloned())
            {
                let residual = read_tensors(cx, &Val::Artifact(residual)).await?;
                if residual.layout == set.layout {
                    set.values
                        .iter_mut()
                        .zip(&residual.values)
                        .for_each(|(g, r)| *g += r);
                } else {
                    tracing::warn!(stage = %cx.stage().id, "the residual's layout differs from the gradient's: starting a fresh residual");
                }
            }
            let (codec, names, feedback) = (self.codec, self.layout_names, self.error_feedback);
            let (blob, residual) = tokio::task::spawn_blocking(move || {
                encode(codec, &set, density, chunk, names, feedback)
            })
            .await
            .map_err(|e| StageError::final_(format!("encoding: {e}")))??;
            let bytes = blob.len() as i64;
            let compressed = cx.write_artifact("compressed", blob).await?;
            let mut outputs = BTreeMap::from([
                ("digest".to_owned(), Val::Str(compressed.digest.clone())),
                ("bytes".to_owned(), Val::Int(bytes)),
                ("compressed".to_owned(), Val::Artifact(compressed)),
            ]);
            if let Some(residual) = residual {
                let file = residual
                    .to_safetensors("residual")
                    .map_err(|e| StageError::final_(e.to_string()))?;
                outputs.insert(
                    "residual".into(),
                    Val::Artifact(cx.write_artifact("gradient", file).await?),
                );
            }
            Ok(outputs)
        })
    }
}

/// Encodes, and with feedback returns what the blob does not carry.
fn encode(
    codec: Codec,
    set: &TensorSet,
    density: f64,
    chunk: Option<usize>,
    names: bool,
    feedback: bool,
) -> Result<(Vec<u8>, Option<TensorSet>), StageError> {
    let blob = match codec {
        Codec::TopkF16 => topk_f16::encode(&set.values, density, chunk),
        Codec::TopkEf => {
            let options = topk_ef::Options {
                chunk,
                names,
                ..topk_ef::Options::new(density)
            };
            topk_ef::encode(&set.values, &set.layout, &options)
        }
    }
    .map_err(|e| StageError::final_(e.to_string()))?;
    if !feedback {
        return Ok((blob, None));
    }
    let sent = codec::decode(&blob, Limits::default())
        .map_err(|e| StageError::final_(format!("re-reading the blob: {e}")))?;
    let mut residual = set.clone();
    for (&i, &v) in sent.indices.iter().zip(&sent.values) {
        residual.values[i as usize] -= v;
    }
    Ok((blob, Some(residual)))
}

async fn read_tensors(cx: &StageRun, value: &Val) -> Result<TensorSet, StageError> {
    let Val::Artifact(artifact) = value else {
        return Err(StageError::final_(format!(
            "expected a gradient artifact, got {value}"
        )));
    };
    let bytes = cx.read_artifact(artifact).await?;
    TensorSet::from_safetensors(&bytes).map_err(|e| StageError::final_(e.to_string()))
}
