//! Expressions: `${{ ... }}` templates inside strings, and the small language inside them —
//! references (`params.x`, `stages.ID.outputs.PORT`, `cycle.window`, `env.NAME`, `item.FIELD`),
//! literals, `==  !=  <  <=  >  >=  &&  ||  !` and parentheses.
//!
//! Every node of a parsed expression carries its byte span in the pipeline file, so an error
//! points at the offending token, not at the start of the expression.

use std::fmt;

use crate::source::Span;

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Literal(Literal),
    /// A dotted reference; each segment keeps its own span.
    Path(Vec<Segment>),
    Not(Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub name: String,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Literal {
    Int(i64),
    Float(f64),
    Str(String),
    Bool(bool),
    Null,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }

    fn precedence(self) -> u8 {
        match self {
            BinOp::Or => 1,
            BinOp::And => 2,
            _ => 3,
        }
    }
}

/// An expression error, at the token that caused it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExprError {
    pub message: String,
    pub span: Span,
    pub hint: Option<String>,
}

impl ExprError {
    fn new(message: impl Into<String>, span: Span) -> Self {
        Self {
            message: message.into(),
            span,
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A string with `${{ ... }}` holes.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

impl Template {
    /// The expression when the template is exactly one `${{ ... }}` and nothing else.
    pub fn as_single_expr(&self) -> Option<&Expr> {
        match self.parts.as_slice() {
            [Part::Expr(e)] => Some(e),
            _ => None,
        }
    }

    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Text(_) => None,
        })
    }

    pub fn has_exprs(&self) -> bool {
        self.exprs().next().is_some()
    }
}

const OPEN: &str = "${{";
const CLOSE: &str = "}}";

/// Whether a string holds any `${{`.
pub fn is_template(text: &str) -> bool {
    text.contains(OPEN)
}

/// Maps offsets in a string's content to byte offsets in the file.
///
/// Exact when the content appears verbatim in the source (plain and most quoted scalars);
/// otherwise (escapes, block scalars) every offset maps to the scalar's start.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    base: usize,
    exact: bool,
}

impl Origin {
    pub fn exact(base: usize) -> Self {
        Self { base, exact: true }
    }

    /// Finds where `content` (the value of the scalar at `span`) sits in `source`.
    pub fn locate(source: &str, span: Span, content: &str) -> Self {
        let start = span.start.min(source.len());
        let base = match source.as_bytes().get(start) {
            Some(b'"' | b'\'') => start + 1,
            _ => start,
        };
        let exact = source.get(base..base + content.len()) == Some(content);
        Self {
            base: if exact { base } else { start },
            exact,
        }
    }

    fn span(&self, start: usize, end: usize) -> Span {
        if self.exact {
            Span::new(self.base + start, self.base + end)
        } else {
            Span::new(self.base, self.base + 1)
        }
    }
}

/// Parses a string into a template of text and expressions.
pub fn parse_template(text: &str, origin: Origin) -> Result<Template, ExprError> {
    let mut parts = Vec::new();
    let mut rest = 0;
    while let Some(found) = text[rest..].find(OPEN) {
        let open = rest + found;
        if open > rest {
            parts.push(Part::Text(text[rest..open].to_owned()));
        }
        let inner_start = open + OPEN.len();
        let Some(close) = text[inner_start..].find(CLOSE).map(|c| inner_start + c) else {
            return Err(ExprError::new(
                "`${{` is never closed",
                origin.span(open, open + OPEN.len()),
            )
            .hint("close the expression with `}}`"));
        };
        let expr = parse_expr_at(
            &text[inner_start..close],
            origin,
            inner_start,
            Span::new(open, close + CLOSE.len()),
        )?;
        parts.push(Part::Expr(expr));
        rest = close + CLOSE.len();
    }
    if rest < text.len() || parts.is_empty() {
        parts.push(Part::Text(text[rest..].to_owned()));
    }
    Ok(Template { parts })
}

