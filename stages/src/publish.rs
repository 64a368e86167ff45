//! `publish`: upload an artifact to the object store or the hub. A hub upload returns the
//! commit SHA; publishing pipelines also write a model card, tags and branches.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::Diagnostic;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext, redact_url};
use gradline_engine::preflight::Preflight;
use gradline_engine::registry::{CheckContext, Input, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError, digest_of};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::{DIGEST, REVISION};
use crate::{hub, require_resource, store};

/// Upload to the store or the hub.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// Where to: `store` or `hub`.
    pub target: Target,
    /// The artifact to upload (any artifact type).
    #[serde(default)]
    pub artifact: Option<Input>,
    /// Local files to upload instead of an artifact (publishing pipelines).
    #[serde(default)]
    pub files: Vec<Value<String>>,
    /// store: the key written.
    #[serde(default)]
    pub key: Option<Value<String>>,
    /// hub: the repository, `owner/name`; defaults to `resources.hub.repo`.
    #[serde(default)]
    pub repo: Option<Value<String>>,
    /// hub: the path of the file in the repository; defaults to the naming convention or the object name.
    #[serde(default)]
    pub path: Option<Value<String>>,
    /// hub: the branch committed to (variants live on branches).
    #[serde(default = "default_branch")]
    pub branch: Value<String>,
    /// hub: a tag put on the new commit (releases).
    #[serde(default)]
    pub tag: Option<Value<String>>,
    /// hub: the commit message.
    #[serde(default)]
    pub message: Option<Value<String>>,
    /// hub: create the repository when it does not exist.
    #[serde(default)]
    pub create_repo: bool,
    /// hub: file names as `{name}-{size}-{quant}.{ext}`.
    #[serde(default)]
    pub naming: Option<Naming>,
    /// hub: a model card (README.md) written with the upload.
    #[serde(default)]
    pub card: Option<Card>,
    /// hub: benchmark results for the model card: a map of benchmark name to score (or an
    /// artifact holding that map as JSON).
    #[serde(default)]
    pub results: Option<Input>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Store,
    Hub,
}

/// The naming convention `{name}-{size}-{quant}.{ext}`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Naming {
    pub name: Value<String>,
    /// e.g. `10m`, `1.5b`.
    pub size: Value<String>,
    /// e.g. `f32`, `bf16`, `q8_0`.
    pub quant: Value<String>,
    /// e.g. `safetensors`, `gguf`.
    pub ext: Value<String>,
}

/// A model card: YAML front matter, a hardware table, usage, and benchmark results when present.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Card {
    /// SPDX license id.
    pub license: String,
    #[serde(default)]
    pub language: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub base_model: Option<String>,
    /// Rows of the hardware table.
    #[serde(default)]
    pub hardware: Vec<HardwareRow>,
    /// A usage snippet.
    #[serde(default)]
    pub usage: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HardwareRow {
    pub device: String,
    pub memory: String,
    #[serde(default)]
    pub tokens_per_second: Option<f64>,
}

fn default_branch() -> Value<String> {
    Value::Lit("main".into())
}

impl StageKind for Publish {
    const NAME: &'static str = "publish";
    const DESCRIPTION: &'static str = "Upload to the store or the hub; a hub upload returns the commit SHA; model cards, tags, branches.";

