//! The dry run: what a pipeline will do, resolved as far as it can be without touching
//! anything outside. Parameters are resolved; stage outputs, cycle numbers and environment
//! values stay symbolic (`<stages.train.outputs.gradient>`, `<cycle.window>`, `<env.NAME>`),
//! so no secret is ever read into a plan.
//!
//! The JSON form is stable: its schema is `schemas/plan.schema.json`, and its `format` field
//! names the version.

use std::fmt::Write as _;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::expr::{Origin, Scope, Segment, Val, is_template, parse_template};
use crate::graph::{Dependency, ForEach, Pipeline, Stage};
use crate::node::Spanned;
use crate::params::ParamSource;
use crate::spec::{Device, Resources};
use crate::value::Value;

pub const PLAN_FORMAT: &str = "gradline.plan/v1";

/// What a stage reads or writes outside the process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Effect {
    pub access: Access,
    /// The system touched: `store`, `hub`, `http`, `chain`, `compute`, ...
    pub system: String,
    /// The resource's address, credentials removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// What is touched there: a key, `repo@revision`, an extrinsic.
    pub target: String,
    /// How many bytes, where known before running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Compute,
}

impl Effect {
    pub fn new(
        access: Access,
        system: &str,
        resource: Option<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            access,
            system: system.into(),
            resource,
            target: target.into(),
            bytes: None,
            note: None,
        }
    }

    pub fn read(system: &str, resource: Option<String>, target: impl Into<String>) -> Self {
        Self::new(Access::Read, system, resource, target)
    }

    pub fn write(system: &str, resource: Option<String>, target: impl Into<String>) -> Self {
        Self::new(Access::Write, system, resource, target)
    }

    pub fn compute(resource: Option<String>, target: impl Into<String>) -> Self {
        Self::new(Access::Compute, "compute", resource, target)
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }

    pub fn bytes(mut self, bytes: Option<u64>) -> Self {
        self.bytes = bytes;
        self
    }
}

/// Answers whether an environment variable is set. Plans never read values.
pub type EnvProbe<'a> = &'a dyn Fn(&str) -> bool;

/// The process environment, as a probe.
pub fn process_env(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

/// What a kind sees while describing its effects.
pub struct PlanContext<'a> {
    pub resources: &'a Resources,
    scope: PlanScope<'a>,
    env: EnvProbe<'a>,
}

impl<'a> PlanContext<'a> {
    pub fn new(pipeline: &'a Pipeline, env: EnvProbe<'a>) -> Self {
        Self {
            resources: &pipeline.spec.resources,
            scope: PlanScope { pipeline },
            env,
        }
    }

    /// Whether an environment variable is set (its value is never read).
    pub fn env_is_set(&self, name: &str) -> bool {
        (self.env)(name)
    }

    /// A setting's value as far as it is known before running.
    pub fn eval<T: Serialize>(&self, value: &Value<T>) -> Val {
        match value {
            Value::Lit(v) => {
                json_to_val(&serde_json::to_value(v).unwrap_or(serde_json::Value::Null))
            }
            Value::Expr(text) => self.eval_text(text),
        }
    }

    /// A setting's value as text, unknown parts in `<...>`.
    pub fn render<T: Serialize>(&self, value: &Value<T>) -> String {
        self.eval(value).to_string()
    }

    /// An optional setting's value as text.
    pub fn render_opt<T: Serialize>(&self, value: &Option<Value<T>>) -> Option<String> {
        value.as_ref().map(|v| self.render(v))
    }

    /// Evaluates template text (from an input or a setting).
    pub fn eval_text(&self, text: &Spanned<String>) -> Val {
        if !is_template(text) {
            return Val::Str(text.value.clone());
        }
        match parse_template(text, Origin::exact(text.span.start)) {
            Ok(template) => template.eval(&self.scope),
            Err(_) => Val::Unknown(text.value.clone()),
        }
    }

    /// The store's address with credentials removed, when the pipeline has a store.
    pub fn store(&self) -> Option<String> {
        self.resources
            .store
            .as_ref()
            .map(|s| redact_url(&self.render(&s.url)))
    }