/// Parses a condition: either one `${{ ... }}` or a bare expression.
pub fn parse_condition(text: &str, origin: Origin) -> Result<Expr, ExprError> {
    if !is_template(text) {
        return parse_expr_at(text, origin, 0, Span::new(0, text.len()));
    }
    let template = parse_template(text, origin)?;
    match template.as_single_expr() {
        Some(expr) => Ok(expr.clone()),
        None => Err(ExprError::new(
            "a condition must be one expression",
            origin.span(0, text.len()),
        )
        .hint("write `when: ${{ a == b }}` or `when: a == b`, without text around it")),
    }
}

fn parse_expr_at(
    text: &str,
    origin: Origin,
    offset: usize,
    whole: Span,
) -> Result<Expr, ExprError> {
    let tokens = lex(text, offset, origin)?;
    if tokens.is_empty() {
        return Err(
            ExprError::new("empty expression", origin.span(whole.start, whole.end))
                .hint("put a reference or a value inside, e.g. `${{ params.uid }}`"),
        );
    }
    let mut parser = Parser {
        tokens,
        pos: 0,
        origin,
        end: offset + text.len(),
    };
    let expr = parser.expr(0)?;
    match parser.peek() {
        None => Ok(expr),
        Some(tok) => Err(ExprError::new(
            format!("unexpected {} after the expression", tok.kind),
            tok.span,
        )
        .hint("join conditions with `&&` or `||`")),
    }
}

#[derive(Clone, Debug, PartialEq)]
enum TokKind {
    Ident(String),
    Int(i64),
    Float(f64),
    Str(String),
    Op(BinOp),
    Not,
    Dot,
    LParen,
    RParen,
}

impl fmt::Display for TokKind {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            TokKind::Ident(s) => write!(f, "`{s}`"),
            TokKind::Int(i) => write!(f, "`{i}`"),
            TokKind::Float(x) => write!(f, "`{x}`"),
            TokKind::Str(s) => write!(f, "'{s}'"),
            TokKind::Op(op) => write!(f, "`{}`", op.symbol()),
            TokKind::Not => f.write_str("`!`"),
            TokKind::Dot => f.write_str("`.`"),
            TokKind::LParen => f.write_str("`(`"),
            TokKind::RParen => f.write_str("`)`"),
        }
    }
}

#[derive(Clone, Debug)]
struct Token {
    kind: TokKind,
    span: Span,
}

