//! The artifact and record types that flow between stages.

use gradline_engine::registry::Registry;
use gradline_engine::types::{Type, TypeDef};

pub const CHECKPOINT: Type = Type::Named("checkpoint");
pub const GRADIENT: Type = Type::Named("gradient");
pub const COMPRESSED: Type = Type::Named("compressed");
pub const BLOB: Type = Type::Named("blob");
pub const MODEL: Type = Type::Named("model");
pub const REVISION: Type = Type::Named("revision");
pub const DIGEST: Type = Type::Named("digest");
pub const SCORES: Type = Type::Named("scores");
pub const VERDICTS: Type = Type::Named("verdicts");
pub const RECEIPT: Type = Type::Named("receipt");
pub const JOB: Type = Type::Named("job");
pub const WEIGHTS: Type = Type::Named("weights");
pub const FRAGMENT: Type = Type::Named("fragment");
pub const MINER: Type = Type::Named("miner");
pub const PROMPTS: Type = Type::Named("prompts");
pub const FRAGMENT_STATE: Type = Type::Named("fragment-state");

pub fn register(registry: &mut Registry) {
    for def in [
        TypeDef::artifact(
            "checkpoint",
            "Model weights (safetensors) with their parameter contract and digest.",
        ),
        TypeDef::artifact(
            "gradient",
            "A dense (pseudo-)gradient over the contract's trainable tensors, in contract order.",
        ),
        TypeDef::artifact(
            "compressed",
            "An encoded gradient blob (a codec's wire format).",
        ),
        TypeDef::artifact("blob", "Opaque bytes with a digest."),
        TypeDef::artifact(
            "model",
            "A model repository at a pinned revision (files, config, safetensors headers).",
        ),
        TypeDef::scalar("revision", "A hub commit SHA (or a store version)."),
        TypeDef::scalar("digest", "A blake3 content digest, hex."),
        TypeDef::artifact("scores", "A score per miner uid."),
        TypeDef::artifact(
            "verdicts",
            "Signed verdicts: per miner, the checks passed and failed, with reasons.",
        ),
        TypeDef::artifact(
            "receipt",
            "A miner's signed receipt of the work it produced for a job.",
        ),
        TypeDef::artifact(
            "job",
            "An orchestrator-signed job (JSON): fragment, token shard, checkpoint, deadline.",
        ),
        TypeDef::artifact("weights", "u16 weights per uid, as set on chain."),
        TypeDef::record(
            "fragment",
            "A slice of the trainable tensors of a parameter contract.",
            vec![
                ("index", Type::Int),
                ("tensors", Type::list(Type::Text)),
                ("params", Type::Int),
            ],
        ),
        TypeDef::record(
            "miner",
            "A registered neuron: uid, hotkey, and its latest commitment.",
            vec![
                ("uid", Type::Int),
                ("hotkey", Type::Text),
                ("repo", Type::Text),
                ("revision", REVISION),
                ("digest", DIGEST),
                ("block", Type::Int),
            ],
        ),
        TypeDef::artifact(
            "fragment-state",
            "The absolute values of one fragment's tensors after a miner trained it.",
        ),
        TypeDef::artifact(
            "prompts",
            "Prompts seeded from a block hash, with the teacher's continuations.",
        ),
    ] {
        registry.register_type(def);
    }
}