    pub fn hub(&self) -> Option<String> {
        self.resources
            .hub
            .as_ref()
            .map(|h| redact_url(&self.render(&h.endpoint)))
    }

    /// The hub repository configured under `resources.hub.repo`.
    pub fn hub_repo(&self) -> Option<String> {
        self.resources
            .hub
            .as_ref()
            .and_then(|h| self.render_opt(&h.repo))
    }

    pub fn http(&self) -> Option<String> {
        self.resources
            .http
            .as_ref()
            .map(|h| redact_url(&self.render(&h.url)))
    }

    pub fn chain(&self) -> Option<String> {
        self.resources.chain.as_ref().map(|c| {
            format!(
                "{} netuid {}",
                redact_url(&self.render(&c.url)),
                self.render(&c.netuid)
            )
        })
    }

    pub fn device(&self) -> Device {
        self.resources
            .device
            .as_ref()
            .map_or(Device::Auto, |d| d.value)
    }
}

struct PlanScope<'a> {
    pipeline: &'a Pipeline,
}

impl Scope for PlanScope<'_> {
    fn lookup(&self, path: &[Segment]) -> Val {
        let symbol = || crate::expr::unknown(path);
        match path.first().map(|s| s.name.as_str()) {
            Some("params") => path
                .get(1)
                .and_then(|name| self.pipeline.param(&name.name))
                .and_then(|p| p.value.clone())
                .unwrap_or_else(symbol),
            _ => symbol(),
        }
    }
}

fn json_to_val(json: &serde_json::Value) -> Val {
    match json {
        serde_json::Value::Null => Val::Null,
        serde_json::Value::Bool(b) => Val::Bool(*b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or_else(|| Val::Float(n.as_f64().unwrap_or(0.0)), Val::Int),
        serde_json::Value::String(s) => Val::Str(s.clone()),
        serde_json::Value::Array(items) => Val::List(items.iter().map(json_to_val).collect()),
        serde_json::Value::Object(_) => Val::Str(json.to_string()),
    }
}

/// A value with any URL in it stripped of credentials.
fn redact_val(value: &Val) -> Val {
    match value {
        Val::Str(s) if s.contains("://") => Val::Str(redact_url(s)),
        Val::List(items) => Val::List(items.iter().map(redact_val).collect()),
        other => other.clone(),
    }
}

/// Removes `user:password@` and query strings (which may hold signatures) from a URL.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => authority.to_owned(),
    };
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?***"),
        None => path.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{path}"),
        None => format!("{authority}{path}"),
    }
}