fn lex(text: &str, offset: usize, origin: Origin) -> Result<Vec<Token>, ExprError> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let span = |a: usize, b: usize| origin.span(offset + a, offset + b);
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let two = bytes.get(i..i + 2);
        let kind = match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'(' => {
                i += 1;
                TokKind::LParen
            }
            b')' => {
                i += 1;
                TokKind::RParen
            }
            b'.' => {
                i += 1;
                TokKind::Dot
            }
            _ if two == Some(b"==") => {
                i += 2;
                TokKind::Op(BinOp::Eq)
            }
            _ if two == Some(b"!=") => {
                i += 2;
                TokKind::Op(BinOp::Ne)
            }
            _ if two == Some(b"<=") => {
                i += 2;
                TokKind::Op(BinOp::Le)
            }
            _ if two == Some(b">=") => {
                i += 2;
                TokKind::Op(BinOp::Ge)
            }
            _ if two == Some(b"&&") => {
                i += 2;
                TokKind::Op(BinOp::And)
            }
            _ if two == Some(b"||") => {
                i += 2;
                TokKind::Op(BinOp::Or)
            }
            b'<' => {
                i += 1;
                TokKind::Op(BinOp::Lt)
            }
            b'>' => {
                i += 1;
                TokKind::Op(BinOp::Gt)
            }
            b'!' => {
                i += 1;
                TokKind::Not
            }
            b'=' => {
                return Err(ExprError::new("`=` is not an operator", span(i, i + 1))
                    .hint("compare with `==`"));
            }
            b'&' | b'|' => {
                let op = if c == b'&' { "&&" } else { "||" };
                return Err(ExprError::new(
                    format!("unknown operator `{}`", c as char),
                    span(i, i + 1),
                )
                .hint(format!("did you mean `{op}`?")));
            }
            b'\'' | b'"' => {
                let quote = c;
                i += 1;
                let Some(len) = bytes[i..].iter().position(|&b| b == quote) else {
                    return Err(
                        ExprError::new("unterminated string", span(start, text.len()))
                            .hint(format!("close it with {}", quote as char)),
                    );
                };
                let s = text[i..i + len].to_owned();
                i += len + 1;
                TokKind::Str(s)
            }
            b'0'..=b'9' | b'-' => {
                i += 1;
                while i < bytes.len()
                    && (bytes[i].is_ascii_digit()
                        || bytes[i] == b'.'
                        || bytes[i] == b'_'
                        || bytes[i] == b'e')
                {
                    i += 1;
                }
                let raw = text[start..i].replace('_', "");
                if let Ok(int) = raw.parse::<i64>() {
                    TokKind::Int(int)
                } else if let Ok(float) = raw.parse::<f64>() {
                    TokKind::Float(float)
                } else {
                    return Err(ExprError::new(
                        format!("`{}` is not a number", &text[start..i]),
                        span(start, i),
                    ));
                }
            }
            _ if c.is_ascii_alphabetic() || c == b'_' => {
                while i < bytes.len()
                    && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-')
                {
                    i += 1;
                }
                TokKind::Ident(text[start..i].to_owned())
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                return Err(ExprError::new(
                    format!("unexpected character `{ch}`"),
                    span(i, i + ch.len_utf8()),
                ));
            }
        };
        tokens.push(Token {
            kind,
            span: span(start, i),
        });
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    origin: Origin,
    end: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let tok = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        tok
    }

    fn end_span(&self) -> Span {
        self.origin.span(self.end, self.end + 1)
    }

    fn expr(&mut self, min_prec: u8) -> Result<Expr, ExprError> {
        let mut left = self.unary()?;
        while let Some(Token {
            kind: TokKind::Op(op),
            ..
        }) = self.peek()
        {
            let op = *op;
            if op.precedence() <= min_prec {
                break;
            }
            self.pos += 1;
            let right = self.expr(op.precedence())?;
            if op.precedence() == 3
                && let Some(Token {
                    kind: TokKind::Op(next),
                    span,
                }) = self.peek()
                && next.precedence() == 3
            {
                return Err(ExprError::new("comparisons cannot be chained", *span)
                    .hint("join them with `&&`, e.g. `a < b && b < c`"));
            }
            let span = Span::new(left.span.start, right.span.end);
            left = Expr {
                kind: ExprKind::Binary(op, Box::new(left), Box::new(right)),
                span,
            };
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ExprError> {
        if let Some(Token {
            kind: TokKind::Not,
            span,
        }) = self.peek()
        {
            let start = span.start;
            self.pos += 1;
            let inner = self.unary()?;
            let span = Span::new(start, inner.span.end);
            return Ok(Expr {
                kind: ExprKind::Not(Box::new(inner)),
                span,
            });
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ExprError> {
        let Some(tok) = self.next() else {
            return Err(
                ExprError::new("the expression ends too early", self.end_span())
                    .hint("a value or a reference is missing here"),
            );
        };
        let literal = |l| {
            Ok(Expr {
                kind: ExprKind::Literal(l),
                span: tok.span,
            })
        };
        match tok.kind {
            TokKind::Int(i) => literal(Literal::Int(i)),
            TokKind::Float(f) => literal(Literal::Float(f)),
            TokKind::Str(ref s) => literal(Literal::Str(s.clone())),
            TokKind::Ident(ref id) if id == "true" => literal(Literal::Bool(true)),
            TokKind::Ident(ref id) if id == "false" => literal(Literal::Bool(false)),
            TokKind::Ident(ref id) if id == "null" => literal(Literal::Null),
            TokKind::Ident(name) => {
                let mut segments = vec![Segment {
                    name,
                    span: tok.span,
                }];
                while let Some(Token {
                    kind: TokKind::Dot,
                    span: dot,
                }) = self.peek()
                {
                    let dot = *dot;
                    self.pos += 1;
                    match self.next() {
                        Some(Token {
                            kind: TokKind::Ident(name),
                            span,
                        }) => segments.push(Segment { name, span }),
                        Some(other) => {
                            return Err(ExprError::new(
                                format!("expected a name after `.`, found {}", other.kind),
                                other.span,
                            ));
                        }
                        None => return Err(ExprError::new("expected a name after `.`", dot)),
                    }
                }
                let span = Span::new(
                    segments[0].span.start,
                    segments[segments.len() - 1].span.end,
                );
                Ok(Expr {
                    kind: ExprKind::Path(segments),
                    span,
                })
            }
            TokKind::LParen => {
                let inner = self.expr(0)?;
                match self.next() {
                    Some(Token {
                        kind: TokKind::RParen,
                        ..
                    }) => Ok(inner),
                    Some(other) => Err(ExprError::new(
                        format!("expected `)`, found {}", other.kind),
                        other.span,
                    )),
                    None => Err(ExprError::new("`(` is never closed", tok.span).hint("add a `)`")),
                }
            }
            other => Err(ExprError::new(
                format!("expected a value or a reference, found {other}"),
                tok.span,
            )),
        }
    }
}

impl Expr {
    /// Every reference path in the expression, in source order.
    pub fn paths(&self) -> Vec<&[Segment]> {
        let mut out = Vec::new();
        self.collect_paths(&mut out);
        out
    }

    fn collect_paths<'a>(&'a self, out: &mut Vec<&'a [Segment]>) {
        match &self.kind {
            ExprKind::Path(segments) => out.push(segments),
            ExprKind::Not(inner) => inner.collect_paths(out),
            ExprKind::Binary(_, a, b) => {
                a.collect_paths(out);
                b.collect_paths(out);
            }
            ExprKind::Literal(_) => {}
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.kind {
            ExprKind::Literal(Literal::Int(i)) => write!(f, "{i}"),
            ExprKind::Literal(Literal::Float(x)) => write!(f, "{x}"),
            ExprKind::Literal(Literal::Str(s)) => write!(f, "'{s}'"),
            ExprKind::Literal(Literal::Bool(b)) => write!(f, "{b}"),
            ExprKind::Literal(Literal::Null) => f.write_str("null"),
            ExprKind::Path(segments) => {
                let names: Vec<&str> = segments.iter().map(|s| s.name.as_str()).collect();
                f.write_str(&names.join("."))
            }
            ExprKind::Not(inner) => write!(f, "!{inner}"),
            ExprKind::Binary(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
        }
    }
}

/// A value: what expressions evaluate to and what stages pass each other. During planning,
/// `Unknown` stands for what is only known when the pipeline runs (a stage's output, a
/// cycle's window, a secret); while running, every value is known.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Val>),
    /// A record, such as a miner (`uid`, `hotkey`, ...).
    Map(std::collections::BTreeMap<String, Val>),
    /// Bytes in the run's content-addressed object store.
    Artifact(crate::runtime::ArtifactRef),
    Unknown(String),
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Val::Null => f.write_str("null"),
            Val::Bool(b) => write!(f, "{b}"),
            Val::Int(i) => write!(f, "{i}"),
            Val::Float(x) => write!(f, "{x}"),
            Val::Str(s) => f.write_str(s),
            Val::List(items) => {
                let items: Vec<String> = items.iter().map(Val::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
            Val::Map(_) => f.write_str(&self.to_json().to_string()),
            Val::Artifact(a) => write!(f, "{}:{}", a.ty, a.digest),
            Val::Unknown(symbol) => write!(f, "<{symbol}>"),
        }
    }
}

impl Val {
    /// The plain JSON of the value (artifacts as `{type, digest, size}`).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Val::Null => serde_json::Value::Null,
            Val::Bool(b) => (*b).into(),
            Val::Int(i) => (*i).into(),
            Val::Float(x) => {
                serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, Into::into)
            }
            Val::Str(s) => s.clone().into(),
            Val::List(items) => items.iter().map(Val::to_json).collect(),
            Val::Map(fields) => fields
                .iter()
                .map(|(k, v)| (k.clone(), v.to_json()))
                .collect(),
            Val::Artifact(a) => {
                serde_json::json!({ "type": a.ty, "digest": a.digest, "size": a.size })
            }
            Val::Unknown(symbol) => format!("<{symbol}>").into(),
        }
    }

    /// A field of a record.
    pub fn field(&self, name: &str) -> Option<&Val> {
        match self {
            Val::Map(fields) => fields.get(name),
            _ => None,
        }
    }

    /// Whether any part is still unknown.
    pub fn is_known(&self) -> bool {
        match self {
            Val::Unknown(_) => false,
            Val::List(items) => items.iter().all(Val::is_known),
            Val::Map(fields) => fields.values().all(Val::is_known),
            _ => true,
        }
    }

    /// Every artifact referenced by the value.
    pub fn artifacts(&self) -> Vec<&crate::runtime::ArtifactRef> {
        match self {
            Val::Artifact(a) => vec![a],
            Val::List(items) => items.iter().flat_map(Val::artifacts).collect(),
            Val::Map(fields) => fields.values().flat_map(Val::artifacts).collect(),
            _ => Vec::new(),
        }
    }
}

