//! Compiling a spec into a checked, typed DAG.
//!
//! References in `${{ ... }}` expressions are resolved and typed; a reference to another
//! stage's output is an edge, and so is `needs:`. All problems are reported together:
//! dangling references, unknown stages, kinds and ports, port type mismatches, fan-out and
//! fan-in shape errors, cycles (naming the loop), unused parameters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use crate::diag::{Diagnostic, suggestion};
use crate::expr::{
    BinOp, Expr, ExprKind, Literal, Origin, Segment, Template, Val, is_template, parse_condition,
    parse_template,
};
use crate::node::{Node, NodeKind};
use crate::params::{Override, ResolvedParam, resolve};
use crate::registry::{CheckContext, Port, Registry, Settings};
use crate::source::{SourceFile, Span};
use crate::spec::{OnError, PipelineSpec, StageSpec};
use crate::types::Type;

/// A checked pipeline, ready to plan or run.
pub struct Pipeline {
    pub file: Arc<SourceFile>,
    pub spec: PipelineSpec,
    pub params: Vec<ResolvedParam>,
    /// Stages in the order of the file.
    pub stages: Vec<Stage>,
    /// Stage indices in run order: by level, then by id.
    pub order: Vec<usize>,
    /// Stages that may run at the same time, level by level.
    pub levels: Vec<Vec<usize>>,
    /// The DAG: an edge from a stage to each stage that needs it.
    pub graph: DiGraph<usize, Dependency>,
    /// Stage index by id.
    index: std::collections::HashMap<String, usize>,
    /// Each stage's position in `order`.
    rank: Vec<usize>,
    /// Environment variables the file reads through `${{ env.NAME }}`.
    pub env: BTreeSet<String>,
}

/// Why one stage waits for another.
#[derive(Clone, Debug, PartialEq)]
pub enum Dependency {
    /// Data flows: the output `port` is read by the dependant.
    Data { port: String },
    /// Ordering only, from `needs:`.
    Order,
}

pub struct Stage {
    pub id: String,
    pub id_span: Span,
    pub kind: &'static str,
    pub kind_version: u32,
    pub spec: StageSpec,
    pub settings: Box<dyn Settings>,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    /// For each input port given in `with:`, where its value comes from.
    pub bindings: Vec<Binding>,
    /// Every `${{ ... }}` template in `with:`, by its key path.
    pub templates: Vec<(String, Template)>,
    pub when: Option<Expr>,
    pub for_each: Option<ForEach>,
    /// Stages this one waits for (data and `needs:`).
    pub after: BTreeSet<usize>,
    pub level: usize,
}

#[derive(Clone, Debug)]
pub struct Binding {
    pub port: &'static str,
    pub ty: Type,
    pub template: Template,
}

/// How a stage fans out.
#[derive(Clone, Debug)]
pub enum ForEach {
    /// Over the value of an expression.
    Expr { expr: Expr, item: Type },
    /// Over a list written in the file.
    Literal { items: Vec<Val>, item: Type },
}

impl ForEach {
    pub fn item_type(&self) -> &Type {
        match self {
            ForEach::Expr { item, .. } | ForEach::Literal { item, .. } => item,
        }
    }

    fn key(&self) -> String {
        match self {
            ForEach::Expr { expr, .. } => expr.to_string(),
            ForEach::Literal { items, .. } => format!("{items:?}"),
        }
    }
}

/// A stage as far as it could be read, before references are checked.
struct Draft {
    id: String,
    id_span: Span,
    spec: StageSpec,
    kind: Option<(&'static str, u32)>,
    settings: Option<Box<dyn Settings>>,
}

/// Compiles a spec; returns the pipeline when no error was found, and every finding.
pub fn compile(
    file: Arc<SourceFile>,
    spec: PipelineSpec,
    registry: &Registry,
    overrides: &[Override],
) -> (Option<Pipeline>, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let params = resolve(&spec.params, overrides, &mut diags);
    let drafts: Vec<Draft> = spec
        .stages
        .iter()
        .map(|(id, stage)| read_stage(id, stage, &spec, registry, &mut diags))
        .collect();
    let index: BTreeMap<&str, usize> = drafts
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();

    let mut checker = Checker {
        file: &file,
        registry,
        params: &params,
        drafts: &drafts,
        index: &index,
        used_params: BTreeSet::new(),
        used_env: BTreeSet::new(),
        diags: &mut diags,
    };
    if let Some(resources) = &spec.resources_node {
        checker.check_resources(resources);
    }
    let fan_outs: Vec<Option<ForEach>> = (0..drafts.len()).map(|i| checker.for_each(i)).collect();
    let mut checked = Vec::new();
    for i in 0..drafts.len() {
        checked.push(checker.check_stage(i, &fan_outs));
    }
    let used_params = std::mem::take(&mut checker.used_params);
    let env = std::mem::take(&mut checker.used_env);
    for p in &params {
        if !used_params.contains(&p.name) {
            diags.push(
                Diagnostic::warning(
                    "unused-param",
                    format!("parameter `{}` is never used", p.name),
                )
                .at(p.span)
                .hint("remove it, or read it with `${{ params.NAME }}`"),
            );
        }
    }

    if drafts.is_empty() {
        let at = file
            .text
            .find("stages")
            .map(|i| Span::new(i, i + "stages".len()));
        diags.push(
            Diagnostic::warning(
                "no-stages",
                "the pipeline has no stages: a cycle would do nothing",
            )
            .at_opt(at)
            .hint("add stages under `stages:`"),
        );
    }

    let mut graph = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..drafts.len()).map(|i| graph.add_node(i)).collect();
    let mut edge_spans: BTreeMap<(usize, usize), Span> = BTreeMap::new();
    for (to, c) in checked.iter().enumerate() {
        for dep in &c.deps {
            graph.add_edge(nodes[dep.from], nodes[to], dep.kind.clone());
            edge_spans.entry((dep.from, to)).or_insert(dep.span);
        }
    }
    report_cycles(&graph, &drafts, &edge_spans, &mut diags);

