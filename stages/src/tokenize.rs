//! `tokenize`: write a corpus into the store as token shards with an `index.json` — the data
//! every miner's assigned batch is cut from. The corpus is the generated demo corpus in
//! sections (a seed and a size), so a network can be set up with nothing to download.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::Diagnostic;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::artifacts::BLOB;
use crate::data::{INDEX_FILE, Sharder, Tokenizer, sectioned_corpus};
use crate::{require_resource, store};

/// Tokenize a corpus into token shards in the store.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Tokenize {
    /// The store prefix the shards and `index.json` go under.
    #[serde(default = "default_to")]
    pub to: Value<String>,
    /// `bytes` (the tiny model's vocabulary) or `cl100k` (nanogpt-10m's).
    #[serde(default)]
    pub tokenizer: Tokenizer,
    /// About how many bytes of the demo corpus.
    #[serde(default = "default_bytes")]
    pub bytes: Value<u64>,
    /// The demo corpus's seed: another seed, other sentences (a held-out split).
    #[serde(default = "default_seed")]
    pub seed: Value<u64>,
    /// Tokens per shard.
    #[serde(default = "default_shard_tokens")]
    pub shard_tokens: Value<u64>,
}

fn default_to() -> Value<String> {
    Value::Lit("data/shards".into())
}
fn default_bytes() -> Value<u64> {
    Value::Lit(200_000)
}
fn default_seed() -> Value<u64> {
    Value::Lit(1)
}
fn default_shard_tokens() -> Value<u64> {
    Value::Lit(1 << 16)
}

/// The documents the demo corpus is cut into: one per paragraph.
const DOCUMENT_BYTES: usize = 4096;

impl StageKind for Tokenize {
    const NAME: &'static str = "tokenize";
    const DESCRIPTION: &'static str =
        "Tokenize the demo corpus into token shards (and their index) in the store.";

    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("index", BLOB, "The shards' index.json."),
            Port::new("tokens", Type::Int, "Tokens written."),
            Port::new("shards", Type::Int, "Shards written."),
        ]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let mut out: Vec<Diagnostic> = require_resource(
            cx.resources.store.is_some(),
            "store",
            "writing token shards",
            cx,
            "to",
        )
        .into_iter()
        .collect();
        if let Value::Lit(0) = self.shard_tokens {
            out.push(
                Diagnostic::error("invalid-value", "`shard_tokens` must be at least 1")
                    .at(cx.span_of("shard_tokens")),
            );
        }
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let tokenizer = self.tokenizer;
        vec![
            Effect::compute(
                None,
                format!(
                    "tokenize {} bytes of the demo corpus (seed {}) with {tokenizer}",
                    cx.render(&self.bytes),
                    cx.render(&self.seed)
                ),
            ),
            Effect::write(
                "store",
                cx.store(),
                format!("{}/shard_*.bin and {INDEX_FILE}", cx.render(&self.to)),
            ),
        ]
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let to = cx.get(&self.to)?;
            let to = to.trim_end_matches('/');
            let (seed, bytes) = (cx.get(&self.seed)?, cx.get(&self.bytes)? as usize);
            let shard_tokens = cx.get(&self.shard_tokens)?.max(1) as usize;
            let tokenizer = self.tokenizer;
            let (shards, index) = tokio::task::spawn_blocking(move || {
                let corpus = sectioned_corpus(seed, bytes);
                let mut sharder = Sharder::new(tokenizer, shard_tokens);
                let mut shards = Vec::new();
                for document in paragraphs(&corpus) {
                    shards.extend(sharder.push(document));
                }
                let (last, index) = sharder.finish();
                shards.extend(last);
                (shards, index)
            })
            .await
            .map_err(|e| StageError::final_(format!("tokenizing stopped: {e}")))?;
            let total = shards.len() as u64;
            for (done, shard) in shards.into_iter().enumerate() {
                store::put(&cx.effects, &format!("{to}/{}", shard.name), shard.bytes).await?;
                cx.progress(done as u64 + 1, total, "shards written");
            }
            // The index goes last: a reader never finds an index naming a missing shard.
            let json = index.to_json().into_bytes();
            store::put(&cx.effects, &format!("{to}/{INDEX_FILE}"), json.clone()).await?;
            let tokens: u64 = index.shards.iter().map(|s| s.tokens).sum();
            Ok(BTreeMap::from([
                (
                    "index".to_owned(),
                    Val::Artifact(cx.write_artifact("blob", json).await?),
                ),
                ("tokens".to_owned(), Val::Int(tokens as i64)),
                ("shards".to_owned(), Val::Int(total as i64)),
            ]))
        })
    }
}

/// The corpus in documents of about [`DOCUMENT_BYTES`], cut at sentence ends.
fn paragraphs(corpus: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = corpus;
    while rest.len() > DOCUMENT_BYTES {
        let cut = rest.as_bytes()[..DOCUMENT_BYTES]
            .windows(2)
            .rposition(|w| w == b". ")
            .map_or(DOCUMENT_BYTES, |i| i + 2);
        let cut = (1..=cut)
            .rev()
            .find(|&i| rest.is_char_boundary(i))
            .unwrap_or(rest.len());
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}