/// Looks references up during evaluation.
pub trait Scope {
    fn lookup(&self, path: &[Segment]) -> Val;
}

/// A reference a scope cannot resolve, kept symbolic by its dotted path.
pub fn unknown(path: &[Segment]) -> Val {
    Val::Unknown(
        path.iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join("."),
    )
}

impl Expr {
    /// Evaluates as far as the scope knows; unknown parts stay symbolic.
    pub fn eval(&self, scope: &dyn Scope) -> Val {
        match &self.kind {
            ExprKind::Literal(Literal::Int(i)) => Val::Int(*i),
            ExprKind::Literal(Literal::Float(x)) => Val::Float(*x),
            ExprKind::Literal(Literal::Str(s)) => Val::Str(s.clone()),
            ExprKind::Literal(Literal::Bool(b)) => Val::Bool(*b),
            ExprKind::Literal(Literal::Null) => Val::Null,
            ExprKind::Path(path) => scope.lookup(path),
            ExprKind::Not(inner) => match inner.eval(scope) {
                Val::Bool(b) => Val::Bool(!b),
                _ => Val::Unknown(self.to_string()),
            },
            ExprKind::Binary(op, a, b) => {
                let (a, b) = (a.eval(scope), b.eval(scope));
                match op {
                    BinOp::And => match (&a, &b) {
                        (Val::Bool(false), _) | (_, Val::Bool(false)) => Val::Bool(false),
                        (Val::Bool(true), Val::Bool(true)) => Val::Bool(true),
                        _ => Val::Unknown(self.to_string()),
                    },
                    BinOp::Or => match (&a, &b) {
                        (Val::Bool(true), _) | (_, Val::Bool(true)) => Val::Bool(true),
                        (Val::Bool(false), Val::Bool(false)) => Val::Bool(false),
                        _ => Val::Unknown(self.to_string()),
                    },
                    _ => compare(*op, &a, &b)
                        .map_or_else(|| Val::Unknown(self.to_string()), Val::Bool),
                }
            }
        }
    }
}