    fn inputs(&self) -> Vec<Port> {
        let mut ports = vec![Port::new("artifact", Type::Any, "What is uploaded.")];
        if self.results.is_some() {
            ports.push(Port::new(
                "results",
                Type::Any,
                "Benchmark results for the model card.",
            ));
        }
        ports
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new(
                "revision",
                REVISION,
                "The hub commit SHA (or the store object's version).",
            ),
            Port::new("digest", DIGEST, "The uploaded artifact's digest."),
            Port::new("url", Type::Text, "Where it can be fetched."),
        ]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        if self.artifact.is_none() && self.files.is_empty() {
            out.push(
                Diagnostic::error(
                    "missing-setting",
                    "nothing to publish: give `artifact:` or `files:`",
                )
                .at(cx.span_of("target")),
            );
        }
        match self.target {
            Target::Store => {
                out.extend(require_resource(
                    cx.resources.store.is_some(),
                    "store",
                    "publishing to the store",
                    cx,
                    "target",
                ));
                if self.key.is_none() {
                    out.push(
                        Diagnostic::error(
                            "missing-setting",
                            "publishing to the store needs `key:`",
                        )
                        .at(cx.span_of("target")),
                    );
                }
            }
            Target::Hub => {
                out.extend(require_resource(
                    cx.resources.hub.is_some(),
                    "hub",
                    "publishing to the hub",
                    cx,
                    "target",
                ));
                let configured = self.repo.is_some()
                    || cx.resources.hub.as_ref().is_some_and(|h| h.repo.is_some());
                if cx.resources.hub.is_some() && !configured {
                    out.push(
                        Diagnostic::error("missing-setting", "publishing to the hub needs a repository")
                            .at(cx.span_of("target"))
                            .hint("set `repo:` here or `resources.hub.repo`: an unset repository must not silently skip the upload"),
                    );
                }
            }
        }
        out
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        let mut what: Vec<String> = self.files.iter().map(|f| cx.render(f)).collect();
        if let Some(a) = &self.artifact {
            what.push(cx.eval_text(&a.0).to_string());
        }
        let what = what.join(", ");
        match self.target {
            Target::Store => {
                vec![
                    Effect::write(
                        "store",
                        cx.store(),
                        cx.render_opt(&self.key).unwrap_or_default(),
                    )
                    .note(format!("upload {what}")),
                ]
            }
            Target::Hub => {
                let repo = cx
                    .render_opt(&self.repo)
                    .or_else(|| cx.hub_repo())
                    .unwrap_or_default();
                let path = match (&self.path, &self.naming) {
                    (Some(p), _) => cx.render(p),
                    (None, Some(n)) => {
                        format!(
                            "{}-{}-{}.{}",
                            cx.render(&n.name),
                            cx.render(&n.size),
                            cx.render(&n.quant),
                            cx.render(&n.ext)
                        )
                    }
                    (None, None) => what.clone(),
                };
                let embedded = cx.hub().is_some_and(|h| h.starts_with("local://"));
                let token = match cx.resources.hub.as_ref() {
                    Some(_) if embedded => "embedded hub: no token needed".to_owned(),
                    Some(h) => {
                        let set = h.token_env.iter().find(|name| cx.env_is_set(name));
                        match set {
                            Some(name) => format!("token from {name}"),
                            None => format!("no token set: tried {}", h.token_env.join(", ")),
                        }
                    }
                    None => "no hub".into(),
                };
                let mut effects = vec![
                    Effect::write(
                        "hub",
                        cx.hub(),
                        format!("{repo}@{}: commit {path}", cx.render(&self.branch)),
                    )
                    .note(token),
                ];
                if self.card.is_some() {
                    effects.push(Effect::write(
                        "hub",
                        cx.hub(),
                        format!("{repo}@{}: README.md (model card)", cx.render(&self.branch)),
                    ));
                }
                if let Some(tag) = cx.render_opt(&self.tag) {
                    effects.push(Effect::write("hub", cx.hub(), format!("{repo}: tag {tag}")));
                }
                if self.create_repo {
                    effects.insert(
                        0,
                        Effect::write("hub", cx.hub(), format!("create {repo} if missing")),
                    );
                }
                effects
            }
        }
    }
    fn preflight(&self, cx: &Preflight) -> Vec<String> {
        let Some(hub) = cx
            .resources
            .hub
            .as_ref()
            .filter(|_| self.target == Target::Hub)
        else {
            return Vec::new();
        };
        let mut missing = Vec::new();
        let endpoint = cx.resolve(&hub.endpoint).unwrap_or_default();
        if !endpoint.starts_with("local://")
            && !hub.token_env.iter().any(|name| cx.env_is_set(name))
        {
            missing.push(format!(
                "publishing to the hub needs a token, and none is set: tried {}",
                hub.token_env.join(", ")
            ));
        }
        let repo = match (&self.repo, &hub.repo) {
            (Some(repo), _) | (None, Some(repo)) => cx.resolve(repo).ok(),
            (None, None) => None,
        };
        match repo.as_deref().map(str::trim) {
            None | Some("") => missing.push(
                "publishing to the hub needs a repository, and none is configured: set `resources.hub.repo` or `repo:` on the stage".to_owned(),
            ),
            Some(repo) => {
                if let Err(e) = hub::split_repo(repo) {
                    missing.push(e);
                }
            }
        }
        missing
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let mut files = Vec::new();
            if let Some(input) = &self.artifact {
                files.push(artifact_bytes(cx, &cx.input(input)?).await?);
            }
            for file in &self.files {
                let path = cx.get(file)?;
                let bytes = tokio::fs::read(&path)
                    .await
                    .map_err(|e| StageError::io(format!("reading `{path}`"), &e))?;
                let name = std::path::Path::new(&path)
                    .file_name()
                    .map_or_else(|| path.clone(), |n| n.to_string_lossy().into_owned());
                files.push((Some(name), bytes));
            }
            let digest = digest_of(&files.first().map(|(_, b)| b.clone()).unwrap_or_default());
            match self.target {
                Target::Store => self.to_store(cx, files, digest).await,
                Target::Hub => self.to_hub(cx, files, digest).await,
            }
        })
    }
}

