//! `emit`: write text as a blob artifact — a note, a manifest, a value to hand on.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::artifacts::{BLOB, DIGEST};

/// Write text (with `${{ }}` expressions evaluated) as a blob.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Emit {
    /// The text.
    pub text: Value<String>,
}

impl StageKind for Emit {
    const NAME: &'static str = "emit";
    const DESCRIPTION: &'static str = "Write text as a blob artifact.";

    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("blob", BLOB, "The text as bytes."),
            Port::new("digest", DIGEST, "Its blake3 digest."),
            Port::new("text", Type::Text, "The text."),
        ]
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        vec![Effect::compute(
            None,
            format!("emit {:?}", cx.render(&self.text)),
        )]
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let text = cx.get(&self.text)?;
            let blob = cx.write_artifact("blob", text.clone().into_bytes()).await?;
            Ok(BTreeMap::from([
                ("digest".to_owned(), Val::Str(blob.digest.clone())),
                ("blob".to_owned(), Val::Artifact(blob)),
                ("text".to_owned(), Val::Str(text)),
            ]))
        })
    }
}