fn compare(op: BinOp, a: &Val, b: &Val) -> Option<bool> {
    use std::cmp::Ordering;
    let ordering = match (a, b) {
        (Val::Unknown(_), _) | (_, Val::Unknown(_)) => return None,
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        (Val::Int(x), Val::Float(y)) => (*x as f64).partial_cmp(y)?,
        (Val::Float(x), Val::Int(y)) => x.partial_cmp(&(*y as f64))?,
        (Val::Float(x), Val::Float(y)) => x.partial_cmp(y)?,
        (Val::Str(x), Val::Str(y)) => x.cmp(y),
        _ => {
            return match op {
                BinOp::Eq => Some(a == b),
                BinOp::Ne => Some(a != b),
                _ => None,
            };
        }
    };
    Some(match op {
        BinOp::Eq => ordering == Ordering::Equal,
        BinOp::Ne => ordering != Ordering::Equal,
        BinOp::Lt => ordering == Ordering::Less,
        BinOp::Le => ordering != Ordering::Greater,
        BinOp::Gt => ordering == Ordering::Greater,
        BinOp::Ge => ordering != Ordering::Less,
        BinOp::And | BinOp::Or => return None,
    })
}

impl Template {
    /// Evaluates the template: a single expression keeps its value, text concatenates.
    pub fn eval(&self, scope: &dyn Scope) -> Val {
        if let Some(expr) = self.as_single_expr() {
            return expr.eval(scope);
        }
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Expr(expr) => out.push_str(&expr.eval(scope).to_string()),
            }
        }
        Val::Str(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> Result<Template, ExprError> {
        parse_template(text, Origin::exact(0))
    }

    #[test]
    fn splits_text_and_expressions() {
        let t = template("gradients/${{ params.uid }}/${{cycle.window}}.bin").unwrap();
        assert_eq!(t.parts.len(), 5);
        let paths: Vec<String> = t.exprs().map(|e| e.to_string()).collect();
        assert_eq!(paths, ["params.uid", "cycle.window"]);
        assert!(template("plain").unwrap().as_single_expr().is_none());
    }

    #[test]
    fn precedence_and_spans() {
        let e = parse_condition("a == 1 || !b && c < 2", Origin::exact(0)).unwrap();
        assert_eq!(e.to_string(), "((a == 1) || (!b && (c < 2)))");
        let t = template("x ${{ stages.train.outputs.loss }}").unwrap();
        let ExprKind::Path(segs) = &t
            .as_single_expr()
            .map_or(&t.exprs().next().unwrap().kind, |e| &e.kind)
        else {
            panic!("expected a path")
        };
        assert_eq!(segs[1].name, "train");
        assert_eq!(segs[1].span, Span::new(13, 18));
    }

    #[test]
    fn errors_point_at_the_offending_token() {
        let err = template("${{ params.uid = 3 }}").unwrap_err();
        assert_eq!(err.span, Span::new(15, 16));
        let err = template("ok ${{ params.uid").unwrap_err();
        assert_eq!(err.span, Span::new(3, 6));
        let err = template("${{ a == }}").unwrap_err();
        assert!(err.message.contains("ends too early"), "{}", err.message);
        let err = template("${{ a < b < c }}").unwrap_err();
        assert!(err.message.contains("chained"));
        let err = template("${{ }}").unwrap_err();
        assert!(err.message.contains("empty"));
    }

    #[test]
    fn evaluates_with_unknowns() {
        struct S;
        impl Scope for S {
            fn lookup(&self, path: &[Segment]) -> Val {
                match path[0].name.as_str() {
                    "n" => Val::Int(3),
                    _ => Val::Unknown(
                        path.iter()
                            .map(|s| s.name.clone())
                            .collect::<Vec<_>>()
                            .join("."),
                    ),
                }
            }
        }
        assert_eq!(
            parse_condition("n > 2", Origin::exact(0)).unwrap().eval(&S),
            Val::Bool(true)
        );
        assert_eq!(
            parse_condition("n > 5 && x", Origin::exact(0))
                .unwrap()
                .eval(&S),
            Val::Bool(false)
        );
        assert_eq!(
            template("k/${{ n }}/${{ cycle.window }}").unwrap().eval(&S),
            Val::Str("k/3/<cycle.window>".into())
        );
    }

    #[test]
    fn origin_maps_quoted_scalars() {
        let source = "key: \"a ${{ x }}\"";
        let span = Span::new(5, source.len());
        let origin = Origin::locate(source, span, "a ${{ x }}");
        let t = parse_template("a ${{ x }}", origin).unwrap();
        assert_eq!(t.exprs().next().unwrap().span, Span::new(12, 13));
    }
}
