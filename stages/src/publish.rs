//! `publish`: upload an artifact to the object store or the hub. A hub upload returns the
//! commit SHA; publishing pipelines also write a model card, tags and branches.

use gradline_engine::Diagnostic;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Input, Port, StageKind};
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::artifacts::{DIGEST, REVISION};
use crate::require_resource;

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
        vec![Port::new("artifact", Type::Any, "What is uploaded.")]
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
}