impl Publish {
    async fn to_store(
        &self,
        cx: &StageRun,
        files: Vec<(Option<String>, Vec<u8>)>,
        digest: String,
    ) -> Result<Outputs, StageError> {
        let key = match &self.key {
            Some(k) => cx.get(k)?,
            None => return Err(StageError::final_("publishing to the store needs `key:`")),
        };
        let base = match cx.stage_resources().store.as_ref() {
            Some(s) => redact_url(&cx.get(&s.url)?),
            None => String::new(),
        };
        let single = files.len() == 1;
        let mut version = None;
        for (name, bytes) in files {
            let key = match (single, name) {
                (true, _) | (false, None) => key.clone(),
                (false, Some(name)) => format!("{}/{name}", key.trim_end_matches('/')),
            };
            let stored = store::put(&cx.effects, &key, bytes).await?;
            version = version.or(stored.version);
        }
        Ok(BTreeMap::from([
            (
                "revision".to_owned(),
                Val::Str(version.unwrap_or_else(|| digest.clone())),
            ),
            ("digest".to_owned(), Val::Str(digest)),
            (
                "url".to_owned(),
                Val::Str(format!("{}/{key}", base.trim_end_matches('/'))),
            ),
        ]))
    }

    async fn to_hub(
        &self,
        cx: &StageRun,
        files: Vec<(Option<String>, Vec<u8>)>,
        digest: String,
    ) -> Result<Outputs, StageError> {
        let hub_spec = cx.stage_resources().hub.as_ref();
        let repo = match (&self.repo, hub_spec.and_then(|h| h.repo.as_ref())) {
            (Some(repo), _) | (None, Some(repo)) => cx.get(repo)?,
            (None, None) => {
                return Err(StageError::final_(
                    "publishing to the hub needs a repository: set `resources.hub.repo` or `repo:`",
                ));
            }
        };
        hub::split_repo(&repo).map_err(StageError::final_)?;
        let branch = cx.get(&self.branch)?;
        let named = match (&self.path, &self.naming) {
            (Some(p), _) => Some(cx.get(p)?),
            (None, Some(n)) => Some(file_name(
                &cx.get(&n.name)?,
                &cx.get(&n.size)?,
                &cx.get(&n.quant)?,
                &cx.get(&n.ext)?,
            )?),
            (None, None) => None,
        };
        let mut uploads: Vec<(String, Vec<u8>)> = Vec::new();
        for (i, (name, bytes)) in files.into_iter().enumerate() {
            let path = match (i, &named, name) {
                (0, Some(path), _) => path.clone(),
                (_, _, Some(name)) => name,
                (_, _, None) => format!("{}.bin", digest_of(&bytes)),
            };
            uploads.push((path, bytes));
        }
        if let Some(card) = &self.card {
            let results = match &self.results {
                Some(input) => benchmark_results(cx, &cx.input(input)?).await?,
                None => BTreeMap::new(),
            };
            let paths: Vec<&str> = uploads.iter().map(|(p, _)| p.as_str()).collect();
            let text = model_card(card, &repo, &paths, &results);
            uploads.push(("README.md".to_owned(), text.into_bytes()));
        }
        let message = match &self.message {
            Some(m) => cx.get(m)?,
            None => format!("gradline: cycle {} window {}", cx.cycle(), cx.window()),
        };
        let committed = hub::commit(
            &cx.effects,
            &repo,
            &branch,
            &message,
            self.create_repo,
            uploads,
        )
        .await?;
        if let Some(tag) = &self.tag {
            let tag = cx.get(tag)?;
            hub::tag(
                &cx.effects,
                hub::TagArgs {
                    repo: repo.clone(),
                    tag,
                    revision: committed.revision.clone(),
                },
            )
            .await?;
        }
        Ok(BTreeMap::from([
            ("revision".to_owned(), Val::Str(committed.revision)),
            ("digest".to_owned(), Val::Str(digest)),
            ("url".to_owned(), Val::Str(committed.url)),
        ]))
    }
}

