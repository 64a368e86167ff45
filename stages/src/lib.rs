//! gradline's stage kinds. Each kind is one module: its settings struct (doc comments
//! become the JSON Schema), its typed ports, its checks and its outside effects.
//! Adding a kind is one module and one line in [`registry`].

pub mod artifacts;
pub mod assign;
pub mod chain;
pub mod codec;
pub mod commit;
pub mod commitment;
pub mod compress;
pub mod data;
pub mod download;
pub mod emit;
pub mod endpoint;
pub mod evaluate;
pub mod hex;
pub mod hub;
pub mod init;
pub mod live;
pub mod merge;
pub mod miners;
pub mod model;
pub mod publish;
pub mod signed;
pub mod store;
pub mod subtensor;
pub mod tensors;
pub mod tokenize;
pub mod train;
pub mod uid;
pub mod verify;
pub mod wait;
pub mod weights;

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
        .register::<assign::Assign>()
        .register::<emit::Emit>()
        .register::<wait::Wait>()
        .register::<uid::Uid>()
        .register::<init::Init>()
        .register::<tokenize::Tokenize>()
        .register::<evaluate::Evaluate>();
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
            format!(
                "{stage_needs} needs `resources.{resource}`, which this pipeline does not declare"
            ),
        )
        .at(cx.span_of(key))
        .hint(format!(
            "add `{resource}:` under `resources:` (see the README for its embedded default)"
        ))
    })
}

/// The subnet of `resources.chain`, for the chain kinds.
pub(crate) fn chain_netuid(
    cx: &gradline_engine::schedule::StageRun,
) -> Result<u16, gradline_engine::runtime::StageError> {
    match cx.stage_resources().chain.as_ref() {
        Some(chain) => cx.get(&chain.netuid),
        None => Err(gradline_engine::runtime::StageError::final_(
            "this stage needs `resources.chain`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use gradline_engine::types::Type;

    const PIPELINE: &str = "version: 1\nname: t\nrole: validator\nresources:\n  store: { url: \"memory://\" }\n  hub: { endpoint: \"local://hub\", repo: o/r }\n  chain: { url: \"local://chain\", netuid: 1 }\n  keys: { signing: { generated: v } }\nstages:\n  m: { uses: miners }\n  c: { uses: download, with: { from: [hub, store], object: x } }\n  s: { uses: merge, with: { mode: split, checkpoint: \"${{ stages.c.outputs.checkpoint }}\" } }\n  j: { uses: assign, with: { fragments: \"${{ stages.s.outputs.fragments }}\", miners: \"${{ stages.m.outputs.miners }}\", checkpoint: \"${{ stages.c.outputs.checkpoint }}\" } }\n  t: { uses: train, with: { checkpoint: \"${{ stages.c.outputs.checkpoint }}\", uid: 1 } }\n  z: { uses: compress, with: { gradient: \"${{ stages.t.outputs.gradient }}\" } }\n  v: { uses: verify, with: { mode: loss-delta, miners: \"${{ stages.m.outputs.miners }}\", gradients: \"${{ stages.g.outputs.compressed }}\", checkpoint: \"${{ stages.c.outputs.checkpoint }}\" } }\n  g: { uses: download, for_each: \"${{ stages.m.outputs.miners }}\", with: { from: [store], as: compressed, object: \"${{ item.uid }}\" } }\n  p: { uses: publish, with: { target: hub, artifact: \"${{ stages.z.outputs.compressed }}\" } }\n  w: { uses: commit, with: { what: weights, scores: \"${{ stages.v.outputs.scores }}\" } }\n  r: { uses: read-commitment, with: { uid: 0 } }\n  e: { uses: emit, needs: x, with: { text: \"${{ stages.w.outputs.block }}\" } }\n  x: { uses: wait, with: { for: 1s } }\n  u: { uses: uid }\n  i: { uses: init }\n  k: { uses: tokenize }\n  l: { uses: evaluate, with: { checkpoint: \"${{ stages.i.outputs.checkpoint }}\" } }\n";

    #[test]
    fn the_design_kinds_are_registered() {
        let registry = super::registry();
        for kind in [
            "download", "train", "compress", "verify", "merge", "publish", "commit",
        ] {
            assert!(registry.kind(kind).is_some(), "{kind} is not registered");
        }
    }

    #[test]
    fn every_port_type_is_a_registered_type() {
        let registry = super::registry();
        let loaded = gradline_engine::load("t.yaml", PIPELINE, &registry, &[]);
        assert!(!loaded.has_errors(), "{}", loaded.render());
        let pipeline = loaded.pipeline.unwrap();
        let kinds: std::collections::BTreeSet<&str> =
            pipeline.stages.iter().map(|s| s.kind).collect();
        assert_eq!(
            kinds.len(),
            registry.kinds().count(),
            "the fixture should use every kind"
        );
        fn named(ty: &Type) -> Option<&'static str> {
            match ty {
                Type::Named(n) => Some(n),
                Type::List(inner) => named(inner),
                _ => None,
            }
        }
        for stage in &pipeline.stages {
            for port in stage.inputs.iter().chain(&stage.outputs) {
                if let Some(name) = named(&port.ty) {
                    assert!(
                        registry.type_def(name).is_some(),
                        "{}: port {} has unregistered type {name}",
                        stage.id,
                        port.name
                    );
                }
            }
        }
    }
}
