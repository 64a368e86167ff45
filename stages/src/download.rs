//! `download`: fetch a checkpoint or blob from the hub at a pinned revision, from a
//! validator's HTTP endpoint, or from the object store — trying sources in order, verifying
//! the digest, writing atomically, refusing anything over the size cap.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::Diagnostic;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError, digest_of};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_engine::value::{ByteSize, Value};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::{DIGEST, REVISION};
use crate::{endpoint, hub, require_resource, store};

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

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Hub => "hub",
            Source::Http => "http",
            Source::Store => "store",
        }
    }
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
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let object = cx.get(&self.object)?;
            let expected = match &self.digest {
                Some(d) => Some(normalize_digest(&cx.get(d)?)?),
                None => None,
            };
            let mut failures: Vec<(Source, StageError)> = Vec::new();
            for (i, &source) in self.from.iter().enumerate() {
                cx.progress(
                    i as u64,
                    self.from.len() as u64,
                    format!("{object} from {}", source.name()),
                );
                let fetched =
                    self.fetch(cx, source, &object)
                        .await
                        .and_then(|(bytes, revision)| {
                            check_digest(bytes, expected.as_deref()).map(|b| (b, revision))
                        });
                match fetched {
                    Ok((bytes, revision)) => {
                        if !failures.is_empty() {
                            tracing::warn!(stage = %cx.stage().id, source = source.name(), "{object} served by the fallback `{}`", source.name());
                        }
                        let (port, _) = self.artifact.port();
                        let artifact = cx.write_artifact(port, bytes).await?;
                        return Ok(BTreeMap::from([
                            ("digest".to_owned(), Val::Str(artifact.digest.clone())),
                            (port.to_owned(), Val::Artifact(artifact)),
                            ("revision".to_owned(), Val::Str(revision)),
                            ("source".to_owned(), Val::Str(source.name().to_owned())),
                        ]));
                    }
                    Err(e) => {
                        match self.from.get(i + 1) {
                            Some(next) => tracing::warn!(
                                stage = %cx.stage().id,
                                source = source.name(),
                                "{} failed for {object}: {}; falling back to `{}`",
                                source.name(),
                                chain(&e),
                                next.name()
                            ),
                            None => {
                                tracing::warn!(stage = %cx.stage().id, source = source.name(), "{} failed for {object}: {}", source.name(), chain(&e))
                            }
                        }
                        failures.push((source, e));
                    }
                }
            }
            let retryable = failures.iter().any(|(_, e)| e.is_retryable());
            let causes = failures
                .iter()
                .map(|(source, e)| format!("{}: {}", source.name(), chain(e)))
                .collect::<Vec<_>>()
                .join("; ");
            let message = format!("no source served `{object}`: {causes}");
            Err(match retryable {
                true => StageError::retryable(message),
                false => StageError::final_(message),
            })
        })
    }
}

impl Download {
    /// One source's bytes and the revision it served them at.
    async fn fetch(
        &self,
        cx: &StageRun,
        source: Source,
        object: &str,
    ) -> Result<(Vec<u8>, String), StageError> {
        let max_bytes = self.max_bytes.0;
        match source {
            Source::Hub => {
                let hub_spec = cx.stage_resources().hub.as_ref();
                let repo = match (&self.repo, hub_spec.and_then(|h| h.repo.as_ref())) {
                    (Some(repo), _) | (None, Some(repo)) => cx.get(repo)?,
                    (None, None) => {
                        return Err(StageError::final_("no hub repository is configured"));
                    }
                };
                let revision = match &self.revision {
                    Some(r) => cx.get(r)?,
                    None => "main".to_owned(),
                };
                let args = hub::GetArgs {
                    repo,
                    revision,
                    path: object.to_owned(),
                    max_bytes,
                };
                let (bytes, fetched) = hub::get(&cx.effects, args).await?;
                Ok((bytes, fetched.revision))
            }
            Source::Http => {
                let (bytes, served) = endpoint::get_checkpoint(&cx.effects, max_bytes).await?;
                Ok((bytes, served.revision))
            }
            Source::Store => {
                let (bytes, stored) =
                    store::get_capped(&cx.effects, object, Some(max_bytes)).await?;
                let revision = stored.version.unwrap_or_else(|| digest_of(&bytes));
                Ok((bytes, revision))
            }
        }
    }
}

/// An error with its causes, on one line.
fn chain(e: &StageError) -> String {
    std::iter::once(e.message.as_str())
        .chain(e.causes.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(": ")
}

/// A blake3 digest as hex, with or without a `blake3:` prefix.
fn normalize_digest(text: &str) -> Result<String, StageError> {
    let hex = text
        .trim()
        .strip_prefix("blake3:")
        .unwrap_or(text.trim())
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(StageError::final_(format!(
            "`digest` must be a blake3 digest (64 hex digits), got `{text}`"
        )))
    }
}

fn check_digest(bytes: Vec<u8>, expected: Option<&str>) -> Result<Vec<u8>, StageError> {
    match expected {
        Some(expected) => {
            let actual = digest_of(&bytes);
            if actual == expected {
                Ok(bytes)
            } else {
                Err(StageError::final_(format!(
                    "digest mismatch: got {actual}, expected {expected}"
                )))
            }
        }
        None => Ok(bytes),
    }
}