    if diags.iter().any(Diagnostic::is_error) {
        return (None, diags);
    }
    let (order, levels, level_of) = schedule_levels(&drafts, &checked);
    let stages = drafts
        .into_iter()
        .zip(checked)
        .zip(fan_outs)
        .enumerate()
        .filter_map(|(i, ((draft, c), for_each))| {
            let settings = draft.settings?;
            let (kind, kind_version) = draft.kind?;
            Some(Stage {
                inputs: settings.inputs(),
                outputs: settings.outputs(),
                id: draft.id,
                id_span: draft.id_span,
                kind,
                kind_version,
                spec: draft.spec,
                settings,
                bindings: c.bindings,
                templates: c.templates,
                when: c.when,
                for_each,
                after: c.deps.iter().map(|d| d.from).collect(),
                level: level_of[i],
            })
        })
        .collect::<Vec<Stage>>();
    let index = stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect();
    let mut rank = vec![0; order.len()];
    for (position, &i) in order.iter().enumerate() {
        rank[i] = position;
    }
    let pipeline = Pipeline {
        file,
        spec,
        params,
        stages,
        order,
        levels,
        graph,
        index,
        rank,
        env,
    };
    (Some(pipeline), diags)
}

fn read_stage(
    id: &crate::node::Spanned<String>,
    stage: &StageSpec,
    spec: &PipelineSpec,
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
) -> Draft {
    let mut draft = Draft {
        id: id.value.clone(),
        id_span: id.span,
        spec: stage.clone(),
        kind: None,
        settings: None,
    };
    let Some(kind) = registry.kind(&stage.uses) else {
        let names = registry.kind_names();
        diags.push(
            Diagnostic::error(
                "unknown-kind",
                format!("unknown stage kind `{}`", stage.uses.value),
            )
            .at(stage.uses.span)
            .hint_opt(suggestion(&stage.uses, &names)),
        );
        return draft;
    };
    draft.kind = Some((kind.name, kind.version));
    let empty = Node::new(NodeKind::Null, stage.uses.span);
    let with = stage.with.as_ref().unwrap_or(&empty);
    match kind.parse(with) {
        Ok(settings) => {
            let cx = CheckContext {
                resources: &spec.resources,
                with: stage.with.as_ref(),
                uses_span: stage.uses.span,
            };
            diags.extend(settings.check(&cx));
            draft.settings = Some(settings);
        }
        Err(err) => {
            let mut d = err.into_diagnostic();
            d.message = format!(
                "{} in `with:` of stage `{}` ({})",
                d.message, id.value, kind.name
            );
            if d.span == Some(empty.span) || d.span.is_none() {
                d.span = Some(stage.with.as_ref().map_or(stage.uses.span, |w| w.span));
            }
            diags.push(d);
        }
    }
    if stage.max_parallel.is_some() && stage.for_each.is_none() {
        diags.push(
            Diagnostic::warning(
                "unused-setting",
                "`max_parallel` has no effect without `for_each`",
            )
            .at(stage.max_parallel.as_ref().map_or(id.span, |m| m.span)),
        );
    }
    if let Some(retry) = &stage.retry
        && retry.attempts == 0
    {
        diags.push(
            Diagnostic::error(
                "invalid-value",
                "`retry.attempts` counts the first attempt, so it is at least 1",
            )
            .at(id.span),
        );
    }
    draft
}

struct Dep {
    from: usize,
    kind: crate::graph::Dependency,
    span: Span,
}

#[derive(Default)]
struct Checked {
    deps: Vec<Dep>,
    bindings: Vec<Binding>,
    templates: Vec<(String, Template)>,
    when: Option<Expr>,
}

/// The stage whose expressions are being checked.
struct Here<'a> {
    index: usize,
    for_each: Option<&'a ForEach>,
    fan_outs: &'a [Option<ForEach>],
}

struct Checker<'a> {
    file: &'a SourceFile,
    registry: &'a Registry,
    params: &'a [ResolvedParam],
    drafts: &'a [Draft],
    index: &'a BTreeMap<&'a str, usize>,
    used_params: BTreeSet<String>,
    used_env: BTreeSet<String>,
    diags: &'a mut Vec<Diagnostic>,
}

