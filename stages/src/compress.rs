//! `compress`: encode a gradient with a sparse codec, keeping what was dropped as an
//! error-feedback residual for the next cycle.

use gradline_engine::Diagnostic;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Input, Port, StageKind};
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::{COMPRESSED, DIGEST, GRADIENT};

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
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum Codec {
    /// `[n u32][k u32][k × index u32][k × f16 value]`, little-endian: the window-loop miners' format.
    #[default]
    #[serde(rename = "topk-f16")]
    TopkF16,
    /// gradline's own: sorted delta-coded indices, 8-bit values with a per-block scale, a
    /// header naming the layout, and a checksum.
    #[serde(rename = "topk-delta8")]
    TopkDelta8,
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
        "Encode a gradient (top-K f16, or gradline's smaller codec) with error feedback.";

    fn inputs(&self) -> Vec<Port> {
        vec![Port::new("gradient", GRADIENT, "The gradient to encode.")]
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("compressed", COMPRESSED, "The encoded blob."),
            Port::new("digest", DIGEST, "The blob's blake3 digest."),
            Port::new("bytes", Type::Int, "The blob's size."),
        ]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        match self.density {
            Value::Lit(d) if !(d > 0.0 && d <= 1.0) => vec![
                Diagnostic::error(
                    "invalid-value",
                    format!("`density` is a fraction in (0, 1], got {d}"),
                )
                .at(cx.span_of("density"))
                .hint("0.01 keeps 1% of the values"),
            ],
            _ => Vec::new(),
        }
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let codec = match self.codec {
            Codec::TopkF16 => "topk-f16",
            Codec::TopkDelta8 => "topk-delta8",
        };
        let feedback = if self.error_feedback {
            ", error feedback"
        } else {
            ""
        };
        vec![Effect::compute(
            None,
            format!(
                "encode {codec} at density {}{feedback}",
                cx.render(&self.density)
            ),
        )]
    }
}
