//! `init`: a freshly initialized model (GPT-2's initialization, seeded) as a checkpoint — the
//! first checkpoint of a network, before anyone has trained.

use futures::future::BoxFuture;
use gradline_engine::Diagnostic;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::artifacts::{BLOB, CHECKPOINT, DIGEST};
use crate::merge::write_checkpoint;
use crate::model::{Cpu, checkpoint};
use crate::tensors::TensorSet;
use crate::train::{ModelPreset, ModelShape, check_model, model_config, model_name};

/// Initialize a model.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Init {
    /// The model: a preset, or `custom` with `shape:`.
    #[serde(default)]
    pub model: ModelPreset,
    /// For `model: custom`: the model's shape.
    #[serde(default)]
    pub shape: Option<ModelShape>,
    /// The same seed gives the same weights, byte for byte.
    #[serde(default)]
    pub seed: Value<u64>,
}

/// Burn's backends draw from one seeded generator per process: initializations must not
/// interleave.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl StageKind for Init {
    const NAME: &'static str = "init";
    const DESCRIPTION: &'static str =
        "A freshly initialized model, seeded: a network's first checkpoint.";

    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("checkpoint", CHECKPOINT, "The initialized weights."),
            Port::new("digest", DIGEST, "Their canonical digest."),
            Port::new("contract", BLOB, "Tensor names, shapes and dtypes."),
        ]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        check_model(self.model, self.shape.as_ref(), cx)
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        vec![Effect::compute(
            None,
            format!(
                "initialize {} (seed {})",
                model_name(self.model, self.shape.as_ref()),
                cx.render(&self.seed)
            ),
        )]
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let config = model_config(self.model, self.shape.as_ref())?;
            let seed = cx.get(&self.seed)?;
            let bytes = tokio::task::spawn_blocking(move || {
                let _turn = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
                let device = Default::default();
                <Cpu as burn::tensor::backend::Backend>::seed(&device, seed);
                checkpoint::save(&config.init::<Cpu>(&device)).map(|(bytes, _)| bytes)
            })
            .await
            .map_err(|e| StageError::final_(format!("initialization stopped: {e}")))?
            .map_err(|e| StageError::final_(e.to_string()))?;
            let set = TensorSet::from_safetensors(&bytes)
                .map_err(|e| StageError::final_(e.to_string()))?;
            write_checkpoint(cx, &set).await
        })
    }
}