/// The dry run of one pipeline.
#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct Plan {
    /// Always `gradline.plan/v1` for this layout.
    pub format: String,
    pub pipeline: PipelineInfo,
    pub params: Vec<PlannedParam>,
    pub resources: PlannedResources,
    /// When cycles start.
    pub trigger: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Environment variables the pipeline reads, and whether each is set (values never shown).
    pub env: Vec<PlannedEnv>,
    /// Stage ids that may run at the same time, level by level, in run order.
    pub levels: Vec<Vec<String>>,
    pub stages: Vec<PlannedStage>,
    /// Warnings found while checking the pipeline.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PipelineInfo {
    pub name: String,
    pub role: String,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedParam {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: String,
    /// The value, or null when it must still be set.
    pub value: serde_json::Value,
    /// `default`, `set` (from `--set`) or `missing`.
    pub source: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct PlannedResources {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedEnv {
    pub name: String,
    pub set: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedStage {
    pub id: String,
    pub uses: String,
    pub level: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Stages this one waits for.
    pub after: Vec<String>,
    pub inputs: Vec<PlannedInput>,
    pub outputs: Vec<PlannedPort>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_each: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    pub on_error: String,
    /// Already done in the newest run's interrupted cycle: `run --resume` would not redo it.
    #[serde(default)]
    pub cached: bool,
    pub effects: Vec<Effect>,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedInput {
    pub port: String,
    #[serde(rename = "type")]
    pub ty: String,
    pub from: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, JsonSchema)]
pub struct PlannedPort {
    pub port: String,
    #[serde(rename = "type")]
    pub ty: String,
}

impl Plan {
    pub fn build(pipeline: &Pipeline, warnings: Vec<String>, env: EnvProbe) -> Plan {
        let cx = PlanContext::new(pipeline, env);
        let spec = &pipeline.spec;
        let params = pipeline
            .params
            .iter()
            .map(|p| PlannedParam {
                name: p.name.clone(),
                ty: p.ty.to_string(),
                value: p
                    .value
                    .as_ref()
                    .map_or(serde_json::Value::Null, |v| redact_val(v).to_json()),
                source: match p.source {
                    ParamSource::Default => "default",
                    ParamSource::Set => "set",
                    ParamSource::Missing => "missing",
                }
                .into(),
            })
            .collect();
        let resources = PlannedResources {
            store: cx.store(),
            hub: cx.hub().map(|h| match cx.hub_repo() {
                Some(repo) => format!("{h} repo {repo}"),
                None => h,
            }),
            http: cx.http(),
            chain: cx.chain(),
            device: cx.device().to_string(),
            signing_key: spec.resources.keys.as_ref().map(|k| match &k.signing {
                crate::spec::KeySource::Env(name) => format!("env {name}"),
                crate::spec::KeySource::File(path) => format!("file {path}"),
                crate::spec::KeySource::Generated(name) => format!(
                    "generated {}",
                    crate::preflight::resolve(pipeline, name, &|_| None)
                        .unwrap_or_else(|_| cx.render(name))
                ),
            }),
        };
        let stages = pipeline
            .order
            .iter()
            .map(|&i| plan_stage(pipeline, &pipeline.stages[i], &cx))
            .collect();
        let levels = pipeline
            .levels
            .iter()
            .map(|level| {
                level
                    .iter()
                    .map(|&i| pipeline.stages[i].id.clone())
                    .collect()
            })
            .collect();
        Plan {
            format: PLAN_FORMAT.into(),
            pipeline: PipelineInfo {
                name: spec.name.value.clone(),
                role: spec.role.value.to_string(),
                file: pipeline.file.name.clone(),
                description: spec.description.clone(),
            },
            params,
            resources,
            trigger: spec.trigger.value.to_string(),
            deadline: spec.deadline.as_ref().map(|d| d.value.to_string()),
            env: env_reads(pipeline, &cx),
            levels,
            stages,
            warnings,
        }
    }
}

fn plan_stage(pipeline: &Pipeline, stage: &Stage, cx: &PlanContext) -> PlannedStage {
    let spec = &stage.spec;
    PlannedStage {
        id: stage.id.clone(),
        uses: stage.kind.to_owned(),
        level: stage.level,
        description: spec.description.clone(),
        after: stage
            .after
            .iter()
            .map(|&i| pipeline.stages[i].id.clone())
            .collect(),
        inputs: stage
            .bindings
            .iter()
            .map(|b| PlannedInput {
                port: b.port.to_owned(),
                ty: b.ty.to_string(),
                from: b
                    .template
                    .exprs()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
            .collect(),
        outputs: stage
            .outputs
            .iter()
            .map(|p| PlannedPort {
                port: p.name.to_owned(),
                ty: p.ty.to_string(),
            })
            .collect(),
        when: stage.when.as_ref().map(|w| w.to_string()),
        for_each: stage.for_each.as_ref().map(|f| match f {
            ForEach::Expr { expr, .. } => expr.to_string(),
            ForEach::Literal { items, .. } => Val::List(items.clone()).to_string(),
        }),
        max_parallel: spec.max_parallel.as_ref().map(|m| m.value),
        retry: spec.retry.as_ref().map(|r| {
            let mut text = format!("{} attempts, backoff {}", r.attempts, r.backoff);
            if let Some(max) = r.max_backoff {
                let _ = write!(text, " up to {max}");
            }
            if r.jitter {
                text.push_str(", jitter");
            }
            text
        }),
        timeout: spec.timeout.as_ref().map(|t| t.value.to_string()),
        on_error: match stage.skips_on_error() {
            true => "skip".into(),
            false => "fail".into(),
        },
        cached: false,
        effects: stage.settings.effects(cx),
    }
}

/// Environment variables the file reads through `${{ env.NAME }}`, or as token and key sources.
fn env_reads(pipeline: &Pipeline, cx: &PlanContext) -> Vec<PlannedEnv> {
    let mut names = pipeline.env.clone();
    if let Some(hub) = &pipeline.spec.resources.hub {
        names.extend(hub.token_env.iter().cloned());
    }
    if let Some(keys) = &pipeline.spec.resources.keys
        && let crate::spec::KeySource::Env(name) = &keys.signing
    {
        names.insert(name.clone());
    }
    names
        .into_iter()
        .map(|name| PlannedEnv {
            set: cx.env_is_set(&name),
            name,
        })
        .collect()
}

impl Plan {
    /// Marks the stages a resumed run would not redo.
    pub fn mark_cached(&mut self, ids: &std::collections::BTreeSet<String>) {
        for stage in &mut self.stages {
            stage.cached = ids.contains(&stage.id);
        }
    }

    /// The plan for a person to read.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let p = &self.pipeline;
        let _ = writeln!(out, "plan  {} ({}), {}", p.name, p.role, p.file);
        if let Some(d) = &p.description {
            let _ = writeln!(out, "      {d}");
        }
        let _ = writeln!(out, "trigger  {}", self.trigger);
        if let Some(d) = &self.deadline {
            let _ = writeln!(out, "deadline {d} per cycle");
        }
        if !self.params.is_empty() {
            let _ = writeln!(out, "\nparams");
            let width = self.params.iter().map(|p| p.name.len()).max().unwrap_or(0);
            for param in &self.params {
                let value = match param.value {
                    serde_json::Value::Null => "(not set)".to_owned(),
                    ref v => v.to_string(),
                };
                let _ = writeln!(
                    out,
                    "  {:width$}  {:8} = {value}  [{}]",
                    param.name, param.ty, param.source
                );
            }
        }
        let _ = writeln!(out, "\nresources");
        let r = &self.resources;
        for (name, value) in [
            ("store", &r.store),
            ("hub", &r.hub),
            ("http", &r.http),
            ("chain", &r.chain),
            ("key", &r.signing_key),
        ] {
            if let Some(v) = value {
                let _ = writeln!(out, "  {name:6} {v}");
            }
        }
        let _ = writeln!(out, "  {:6} {}", "device", r.device);
        if !self.env.is_empty() {
            let _ = writeln!(out, "\nenvironment (values never shown)");
            for e in &self.env {
                let _ = writeln!(
                    out,
                    "  {:24} {}",
                    e.name,
                    if e.set { "set" } else { "not set" }
                );
            }
        }
        let _ = writeln!(
            out,
            "\nstages  {} in {} levels",
            self.stages.len(),
            self.levels.len()
        );
        for (level, ids) in self.levels.iter().enumerate() {
            let _ = writeln!(out, "\n  level {level}  ({})", ids.join(", "));
            for stage in self.stages.iter().filter(|s| s.level == level) {
                write_stage(&mut out, stage);
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(out, "\nwarnings");
            for w in &self.warnings {
                let _ = writeln!(out, "  {w}");
            }
        }
        out
    }

    /// Graphviz DOT: stages as boxes, data edges labelled with their port.
    pub fn to_dot(&self, pipeline: &Pipeline) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", escape(&self.pipeline.name));
        let _ = writeln!(
            out,
            "  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];"
        );
        for stage in &self.stages {
            let mut label = format!("{}\\n{}", stage.id, stage.uses);
            if let Some(f) = &stage.for_each {
                let _ = write!(label, "\\nfor each {}", escape(f));
            }
            let style = if stage.when.is_some() {
                ", style=dashed"
            } else {
                ""
            };
            let _ = writeln!(out, "  \"{}\" [label=\"{}\"{style}];", stage.id, label);
        }
        for (from, to, dep) in edges(pipeline) {
            match dep {
                Dependency::Data { port } => {
                    let _ = writeln!(out, "  \"{from}\" -> \"{to}\" [label=\"{port}\"];");
                }
                Dependency::Order => {
                    let _ = writeln!(out, "  \"{from}\" -> \"{to}\" [style=dotted];");
                }
            }
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid flowchart.
    pub fn to_mermaid(&self, pipeline: &Pipeline) -> String {
        let mut out = String::from("flowchart LR\n");
        let id = |s: &str| s.replace('-', "_");
        for stage in &self.stages {
            let mut label = format!("{}<br/>{}", stage.id, stage.uses);
            if let Some(f) = &stage.for_each {
                let _ = write!(label, "<br/>for each {}", f.replace('"', "'"));
            }
            let _ = writeln!(out, "  {}[\"{}\"]", id(&stage.id), label);
        }
        for (from, to, dep) in edges(pipeline) {
            match dep {
                Dependency::Data { port } => {
                    let _ = writeln!(out, "  {} -->|{port}| {}", id(&from), id(&to));
                }
                Dependency::Order => {
                    let _ = writeln!(out, "  {} -.-> {}", id(&from), id(&to));
                }
            }
        }
        out
    }
}

fn write_stage(out: &mut String, stage: &PlannedStage) {
    let cached = if stage.cached { "  [cached]" } else { "" };
    let _ = writeln!(out, "    {} ({}){cached}", stage.id, stage.uses);
    if let Some(d) = &stage.description {
        let _ = writeln!(out, "      # {d}");
    }
    if let Some(f) = &stage.for_each {
        let parallel = stage
            .max_parallel
            .map(|m| format!(", {m} at a time"))
            .unwrap_or_default();
        let _ = writeln!(out, "      for each   {f}{parallel}");
    }
    if let Some(w) = &stage.when {
        let _ = writeln!(out, "      when       {w}");
    }
    for input in &stage.inputs {
        let _ = writeln!(
            out,
            "      in  {:14} {:12} <- {}",
            input.port, input.ty, input.from
        );
    }
    for output in &stage.outputs {
        let _ = writeln!(out, "      out {:14} {}", output.port, output.ty);
    }
    for e in &stage.effects {
        let access = match e.access {
            Access::Read => "read ",
            Access::Write => "WRITE",
            Access::Compute => "run  ",
        };
        let mut line = format!("      {access} {:8}", e.system);
        if let Some(r) = &e.resource {
            let _ = write!(line, " {r}");
        }
        let _ = write!(line, " : {}", e.target);
        if let Some(b) = e.bytes {
            let _ = write!(line, " ({})", crate::value::ByteSize(b));
        }
        if let Some(n) = &e.note {
            let _ = write!(line, "  ({n})");
        }
        let _ = writeln!(out, "{line}");
    }
    let mut policy = Vec::new();
    if let Some(r) = &stage.retry {
        policy.push(format!("retry {r}"));
    }
    if let Some(t) = &stage.timeout {
        policy.push(format!("timeout {t}"));
    }
    if stage.on_error == "skip" {
        policy.push("on error skip".into());
    }
    if !policy.is_empty() {
        let _ = writeln!(out, "      policy     {}", policy.join("; "));
    }
}

fn edges(pipeline: &Pipeline) -> Vec<(String, String, Dependency)> {
    let mut out: Vec<(String, String, Dependency)> = pipeline
        .graph
        .edge_indices()
        .filter_map(|e| {
            let (a, b) = pipeline.graph.edge_endpoints(e)?;
            let from = pipeline.stages[pipeline.graph[a]].id.clone();
            let to = pipeline.stages[pipeline.graph[b]].id.clone();
            Some((from, to, pipeline.graph[e].clone()))
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1, format!("{:?}", a.2)).cmp(&(&b.0, &b.1, format!("{:?}", b.2))));
    out.dedup();
    out
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("s3://key:secret@bucket/prefix"),
            "s3://***@bucket/prefix"
        );
        assert_eq!(
            redact_url("https://host/path?X-Amz-Signature=abc"),
            "https://host/path?***"
        );
        assert_eq!(
            redact_url("file://.gradline/store"),
            "file://.gradline/store"
        );
    }
}
