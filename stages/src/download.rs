//! `download`: fetch a checkpoint or blob from the hub at a pinned revision, from a
//! validator's HTTP endpoint, or from the object store — trying sources in order, verifying
//! the digest, writing atomically, refusing anything over the size cap.

use gradline_engine::Diagnostic;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Port, StageKind};
use gradline_engine::types::Type;
use gradline_engine::value::{ByteSize, Value};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::{DIGEST, REVISION};
use crate::require_resource;

/// Fetch an artifact from the first source that serves it with the right digest.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Download {
    /// Sources, tried in order: `hub` (the pinned revision), `http` (the validator's
    /// `/get-checkpoint`), `store`. Each fallback is logged with its reason.
    #[serde(default = "default_sources")]
    pub from: Vec<Source>,
    /// What is fetched; also the name of the output port.
    #[serde(default, rename = "as")]
    pub artifact: ArtifactKind,
    /// The object: a store key, or a file name in the hub repository.
    pub object: Value<String>,
    /// The hub repository, `owner/name`; defaults to `resources.hub.repo`.
    #[serde(default)]
    pub repo: Option<Value<String>>,
    /// The exact hub revision (a commit SHA), usually the one committed on chain.
    #[serde(default)]
    pub revision: Option<Value<String>>,
    /// The digest the artifact must have; a mismatch fails that source and tries the next.
    #[serde(default)]
    pub digest: Option<Value<String>>,
    /// The largest artifact accepted.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: ByteSize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The model hub, at the pinned revision.
    Hub,
    /// The validator's HTTP checkpoint endpoint (`resources.http`).
    Http,
    /// The object store (`resources.store`).
    Store,
}

/// The kind of artifact fetched.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    #[default]
    Checkpoint,
    Compressed,
    Blob,
    Model,
    Job,
    Receipt,
    Verdicts,
    #[serde(rename = "fragment-state")]
    FragmentState,
}

impl ArtifactKind {
    pub fn port(self) -> (&'static str, Type) {
        let name = match self {
            ArtifactKind::Checkpoint => "checkpoint",
            ArtifactKind::Compressed => "compressed",
            ArtifactKind::Blob => "blob",
            ArtifactKind::Model => "model",
            ArtifactKind::Job => "job",
            ArtifactKind::Receipt => "receipt",
            ArtifactKind::Verdicts => "verdicts",
            ArtifactKind::FragmentState => "fragment-state",
        };
        (name, Type::Named(name))
    }
}

fn default_sources() -> Vec<Source> {
    vec![Source::Hub, Source::Http, Source::Store]
}

fn default_max_bytes() -> ByteSize {
    ByteSize(16 << 30)
}

impl StageKind for Download {
    const NAME: &'static str = "download";
    const DESCRIPTION: &'static str = "Fetch a checkpoint or blob from hub (pinned revision), HTTP or store, in fallback order; verify its digest.";

    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Port> {
        let (name, ty) = self.artifact.port();
        vec![
            Port::new(name, ty, "The verified artifact."),
            Port::new("revision", REVISION, "The revision it was fetched at."),
            Port::new("digest", DIGEST, "Its blake3 digest."),
            Port::new(
                "source",
                Type::Text,
                "Which source served it: hub, http or store.",
            ),
        ]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        if self.from.is_empty() {
            out.push(
                Diagnostic::error("invalid-value", "`from` lists no source")
                    .at(cx.span_of("from"))
                    .hint("e.g. `from: [hub, http, store]`"),
            );
        }
        let r = cx.resources;
        for source in &self.from {
            let (present, resource, what) = match source {
                Source::Hub => (r.hub.is_some(), "hub", "downloading from the hub"),
                Source::Http => (
                    r.http.is_some(),
                    "http",
                    "downloading from the HTTP endpoint",
                ),
                Source::Store => (r.store.is_some(), "store", "downloading from the store"),
            };
            out.extend(require_resource(present, resource, what, cx, "from"));
        }
        let hub_repo = self.repo.is_some() || r.hub.as_ref().is_some_and(|h| h.repo.is_some());
        if self.from.contains(&Source::Hub) && r.hub.is_some() && !hub_repo {
            out.push(
                Diagnostic::error(
                    "missing-setting",
                    "downloading from the hub needs a repository",
                )
                .at(cx.span_of("from"))
                .hint("set `repo:` on this stage or `resources.hub.repo`"),
            );
        }
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let object = cx.render(&self.object);
        let total = self.from.len();
        self.from
            .iter()
            .enumerate()
            .map(|(i, source)| {
                let effect = match source {
                    Source::Hub => {
                        let repo = cx
                            .render_opt(&self.repo)
                            .or_else(|| cx.hub_repo())
                            .unwrap_or_default();
                        let revision = cx.render_opt(&self.revision);
                        let pin = match &revision {
                            Some(_) => "pinned",
                            None => "unpinned: follows main",
                        };
                        let at = revision.unwrap_or_else(|| "main".into());
                        Effect::read("hub", cx.hub(), format!("{repo}@{at}/{object}")).note(pin)
                    }
                    Source::Http => Effect::read("http", cx.http(), "GET /get-checkpoint"),
                    Source::Store => Effect::read("store", cx.store(), object.clone()),
                };
                let mut note = effect
                    .note
                    .clone()
                    .map(|n| format!("{n}; "))
                    .unwrap_or_default();
                note.push_str(&match i {
                    0 if total == 1 => format!("cap {}", self.max_bytes),
                    0 => format!("first of {total} sources, cap {}", self.max_bytes),
                    _ => format!("fallback {} of {total}", i + 1),
                });
                if let Some(d) = cx.render_opt(&self.digest) {
                    note.push_str(&format!("; digest must be {d}"));
                }
                Effect {
                    note: Some(note),
                    ..effect
                }
            })
            .collect()
    }
}
