//! Start-up checks of a run: what only the running environment can answer (is a token set,
//! does a resource resolve), asked of every stage before anything is touched.
//!
//! Resource settings are resolved here for the run: params and the process environment are
//! filled in. Values are handed to live faces, never written to plans, logs or tapes.

use serde::de::DeserializeOwned;

use crate::expr::{Origin, Scope, Segment, Val, parse_template};
use crate::graph::Pipeline;
use crate::spec::Resources;
use crate::value::Value;

/// What a kind's start-up check can see.
pub struct Preflight<'a> {
    pub pipeline: &'a Pipeline,
    pub resources: &'a Resources,
    env: &'a dyn Fn(&str) -> Option<String>,
}

/// A stage that cannot start, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct NotReady {
    pub stage: String,
    pub message: String,
}

impl<'a> Preflight<'a> {
    pub fn new(pipeline: &'a Pipeline, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            pipeline,
            resources: &pipeline.spec.resources,
            env,
        }
    }

    /// Whether an environment variable is set to something non-empty.
    pub fn env_is_set(&self, name: &str) -> bool {
        (self.env)(name).is_some_and(|v| !v.trim().is_empty())
    }

    /// A resource setting with params and environment filled in.
    pub fn resolve<T: DeserializeOwned + Clone>(&self, value: &Value<T>) -> Result<T, String> {
        resolve(self.pipeline, value, self.env)
    }
}

/// Asks every stage whether it can start.
pub fn check(pipeline: &Pipeline, env: &dyn Fn(&str) -> Option<String>) -> Vec<NotReady> {
    let cx = Preflight::new(pipeline, env);
    pipeline
        .stages
        .iter()
        .flat_map(|stage| {
            stage
                .settings
                .preflight(&cx)
                .into_iter()
                .map(|message| NotReady {
                    stage: stage.id.clone(),
                    message,
                })
        })
        .collect()
}

/// Blocks per window of the pipeline's chain: `resources.chain.window_blocks` with params
/// filled in, [`DEFAULT_WINDOW_BLOCKS`] when unset; `None` without a chain.
pub fn window_blocks(
    pipeline: &Pipeline,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<u64>, String> {
    let Some(chain) = &pipeline.spec.resources.chain else {
        return Ok(None);
    };
    match &chain.window_blocks {
        Some(value) => resolve::<u32>(pipeline, value, env)
            .map(|n| Some(u64::from(n).max(1)))
            .map_err(|e| format!("resources.chain.window_blocks: {e}")),
        None => Ok(Some(DEFAULT_WINDOW_BLOCKS)),
    }
}

/// Blocks per window when a pipeline's chain does not say.
pub const DEFAULT_WINDOW_BLOCKS: u64 = 10;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A value outside any stage (a resource setting): params and the environment are known;
/// anything else is an error.
pub fn resolve<T: DeserializeOwned + Clone>(
    pipeline: &Pipeline,
    value: &Value<T>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<T, String> {
    let text = match value {
        Value::Lit(v) => return Ok(v.clone()),
        Value::Expr(text) => text,
    };
    let template = parse_template(text, Origin::exact(text.span.start))
        .map_err(|e| format!("`{}`: {}", text.value, e.message))?;
    let val = template.eval(&ResourceScope { pipeline, env });
    if !val.is_known() {
        return Err(format!("`{}` has no value: {val}", text.value));
    }
    serde_json::from_value(val.to_json())
        .map_err(|e| format!("`{}` gives {val}, which does not fit: {e}", text.value))
}

struct ResourceScope<'a> {
    pipeline: &'a Pipeline,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Scope for ResourceScope<'_> {
    fn lookup(&self, path: &[Segment]) -> Val {
        let name = |i: usize| path.get(i).map(|s| s.name.as_str());
        let unknown = || crate::expr::unknown(path);
        match name(0) {
            Some("params") => name(1)
                .and_then(|n| self.pipeline.param(n))
                .and_then(|p| p.value.clone())
                .unwrap_or_else(unknown),
            Some("env") => name(1)
                .and_then(|n| (self.env)(n))
                .map_or(Val::Null, Val::Str),
            _ => unknown(),
        }
    }
}
