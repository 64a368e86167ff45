//! gradline's engine: pipeline specs, diagnostics, typed DAGs, plans and schemas.
//!
//! It knows nothing of training, hubs or chains: stage kinds are registered into a
//! [`Registry`] by the `gradline-stages` crate, and the CLI wires the two together.
//!
//! ```text
//! text ──parse_yaml──▶ Node ──PipelineSpec::from_node──▶ spec ──compile──▶ Pipeline ──▶ Plan
//! ```

pub mod diag;
pub mod effects;
pub mod expr;
pub mod graph;
pub mod journal;
pub mod node;
pub mod params;
pub mod plan;
pub mod preflight;
pub mod registry;
pub mod runtime;
pub mod schedule;
pub mod schema;
pub mod source;
pub mod spec;
pub mod types;
pub mod value;

use std::sync::Arc;

pub use diag::{Diagnostic, Severity};
pub use graph::Pipeline;
pub use params::Override;
pub use plan::Plan;
pub use registry::{Registry, StageKind};
pub use source::{SourceFile, Span};

/// The outcome of loading one file: the checked pipeline when it has no errors, and
/// every finding (errors and warnings), in file order.
pub struct Loaded {
    pub file: Arc<SourceFile>,
    pub pipeline: Option<Pipeline>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// Every finding rendered against the file.
    pub fn render(&self) -> String {
        self.diagnostics
            .iter()
            .map(|d| d.render(&self.file))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The plan, when the pipeline loaded; `env` says which environment variables are set.
    pub fn plan(&self, env: plan::EnvProbe) -> Option<Plan> {
        let warnings = self
            .diagnostics
            .iter()
            .filter(|d| !d.is_error())
            .map(|d| {
                let at = d.span.map(|s| self.file.line_col(s.start));
                match at {
                    Some(lc) => format!("{}:{}:{}: {}", self.file.name, lc.line, lc.col, d.message),
                    None => format!("{}: {}", self.file.name, d.message),
                }
            })
            .collect();
        self.pipeline
            .as_ref()
            .map(|p| Plan::build(p, warnings, env))
    }
}

/// Parses, reads and compiles one pipeline file.
pub fn load(name: &str, text: &str, registry: &Registry, overrides: &[Override]) -> Loaded {
    let file = SourceFile::new(name, text);
    let mut diagnostics = Vec::new();
    let mut pipeline = None;
    match node::parse_yaml(&file) {
        Err(d) => diagnostics.push(d),
        Ok(root) => {
            if let Some(spec) = spec::PipelineSpec::from_node(&root, &mut diagnostics) {
                let (compiled, found) = graph::compile(file.clone(), spec, registry, overrides);
                diagnostics.extend(found);
                pipeline = compiled;
            }
        }
    }
    diagnostics.sort_by_key(|d| (d.span.map_or(0, |s| s.start), d.severity));
    Loaded {
        file,
        pipeline,
        diagnostics,
    }
}