impl Checker<'_> {
    fn origin(&self, node: &Node, text: &str) -> Origin {
        Origin::locate(&self.file.text, node.span, text)
    }

    fn template(&mut self, node: &Node, text: &str) -> Option<Template> {
        match parse_template(text, self.origin(node, text)) {
            Ok(t) => Some(t),
            Err(e) => {
                self.diags.push(
                    Diagnostic::error("bad-expression", e.message)
                        .at(e.span)
                        .hint_opt(e.hint),
                );
                None
            }
        }
    }

    /// Reads a stage's `for_each:` (before any stage is checked, so fan-in can see it).
    fn for_each(&mut self, i: usize) -> Option<ForEach> {
        let node = self.drafts[i].spec.for_each.as_ref()?;
        match &node.kind {
            NodeKind::Seq(items) => {
                let vals: Vec<Val> = items.iter().map(literal_val).collect();
                let item = common_type(&vals);
                Some(ForEach::Literal { items: vals, item })
            }
            NodeKind::Str(text) if is_template(text) => {
                let template = self.template(node, text)?;
                let Some(expr) = template.as_single_expr().cloned() else {
                    self.diags.push(
                        Diagnostic::error("fan-out", "`for_each` takes one expression that gives a list")
                            .at(node.span)
                            .hint("write `for_each: ${{ stages.ID.outputs.PORT }}` with nothing around it"),
                    );
                    return None;
                };
                Some(ForEach::Expr {
                    expr,
                    item: Type::Any,
                })
            }
            _ => {
                self.diags.push(
                    Diagnostic::error(
                        "fan-out",
                        format!("`for_each` needs a list, found {}", node.describe()),
                    )
                    .at(node.span)
                    .hint("give a list (`[1, 2, 3]`) or an expression that gives one"),
                );
                None
            }
        }
    }

    fn check_stage(&mut self, i: usize, fan_outs: &[Option<ForEach>]) -> Checked {
        let mut out = Checked::default();
        let draft = &self.drafts[i];
        let here = Here {
            index: i,
            for_each: fan_outs[i].as_ref(),
            fan_outs,
        };

        // `for_each` over an expression: its type must be a list; the item type follows.
        let mut item_type = here.for_each.map(|f| f.item_type().clone());
        if let Some(ForEach::Expr { expr, .. }) = here.for_each {
            let outer = Here {
                index: i,
                for_each: None,
                fan_outs,
            };
            if let Some(ty) = self.type_of(expr, &outer, &mut out.deps) {
                match ty {
                    Type::List(item) => item_type = Some(*item),
                    Type::Any => {}
                    other => self.diags.push(
                        Diagnostic::error(
                            "fan-out",
                            format!("`for_each` needs a list, but `{expr}` is {other}"),
                        )
                        .at(expr.span)
                        .hint(
                            "fan out over a list: a list parameter or an output of type list<...>",
                        ),
                    ),
                }
            }
        }
        let item_fe = here.for_each.map(|f| match f {
            ForEach::Expr { expr, .. } => ForEach::Expr {
                expr: expr.clone(),
                item: item_type.clone().unwrap_or(Type::Any),
            },
            lit => lit.clone(),
        });
        let here = Here {
            for_each: item_fe.as_ref(),
            ..here
        };

        if let Some(needs) = &draft.spec.needs {
            let items: Vec<&Node> = match &needs.kind {
                NodeKind::Seq(items) => items.iter().collect(),
                _ => vec![needs],
            };
            for n in items {
                let Some(name) = n.as_str() else {
                    self.diags.push(
                        Diagnostic::error(
                            "wrong-type",
                            format!("`needs` lists stage ids, found {}", n.describe()),
                        )
                        .at(n.span),
                    );
                    continue;
                };
                match self.index.get(name) {
                    Some(&from) => out.deps.push(Dep {
                        from,
                        kind: Dependency::Order,
                        span: n.span,
                    }),
                    None => self.unknown_stage(name, n.span),
                }
            }
        }

        if let Some(when) = &draft.spec.when {
            match parse_condition(
                &when.value,
                Origin::locate(&self.file.text, when.span, &when.value),
            ) {
                Ok(expr) => {
                    if let Some(ty) = self.type_of(&expr, &here, &mut out.deps)
                        && !Type::Bool.accepts(&ty)
                    {
                        self.diags.push(
                            Diagnostic::error(
                                "wrong-type",
                                format!("`when` needs a condition, but `{expr}` is {ty}"),
                            )
                            .at(expr.span)
                            .hint("compare it, e.g. `${{ cycle.index > 0 }}`"),
                        );
                    }
                    out.when = Some(expr);
                }
                Err(e) => self.diags.push(
                    Diagnostic::error("bad-expression", e.message)
                        .at(e.span)
                        .hint_opt(e.hint),
                ),
            }
        }

        let Some(settings) = &draft.settings else {
            return out;
        };
        let inputs = settings.inputs();
        let Some(with) = draft.spec.with.as_ref() else {
            return out;
        };
        let Some(entries) = with.as_map() else {
            return out;
        };
        for (key, value) in entries {
            let Some(key_name) = key.as_str() else {
                continue;
            };
            if let Some(port) = inputs.iter().find(|p| p.name == key_name) {
                self.check_port(port, value, &here, &mut out);
            } else {
                self.check_setting(key_name, value, &here, &mut out);
            }
        }
        out
    }

    fn check_port(&mut self, port: &Port, node: &Node, here: &Here, out: &mut Checked) {
        let stage = &self.drafts[here.index].id;
        let template = match &node.kind {
            NodeKind::Str(text) if is_template(text) => self.template(node, text),
            _ => {
                self.diags.push(
                    Diagnostic::error(
                        "port-value",
                        format!(
                            "input `{}` of stage `{stage}` takes a reference, found {}",
                            port.name,
                            node.describe()
                        ),
                    )
                    .at(node.span)
                    .hint(format!(
                        "connect it to an output of type {}: `${{{{ stages.ID.outputs.PORT }}}}`",
                        port.ty
                    )),
                );
                return;
            }
        };
        let Some(template) = template else { return };
        let Some(expr) = template.as_single_expr().cloned() else {
            self.diags.push(
                Diagnostic::error(
                    "port-value",
                    format!(
                        "input `{}` takes one reference, not text around it",
                        port.name
                    ),
                )
                .at(node.span)
                .hint("write only `${{ stages.ID.outputs.PORT }}`"),
            );
            return;
        };
        if let Some(given) = self.type_of(&expr, here, &mut out.deps)
            && !port.ty.accepts(&given)
        {
            self.diags.push(port_mismatch(stage, port, &expr, &given));
        }
        out.bindings.push(Binding {
            port: port.name,
            ty: port.ty.clone(),
            template: template.clone(),
        });
        out.templates.push((port.name.to_owned(), template));
    }

    fn check_setting(&mut self, key: &str, node: &Node, here: &Here, out: &mut Checked) {
        for (n, text) in template_strings(node) {
            let Some(template) = self.template(n, &text) else {
                continue;
            };
            let single = template.as_single_expr().is_some();
            for expr in template.exprs() {
                let Some(ty) = self.type_of(expr, here, &mut out.deps) else {
                    continue;
                };
                if let Type::Named(name) = &ty
                    && !self.registry.is_interpolable(&ty)
                {
                    self.diags.push(
                        Diagnostic::error("port-value", format!("`{expr}` is a {name}: artifacts flow only into input ports"))
                            .at(expr.span)
                            .hint(format!("`{key}` is a plain setting of `{}`; pass the {name} to one of its inputs", self.drafts[here.index].id)),
                    );
                } else if !single && !self.registry.is_interpolable(&ty) {
                    self.diags.push(
                        Diagnostic::error(
                            "wrong-type",
                            format!("`{expr}` is {ty} and cannot be written into text"),
                        )
                        .at(expr.span),
                    );
                }
            }
            out.templates.push((key.to_owned(), template));
        }
    }

    /// Resources are resolved before any stage runs: only `params` and `env` are readable.
    fn check_resources(&mut self, node: &Node) {
        for (n, text) in template_strings(node) {
            let Some(template) = self.template(n, &text) else {
                continue;
            };
            for expr in template.exprs() {
                for path in expr.paths() {
                    match path[0].name.as_str() {
                        "params" | "env" => {}
                        other => {
                            self.diags.push(
                                Diagnostic::error("bad-reference", format!("`{other}` cannot be read in `resources:`"))
                                    .at(path[0].span)
                                    .hint("resources are set up before any stage runs: read `params.NAME` or `env.NAME`"),
                            );
                            continue;
                        }
                    }
                    let here = Here {
                        index: usize::MAX,
                        for_each: None,
                        fan_outs: &[],
                    };
                    let mut deps = Vec::new();
                    if let Some(ty) = self.resolve_path(path, &here, &mut deps)
                        && !self.registry.is_interpolable(&ty)
                    {
                        self.diags.push(
                            Diagnostic::error(
                                "wrong-type",
                                format!("`{}` is {ty} and cannot be written into text", join(path)),
                            )
                            .at(expr.span),
                        );
                    }
                }
            }
        }
    }

    fn unknown_stage(&mut self, name: &str, span: Span) {
        let names: Vec<&str> = self.index.keys().copied().collect();
        self.diags.push(
            Diagnostic::error("unknown-stage", format!("there is no stage `{name}`"))
                .at(span)
                .hint_opt(suggestion(name, &names)),
        );
    }

    /// The type of an expression; `None` when an error was reported (or a stage it reads
    /// could not be read).
    fn type_of(&mut self, expr: &Expr, here: &Here, deps: &mut Vec<Dep>) -> Option<Type> {
        match &expr.kind {
            ExprKind::Literal(Literal::Int(_)) => Some(Type::Int),
            ExprKind::Literal(Literal::Float(_)) => Some(Type::Float),
            ExprKind::Literal(Literal::Str(_)) => Some(Type::Text),
            ExprKind::Literal(Literal::Bool(_)) => Some(Type::Bool),
            ExprKind::Literal(Literal::Null) => Some(Type::Any),
            ExprKind::Path(path) => self.resolve_path(path, here, deps),
            ExprKind::Not(inner) => {
                let ty = self.type_of(inner, here, deps)?;
                self.expect(&Type::Bool, &ty, inner, "`!` applies to a condition")?;
                Some(Type::Bool)
            }
            ExprKind::Binary(op, a, b) => {
                let (ta, tb) = (self.type_of(a, here, deps), self.type_of(b, here, deps));
                let (ta, tb) = (ta?, tb?);
                match op {
                    BinOp::And | BinOp::Or => {
                        let why = format!("`{}` joins conditions", op.symbol());
                        self.expect(&Type::Bool, &ta, a, &why)?;
                        self.expect(&Type::Bool, &tb, b, &why)?;
                    }
                    BinOp::Eq | BinOp::Ne => {
                        let comparable = ta.accepts(&tb)
                            || tb.accepts(&ta)
                            || (self.registry.is_interpolable(&ta)
                                && self.registry.is_interpolable(&tb)
                                && (ta == Type::Text || tb == Type::Text));
                        if !comparable {
                            self.diags.push(
                                Diagnostic::error(
                                    "wrong-type",
                                    format!("cannot compare {ta} with {tb}"),
                                )
                                .at(Span::new(a.span.start, b.span.end)),
                            );
                            return None;
                        }
                    }
                    _ => {
                        for (ty, e) in [(&ta, a), (&tb, b)] {
                            if !ty.is_numeric() && *ty != Type::Duration {
                                self.diags.push(
                                    Diagnostic::error(
                                        "wrong-type",
                                        format!(
                                            "`{}` compares numbers, but `{e}` is {ty}",
                                            op.symbol()
                                        ),
                                    )
                                    .at(e.span),
                                );
                                return None;
                            }
                        }
                    }
                }
                Some(Type::Bool)
            }
        }
    }

    fn expect(&mut self, want: &Type, got: &Type, expr: &Expr, why: &str) -> Option<()> {
        if want.accepts(got) {
            return Some(());
        }
        self.diags.push(
            Diagnostic::error("wrong-type", format!("{why}, but `{expr}` is {got}")).at(expr.span),
        );
        None
    }

    fn resolve_path(&mut self, path: &[Segment], here: &Here, deps: &mut Vec<Dep>) -> Option<Type> {
        let head = &path[0];
        let need = |this: &mut Self, at: usize, what: &str, after: &Segment| -> Option<()> {
            if path.len() > at {
                return Some(());
            }
            this.diags.push(
                Diagnostic::error(
                    "bad-reference",
                    format!("`{}` is incomplete: expected {what} after it", join(path)),
                )
                .at(after.span),
            );
            None
        };
        let too_long = |this: &mut Self, len: usize| -> Option<()> {
            if path.len() <= len {
                return Some(());
            }
            this.diags.push(
                Diagnostic::error(
                    "bad-reference",
                    format!("`{}` has nothing under it", join(&path[..len])),
                )
                .at(path[len].span),
            );
            None
        };
        match head.name.as_str() {
            "params" => {
                need(self, 1, "a parameter name", head)?;
                let name = &path[1];
                too_long(self, 2)?;
                let Some(p) = self.params.iter().find(|p| p.name == name.name) else {
                    let names: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                    self.diags.push(
                        Diagnostic::error(
                            "unknown-param",
                            format!("there is no parameter `{}`", name.name),
                        )
                        .at(name.span)
                        .hint(
                            suggestion(&name.name, &names)
                                .unwrap_or_else(|| "declare it under `params:`".into()),
                        ),
                    );
                    return None;
                };
                self.used_params.insert(p.name.clone());
                Some(p.ty.clone())
            }
            "cycle" => {
                need(self, 1, "`window`, `previous_window` or `index`", head)?;
                too_long(self, 2)?;
                match path[1].name.as_str() {
                    "window" | "previous_window" | "index" => Some(Type::Int),
                    other => {
                        self.diags.push(
                            Diagnostic::error("bad-reference", format!("`cycle` has no `{other}`"))
                                .at(path[1].span)
                                .hint_opt(suggestion(
                                    other,
                                    &["window", "previous_window", "index"],
                                )),
                        );
                        None
                    }
                }
            }
            "env" => {
                need(self, 1, "a variable name", head)?;
                too_long(self, 2)?;
                self.used_env.insert(path[1].name.clone());
                Some(Type::Text)
            }
            "item" => {
                let Some(fe) = here.for_each else {
                    self.diags.push(
                        Diagnostic::error(
                            "bad-reference",
                            "`item` exists only in a stage with `for_each`",
                        )
                        .at(head.span)
                        .hint("add `for_each:` to this stage, or read the list itself"),
                    );
                    return None;
                };
                let item = fe.item_type().clone();
                if path.len() == 1 {
                    return Some(item);
                }
                too_long(self, 2)?;
                let field = &path[1];
                match &item {
                    Type::Any => Some(Type::Any),
                    Type::Named(name) => {
                        let fields = self
                            .registry
                            .type_def(name)
                            .map(|d| d.fields.clone())
                            .unwrap_or_default();
                        if let Some((_, ty)) = fields.iter().find(|(f, _)| *f == field.name) {
                            return Some(ty.clone());
                        }
                        let names: Vec<&str> = fields.iter().map(|(f, _)| *f).collect();
                        self.diags.push(
                            Diagnostic::error(
                                "bad-reference",
                                format!("a {name} has no field `{}`", field.name),
                            )
                            .at(field.span)
                            .hint_opt(suggestion(&field.name, &names)),
                        );
                        None
                    }
                    other => {
                        self.diags.push(
                            Diagnostic::error(
                                "bad-reference",
                                format!("the items are {other} and have no fields"),
                            )
                            .at(field.span),
                        );
                        None
                    }
                }
            }
            "stages" => {
                need(self, 1, "a stage id", head)?;
                let id = &path[1];
                let Some(&from) = self.index.get(id.name.as_str()) else {
                    self.unknown_stage(&id.name, id.span);
                    return None;
                };
                need(self, 2, "`outputs`", id)?;
                if path[2].name != "outputs" {
                    self.diags.push(
                        Diagnostic::error(
                            "bad-reference",
                            format!(
                                "expected `outputs` after `stages.{}`, found `{}`",
                                id.name, path[2].name
                            ),
                        )
                        .at(path[2].span)
                        .hint(format!("write `stages.{}.outputs.PORT`", id.name)),
                    );
                    return None;
                }
                need(self, 3, "a port name", &path[2])?;
                too_long(self, 4)?;
                let port_seg = &path[3];
                let span = Span::new(path[0].span.start, port_seg.span.end);
                deps.push(Dep {
                    from,
                    kind: Dependency::Data {
                        port: port_seg.name.clone(),
                    },
                    span,
                });
                let source = &self.drafts[from];
                let settings = source.settings.as_ref()?;
                let outputs = settings.outputs();
                let Some(port) = outputs.iter().find(|p| p.name == port_seg.name) else {
                    let names: Vec<&str> = outputs.iter().map(|p| p.name).collect();
                    let kind = source.kind.map_or("?", |k| k.0);
                    self.diags.push(
                        Diagnostic::error(
                            "unknown-port",
                            format!(
                                "stage `{}` ({kind}) has no output `{}`",
                                id.name, port_seg.name
                            ),
                        )
                        .at(port_seg.span)
                        .hint(
                            suggestion(&port_seg.name, &names)
                                .unwrap_or_else(|| "it has no outputs".to_owned()),
                        ),
                    );
                    return None;
                };
                let fanned = here.fan_outs[from].as_ref();
                let same_fan = match (fanned, here.for_each) {
                    (Some(a), Some(b)) => a.key() == b.key(),
                    _ => false,
                };
                Some(match fanned {
                    Some(_) if !same_fan => Type::list(port.ty.clone()),
                    _ => port.ty.clone(),
                })
            }
            other => {
                let roots = ["params", "stages", "cycle", "env", "item"];
                self.diags.push(
                    Diagnostic::error("bad-reference", format!("unknown name `{other}`"))
                        .at(head.span)
                        .hint(suggestion(other, &roots).unwrap_or_else(|| {
                            "references start with `params.`, `stages.`, `cycle.`, `env.` or `item`".into()
                        })),
                );
                None
            }
        }
    }
}

