//! `wait`: pause before the stages that need it — let a window settle before fetching
//! uploads, or pace a loop.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::value::{Duration, Value};
use schemars::JsonSchema;
use serde::Deserialize;

/// Wait a while; stages that need it start after.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wait {
    /// How long.
    #[serde(rename = "for")]
    pub duration: Value<Duration>,
}

impl StageKind for Wait {
    const NAME: &'static str = "wait";
    const DESCRIPTION: &'static str = "Wait a while before the stages that need this one.";

    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Port> {
        Vec::new()
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        vec![Effect::compute(
            None,
            format!("wait {}", cx.render(&self.duration)),
        )]
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let duration = cx.get(&self.duration)?;
            let total = duration.0.as_millis() as u64;
            let step = std::time::Duration::from_millis(250)
                .min(duration.0.max(std::time::Duration::from_millis(1)));
            let started = tokio::time::Instant::now();
            while started.elapsed() < duration.0 {
                tokio::time::sleep(step.min(duration.0 - started.elapsed())).await;
                cx.progress(started.elapsed().as_millis() as u64, total, "waiting");
            }
            Ok(BTreeMap::new())
        })
    }
}
