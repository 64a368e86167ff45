//! gradline's stage kinds. Each kind is one module: its settings struct (doc comments
//! become the JSON Schema), its typed ports, its checks and its outside effects.
//! Adding a kind is one module and one line in [`registry`].

pub mod artifacts;
pub mod assign;
pub mod commit;
pub mod commitment;
pub mod compress;
pub mod download;
pub mod merge;
pub mod miners;
pub mod publish;
pub mod train;
pub mod verify;

use gradline_engine::Registry;

/// Every kind and artifact type gradline ships.
pub fn registry() -> Registry {
    let mut registry = Registry::new();
    artifacts::register(&mut registry);
    registry
        .register::<download::Download>()
        .register::<train::Train>()
        .register::<compress::Compress>()
        .register::<verify::Verify>()
        .register::<merge::Merge>()
        .register::<publish::Publish>()
        .register::<commit::Commit>()
        .register::<miners::Miners>()
        .register::<commitment::ReadCommitment>()
        .register::<assign::Assign>();
    registry
}

/// An error when a stage needs a resource the pipeline does not declare.
pub(crate) fn require_resource(
    present: bool,
    resource: &str,
    stage_needs: &str,
    cx: &gradline_engine::registry::CheckContext,
    key: &str,
) -> Option<gradline_engine::Diagnostic> {
    (!present).then(|| {
        gradline_engine::Diagnostic::error(
            "missing-resource",
            format!("{stage_needs} needs `resources.{resource}`, which this pipeline does not declare"),
        )
        .at(cx.span_of(key))
        .hint(format!("add `{resource}:` under `resources:` (see the README for its embedded default)"))
    })
}