/// Every string in a tree that holds a `${{ }}` template, with its node.
fn template_strings(node: &Node) -> Vec<(&Node, String)> {
    let mut strings = Vec::new();
    node.walk(&mut |n| {
        if let NodeKind::Str(text) = &n.kind
            && is_template(text)
        {
            strings.push((n, text.clone()));
        }
    });
    strings
}

fn port_mismatch(stage: &str, port: &Port, expr: &Expr, given: &Type) -> Diagnostic {
    let base = Diagnostic::error(
        "port-type",
        format!(
            "input `{}` of stage `{stage}` takes {}, but `{expr}` is {given}",
            port.name, port.ty
        ),
    )
    .at(expr.span);
    match (&port.ty, given) {
        (want, Type::List(item)) if want.accepts(item) => base
            .hint("the source stage runs `for_each`, so its output is a list; fan this stage out over the same list, or use an input that takes a list"),
        (Type::List(item), got) if item.accepts(got) => base
            .hint(format!("this input takes a list of {item}; read it from a stage that runs `for_each`, or a list output")),
        _ => base.hint(format!("connect an output of type {}", port.ty)),
    }
}

fn join(path: &[Segment]) -> String {
    path.iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

fn literal_val(node: &Node) -> Val {
    match &node.kind {
        NodeKind::Null => Val::Null,
        NodeKind::Bool(b) => Val::Bool(*b),
        NodeKind::Int(i) => Val::Int(*i),
        NodeKind::Float(f) => Val::Float(*f),
        NodeKind::Str(s) => Val::Str(s.clone()),
        NodeKind::Seq(items) => Val::List(items.iter().map(literal_val).collect()),
        NodeKind::Map(_) => Val::Str(node.to_json().to_string()),
    }
}

fn common_type(vals: &[Val]) -> Type {
    let ty = |v: &Val| match v {
        Val::Int(_) => Type::Int,
        Val::Float(_) => Type::Float,
        Val::Str(_) => Type::Text,
        Val::Bool(_) => Type::Bool,
        _ => Type::Any,
    };
    let mut types = vals.iter().map(ty);
    match types.next() {
        Some(first) if types.all(|t| t == first) => first,
        _ => Type::Any,
    }
}

fn report_cycles(
    graph: &DiGraph<usize, Dependency>,
    drafts: &[Draft],
    edge_spans: &BTreeMap<(usize, usize), Span>,
    diags: &mut Vec<Diagnostic>,
) {
    for scc in tarjan_scc(graph) {
        let members: BTreeSet<usize> = scc.iter().map(|n| graph[*n]).collect();
        let self_loop = scc.len() == 1 && edge_spans.contains_key(&(graph[scc[0]], graph[scc[0]]));
        if scc.len() < 2 && !self_loop {
            continue;
        }
        // Walk the loop from its first stage in the file, always taking the first next member.
        let start = *members.iter().next().unwrap_or(&0);
        let mut path = vec![start];
        let mut current = start;
        loop {
            let next = edge_spans
                .keys()
                .filter(|(from, to)| *from == current && members.contains(to))
                .map(|(_, to)| *to)
                .find(|to| *to == start || !path.contains(to))
                .or_else(|| {
                    edge_spans
                        .keys()
                        .find(|(f, t)| *f == current && members.contains(t))
                        .map(|(_, t)| *t)
                });
            match next {
                Some(n) if n == start || path.contains(&n) => {
                    path.push(n);
                    break;
                }
                Some(n) => {
                    path.push(n);
                    current = n;
                }
                None => break,
            }
        }
        let names: Vec<&str> = path.iter().map(|i| drafts[*i].id.as_str()).collect();
        let closing = path.windows(2).last().map(|w| (w[0], w[1]));
        let span = closing
            .and_then(|(from, to)| edge_spans.get(&(from, to)).copied())
            .unwrap_or(drafts[start].id_span);
        let message = if self_loop {
            format!("stage `{}` reads its own output", names[0])
        } else {
            format!("dependency cycle: {}", names.join(" → "))
        };
        diags.push(
            Diagnostic::error("cycle", message)
                .at(span)
                .hint("a stage can read its previous cycle's outputs through cycle state, not through a reference; break the loop"),
        );
    }
}

/// Levels (longest path from a source) and the run order: by level, then by id.
fn schedule_levels(
    drafts: &[Draft],
    checked: &[Checked],
) -> (Vec<usize>, Vec<Vec<usize>>, Vec<usize>) {
    let n = drafts.len();
    let mut level = vec![0usize; n];
    let mut indegree: Vec<usize> = checked
        .iter()
        .map(|c| c.deps.iter().map(|d| d.from).collect::<BTreeSet<_>>().len())
        .collect();
    let mut dependants: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); n];
    for (to, c) in checked.iter().enumerate() {
        for d in &c.deps {
            dependants[d.from].insert(to);
        }
    }
    let mut ready: BTreeSet<(&str, usize)> = (0..n)
        .filter(|i| indegree[*i] == 0)
        .map(|i| (drafts[i].id.as_str(), i))
        .collect();
    while let Some((_, i)) = ready.pop_first() {
        for &to in &dependants[i] {
            level[to] = level[to].max(level[i] + 1);
            indegree[to] -= 1;
            if indegree[to] == 0 {
                ready.insert((drafts[to].id.as_str(), to));
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| (level[a], &drafts[a].id).cmp(&(level[b], &drafts[b].id)));
    let depth = level.iter().max().map_or(0, |m| m + 1);
    let mut levels = vec![Vec::new(); depth];
    for &i in &order {
        levels[level[i]].push(i);
    }
    (order, levels, level)
}

impl Pipeline {
    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.stage_index(id).map(|i| &self.stages[i])
    }

    pub fn stage_index(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// A stage's position in run order.
    pub fn rank(&self, index: usize) -> usize {
        self.rank[index]
    }

    pub fn param(&self, name: &str) -> Option<&ResolvedParam> {
        self.params.iter().find(|p| p.name == name)
    }
}

impl Stage {
    pub fn skips_on_error(&self) -> bool {
        self.spec.on_error == OnError::Skip
    }
}

#[cfg(test)]
mod tests {
    use schemars::JsonSchema;
    use serde::Deserialize;

    use crate::plan::{Effect, PlanContext};
    use crate::registry::{Input, Port, Registry, StageKind};
    use crate::types::{Type, TypeDef};
    use crate::value::Value;
    use crate::{Override, load};

    /// A test kind: reads an optional `thing`, emits `thing` and `n`.
    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // input ports are bound by the graph from `with:`, not read here
    struct Make {
        #[serde(default)]
        thing: Option<Input>,
        #[serde(default)]
        things: Option<Input>,
        #[serde(default)]
        label: Option<Value<String>>,
    }

    impl StageKind for Make {
        const NAME: &'static str = "make";
        const DESCRIPTION: &'static str = "test";
        fn inputs(&self) -> Vec<Port> {
            vec![
                Port::new("thing", Type::Named("thing"), ""),
                Port::new("things", Type::list(Type::Named("thing")), ""),
            ]
        }
        fn outputs(&self) -> Vec<Port> {
            vec![
                Port::new("thing", Type::Named("thing"), ""),
                Port::new("n", Type::Int, ""),
                Port::new("items", Type::list(Type::Named("rec")), ""),
            ]
        }
        fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
            vec![Effect::compute(
                None,
                cx.render_opt(&self.label).unwrap_or_default(),
            )]
        }
    }

    fn registry() -> Registry {
        let mut r = Registry::new();
        r.register_type(TypeDef::artifact("thing", ""));
        r.register_type(TypeDef::record("rec", "", vec![("uid", Type::Int)]));
        r.register::<Make>();
        r
    }

    fn check(stages: &str) -> crate::Loaded {
        let text = format!(
            "version: 1\nname: t\nrole: miner\nparams:\n  k: {{ type: int, default: 2 }}\nstages:\n{stages}"
        );
        load("t.yaml", &text, &registry(), &[])
    }

    fn codes(loaded: &crate::Loaded) -> Vec<&'static str> {
        loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.code)
            .collect()
    }

    #[test]
    fn references_make_edges_and_levels() {
        let loaded = check(
            "  c: { uses: make, with: { thing: '${{ stages.b.outputs.thing }}', label: '${{ params.k }}' } }\n  b: { uses: make, with: { thing: '${{ stages.a.outputs.thing }}' } }\n  a: { uses: make }\n  z: { uses: make, needs: a }\n",
        );
        assert!(!loaded.has_errors(), "{}", loaded.render());
        let p = loaded.pipeline.as_ref().unwrap();
        let order: Vec<&str> = p.order.iter().map(|&i| p.stages[i].id.as_str()).collect();
        assert_eq!(order, ["a", "b", "z", "c"]);
        assert_eq!(p.levels.len(), 3);
        assert_eq!(p.graph.edge_count(), 3);
    }

    #[test]
    fn fan_out_gives_a_list_and_items_have_fields() {
        let loaded = check(
            "  src: { uses: make }\n  each:\n    uses: make\n    for_each: '${{ stages.src.outputs.items }}'\n    with: { label: 'x-${{ item.uid }}' }\n  all: { uses: make, with: { things: '${{ stages.each.outputs.thing }}' } }\n",
        );
        assert!(!loaded.has_errors(), "{}", loaded.render());
        let bad = check(
            "  src: { uses: make }\n  each:\n    uses: make\n    for_each: '${{ stages.src.outputs.items }}'\n    with: { label: 'x-${{ item.id }}' }\n",
        );
        assert_eq!(codes(&bad), ["bad-reference"]);
        let error = bad.diagnostics.iter().find(|d| d.is_error()).unwrap();
        assert!(
            error.hint.as_deref().unwrap_or("").contains("uid"),
            "{:?}",
            error.hint
        );
    }

    #[test]
    fn stages_fanned_out_over_the_same_list_pair_item_by_item() {
        let loaded = check(
            "  src: { uses: make }\n  a:\n    uses: make\n    for_each: '${{ stages.src.outputs.items }}'\n  b:\n    uses: make\n    for_each: '${{ stages.src.outputs.items }}'\n    with: { thing: '${{ stages.a.outputs.thing }}' }\n",
        );
        assert!(!loaded.has_errors(), "{}", loaded.render());
    }

    #[test]
    fn conditions_are_typed() {
        let ok = check("  a: { uses: make, when: 'cycle.index > 0 && params.k != 3' }\n");
        assert!(!ok.has_errors(), "{}", ok.render());
        let bad = check("  a: { uses: make, when: \"params.k && true\" }\n");
        assert_eq!(codes(&bad), ["wrong-type"]);
        let cmp = check("  a: { uses: make, when: \"'x' < 2\" }\n");
        assert_eq!(codes(&cmp), ["wrong-type"]);
    }

    #[test]
    fn overrides_are_typed_and_suggested() {
        let text = "version: 1\nname: t\nrole: miner\nparams:\n  k: { type: int, default: 2 }\nstages:\n  a: { uses: make, with: { label: '${{ params.k }}' } }\n";
        let set: Vec<Override> = vec!["kk=3".parse().unwrap()];
        let loaded = load("t.yaml", text, &registry(), &set);
        assert_eq!(codes(&loaded), ["bad-set"]);
        assert_eq!(
            loaded.diagnostics[0].hint.as_deref(),
            Some("did you mean `k`?")
        );
        let ok = load("t.yaml", text, &registry(), &["k=5".parse().unwrap()]);
        let plan = ok.plan(&|_| false).unwrap();
        assert_eq!(plan.stages[0].effects[0].target, "5");
    }

    #[test]
    fn env_reads_come_from_expressions_not_text() {
        let loaded = check(
            "  # not env.IN_A_COMMENT\n  a: { uses: make, with: { label: '${{ env.RUN_LABEL }}' } }\n",
        );
        let env: Vec<&str> = loaded
            .pipeline
            .as_ref()
            .unwrap()
            .env
            .iter()
            .map(String::as_str)
            .collect();
        assert_eq!(env, ["RUN_LABEL"]);
    }

    #[test]
    fn a_long_loop_is_named_in_order() {
        let loaded = check(
            "  a: { uses: make, with: { thing: '${{ stages.c.outputs.thing }}' } }\n  b: { uses: make, with: { thing: '${{ stages.a.outputs.thing }}' } }\n  c: { uses: make, with: { thing: '${{ stages.b.outputs.thing }}' } }\n",
        );
        let cycle = loaded
            .diagnostics
            .iter()
            .find(|d| d.code == "cycle")
            .unwrap();
        assert_eq!(cycle.message, "dependency cycle: a → b → c → a");
    }
}