/// An input's bytes: an artifact from the run's objects, or a value written as text.
async fn artifact_bytes(
    cx: &StageRun,
    value: &Val,
) -> Result<(Option<String>, Vec<u8>), StageError> {
    match value {
        Val::Artifact(artifact) => {
            let bytes = cx.read_artifact(artifact).await?;
            let ext = match artifact.ty.as_str() {
                "checkpoint" | "gradient" => "safetensors",
                _ => "bin",
            };
            Ok((Some(format!("{}.{ext}", artifact.ty)), bytes))
        }
        Val::Str(text) => Ok((None, text.clone().into_bytes())),
        other => Ok((None, other.to_json().to_string().into_bytes())),
    }
}

async fn benchmark_results(
    cx: &StageRun,
    value: &Val,
) -> Result<BTreeMap<String, String>, StageError> {
    let json = match value {
        Val::Artifact(artifact) => {
            let bytes = cx.read_artifact(artifact).await?;
            serde_json::from_slice(&bytes)
                .map_err(|e| StageError::final_(format!("`results` is not a JSON map: {e}")))?
        }
        other => other.to_json(),
    };
    match json {
        serde_json::Value::Object(map) => Ok(map
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
            .collect()),
        serde_json::Value::Null => Ok(BTreeMap::new()),
        other => Err(StageError::final_(format!(
            "`results` must be a map of benchmark to score, got {other}"
        ))),
    }
}

/// The naming convention `{name}-{size}-{quant}.{ext}`, with each part checked.
pub fn file_name(name: &str, size: &str, quant: &str, ext: &str) -> Result<String, StageError> {
    for (what, part) in [
        ("name", name),
        ("size", size),
        ("quant", quant),
        ("ext", ext),
    ] {
        let ok = !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok || part.starts_with('.') {
            return Err(StageError::final_(format!(
                "naming: `{what}` must be letters, digits, `-`, `_` or `.`, got `{part}`"
            )));
        }
    }
    Ok(format!(
        "{name}-{}-{}.{}",
        size.to_ascii_lowercase(),
        quant.to_ascii_lowercase(),
        ext.trim_start_matches('.')
    ))
}

/// The README.md of a published model: YAML front matter (license, language, tags, base
/// model), the files, a hardware table, usage, and benchmark results when there are any.
pub fn model_card(
    card: &Card,
    repo: &str,
    files: &[&str],
    results: &BTreeMap<String, String>,
) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut out = String::from("---\n");
    out.push_str(&format!("license: {}\n", quote(&card.license)));
    if !card.language.is_empty() {
        out.push_str("language:\n");
        card.language
            .iter()
            .for_each(|l| out.push_str(&format!("  - {}\n", quote(l))));
    }
    let mut tags = vec!["gradline".to_owned()];
    tags.extend(card.tags.iter().filter(|t| *t != "gradline").cloned());
    out.push_str("tags:\n");
    tags.iter()
        .for_each(|t| out.push_str(&format!("  - {}\n", quote(t))));
    if let Some(base) = &card.base_model {
        out.push_str(&format!("base_model: {}\n", quote(base)));
    }
    out.push_str("library_name: safetensors\n---\n\n");
    let title = repo.rsplit('/').next().unwrap_or(repo);
    out.push_str(&format!(
        "# {title}\n\nPublished by a gradline pipeline.\n\n## Files\n\n"
    ));
    files
        .iter()
        .for_each(|f| out.push_str(&format!("- `{f}`\n")));
    if !card.hardware.is_empty() {
        out.push_str("\n## Hardware\n\n| Device | Memory | Tokens/s |\n|---|---|---|\n");
        for row in &card.hardware {
            let speed = row
                .tokens_per_second
                .map_or_else(|| "—".to_owned(), |t| format!("{t:.0}"));
            out.push_str(&format!(
                "| {} | {} | {speed} |\n",
                cell(&row.device),
                cell(&row.memory)
            ));
        }
    }
    out.push_str("\n## Usage\n\n");
    match &card.usage {
        Some(usage) => out.push_str(&format!("```\n{}\n```\n", usage.trim_end())),
        None => {
            let file = files.first().copied().unwrap_or("model.safetensors");
            out.push_str(&format!(
                "```python\nfrom huggingface_hub import hf_hub_download\npath = hf_hub_download(\"{repo}\", \"{file}\")\n```\n"
            ));
        }
    }
    if !results.is_empty() {
        out.push_str("\n## Benchmark results\n\n| Benchmark | Score |\n|---|---|\n");
        for (name, score) in results {
            out.push_str(&format!("| {} | {} |\n", cell(name), cell(score)));
        }
    }
    out
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
