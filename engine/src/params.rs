//! Parameters: their types, defaults, and `--set NAME=VALUE` overrides.

use serde::Serialize;

use crate::diag::{Diagnostic, suggestion};
use crate::expr::Val;
use crate::node::{Node, NodeKind, Spanned};
use crate::source::Span;
use crate::spec::{ParamSpec, ParamType};
use crate::types::Type;
use crate::value::Duration;

/// One `--set NAME=VALUE` from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    pub name: String,
    pub value: String,
}

impl std::str::FromStr for Override {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() => Ok(Override {
                name: name.trim().to_owned(),
                value: value.to_owned(),
            }),
            _ => Err(format!("`{text}` is not NAME=VALUE")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamSource {
    Default,
    Set,
    /// No default and not set: the pipeline cannot run until it is.
    Missing,
}

/// A parameter with its value for this plan or run.
#[derive(Clone, Debug)]
pub struct ResolvedParam {
    pub name: String,
    pub span: Span,
    pub ty: Type,
    pub value: Option<Val>,
    pub source: ParamSource,
    pub description: Option<String>,
}

pub fn param_type(spec: &ParamSpec) -> Type {
    let scalar = |t: ParamType| match t {
        ParamType::Int => Type::Int,
        ParamType::Float => Type::Float,
        ParamType::String => Type::Text,
        ParamType::Bool => Type::Bool,
        ParamType::Duration => Type::Duration,
        ParamType::List => Type::list(Type::Any),
    };
    match spec.ty.value {
        ParamType::List => Type::list(spec.items.as_ref().map_or(Type::Any, |i| scalar(i.value))),
        other => scalar(other),
    }
}

/// Resolves every parameter: defaults checked against their types, then overrides applied.
pub fn resolve(
    params: &[(Spanned<String>, ParamSpec)],
    overrides: &[Override],
    diags: &mut Vec<Diagnostic>,
) -> Vec<ResolvedParam> {
    let mut resolved: Vec<ResolvedParam> = params
        .iter()
        .map(|(name, spec)| {
            let ty = param_type(spec);
            if let Some(items) = &spec.items
                && spec.ty.value != ParamType::List
            {
                diags.push(
                    Diagnostic::error("invalid-value", "`items` is only for `type: list`")
                        .at(items.span),
                );
            }
            let value = spec
                .default
                .as_ref()
                .and_then(|node| match value_from_node(&ty, node) {
                    Ok(v) => Some(v),
                    Err(d) => {
                        diags.push(d);
                        None
                    }
                });
            let source = if value.is_some() {
                ParamSource::Default
            } else {
                ParamSource::Missing
            };
            ResolvedParam {
                name: name.value.clone(),
                span: name.span,
                ty,
                value,
                source,
                description: spec.description.clone(),
            }
        })
        .collect();
    for o in overrides {
        let Some(param) = resolved.iter_mut().find(|p| p.name == o.name) else {
            let names: Vec<&str> = params.iter().map(|(n, _)| n.value.as_str()).collect();
            diags.push(
                Diagnostic::error(
                    "bad-set",
                    format!(
                        "`--set {}`: the pipeline has no parameter `{}`",
                        o.name, o.name
                    ),
                )
                .hint_opt(suggestion(&o.name, &names).or(Some("it declares no parameters".into()))),
            );
            continue;
        };
        match value_from_text(&param.ty, &o.value) {
            Ok(v) => {
                param.value = Some(v);
                param.source = ParamSource::Set;
            }
            Err(why) => diags.push(
                Diagnostic::error("bad-set", format!("`--set {}={}`: {why}", o.name, o.value))
                    .at(param.span)
                    .hint(format!("`{}` is declared here as {}", param.name, param.ty)),
            ),
        }
    }
    resolved
}

fn value_from_node(ty: &Type, node: &Node) -> Result<Val, Diagnostic> {
    let mismatch = || {
        Diagnostic::error(
            "wrong-type",
            format!("the default should be {ty}, found {}", node.describe()),
        )
        .at(node.span)
    };
    Ok(match (ty, &node.kind) {
        (Type::Int, NodeKind::Int(i)) => Val::Int(*i),
        (Type::Float, NodeKind::Int(i)) => Val::Float(*i as f64),
        (Type::Float, NodeKind::Float(f)) => Val::Float(*f),
        (Type::Bool, NodeKind::Bool(b)) => Val::Bool(*b),
        (Type::Text, NodeKind::Str(s)) => Val::Str(s.clone()),
        (Type::Text, NodeKind::Int(_) | NodeKind::Float(_) | NodeKind::Bool(_)) => {
            Val::Str(node.scalar_text())
        }
        (Type::Duration, NodeKind::Str(s)) => {
            let d: Duration = s.parse().map_err(|e: crate::value::BadDuration| {
                Diagnostic::error("bad-duration", e.to_string()).at(node.span)
            })?;
            Val::Str(d.to_string())
        }
        (Type::List(of), NodeKind::Seq(items)) => Val::List(
            items
                .iter()
                .map(|n| value_from_node(of, n))
                .collect::<Result<_, _>>()?,
        ),
        (Type::Any, _) => scalar_val(node),
        _ => return Err(mismatch()),
    })
}

fn scalar_val(node: &Node) -> Val {
    match &node.kind {
        NodeKind::Null => Val::Null,
        NodeKind::Bool(b) => Val::Bool(*b),
        NodeKind::Int(i) => Val::Int(*i),
        NodeKind::Float(f) => Val::Float(*f),
        NodeKind::Str(s) => Val::Str(s.clone()),
        NodeKind::Seq(items) => Val::List(items.iter().map(scalar_val).collect()),
        NodeKind::Map(_) => Val::Str(node.to_json().to_string()),
    }
}

/// Parses a `--set` value as the parameter's type.
pub fn value_from_text(ty: &Type, text: &str) -> Result<Val, String> {
    let text = text.trim();
    match ty {
        Type::Int => text
            .parse()
            .map(Val::Int)
            .map_err(|_| format!("`{text}` is not an integer")),
        Type::Float => text
            .parse()
            .map(Val::Float)
            .map_err(|_| format!("`{text}` is not a number")),
        Type::Bool => match text {
            "true" => Ok(Val::Bool(true)),
            "false" => Ok(Val::Bool(false)),
            _ => Err(format!("`{text}` is not `true` or `false`")),
        },
        Type::Duration => text
            .parse::<Duration>()
            .map(|d| Val::Str(d.to_string()))
            .map_err(|e| e.to_string()),
        Type::List(of) => {
            let inner = text
                .strip_prefix('[')
                .and_then(|t| t.strip_suffix(']'))
                .unwrap_or(text);
            if inner.trim().is_empty() {
                return Ok(Val::List(Vec::new()));
            }
            inner
                .split(',')
                .map(|item| value_from_text(of, item))
                .collect::<Result<_, _>>()
                .map(Val::List)
        }
        Type::Text | Type::Any | Type::Named(_) => Ok(Val::Str(text.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_values_are_typed() {
        assert_eq!(value_from_text(&Type::Int, "7"), Ok(Val::Int(7)));
        assert!(value_from_text(&Type::Int, "seven").is_err());
        assert_eq!(
            value_from_text(&Type::list(Type::Int), "[1, 2,3]"),
            Ok(Val::List(vec![Val::Int(1), Val::Int(2), Val::Int(3)]))
        );
        assert_eq!(
            value_from_text(&Type::Duration, "90s"),
            Ok(Val::Str("1m30s".into()))
        );
        assert!("novalue".parse::<Override>().is_err());
        assert_eq!("a=b=c".parse::<Override>().unwrap().value, "b=c");
    }
}
