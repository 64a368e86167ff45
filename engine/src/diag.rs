//! Diagnostics: located errors and warnings, collected and rendered as `file:line:col`
//! with the source line, a caret under the offending text, and a hint.

use std::fmt::Write as _;

use serde::Serialize;

use crate::source::{SourceFile, Span};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One finding about a pipeline file.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    pub severity: Severity,
    /// A stable short name for the kind of finding (`unknown-key`, `cycle`, ...).
    pub code: &'static str,
    pub message: String,
    /// Where it is; `None` for findings about the file as a whole.
    pub span: Option<Span>,
    pub hint: Option<String>,
    /// Other places worth showing, each with a short label.
    pub related: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            message: message.into(),
            span: None,
            hint: None,
            related: Vec::new(),
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, message)
        }
    }

    pub fn at(mut self, span: Span) -> Self {
        self.span = Some(span);
        self
    }

    pub fn at_opt(mut self, span: Option<Span>) -> Self {
        self.span = span;
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }

    pub fn related(mut self, span: Span, label: impl Into<String>) -> Self {
        self.related.push((span, label.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic against its file, rustc style.
    pub fn render(&self, file: &SourceFile) -> String {
        let mut out = String::new();
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{label}[{}]: {}", self.code, self.message);
        match self.span {
            Some(span) => render_snippet(&mut out, file, span, None),
            None => {
                let _ = writeln!(out, "  --> {}", file.name);
            }
        }
        for (span, note) in &self.related {
            render_snippet(&mut out, file, *span, Some(note));
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "   = hint: {hint}");
        }
        out
    }

    /// A machine-readable form with resolved line and column.
    pub fn to_json(&self, file: &SourceFile) -> serde_json::Value {
        let location = self.span.map(|s| {
            let lc = file.line_col(s.start);
            serde_json::json!({ "line": lc.line, "column": lc.col })
        });
        serde_json::json!({
            "severity": self.severity,
            "code": self.code,
            "file": file.name,
            "location": location,
            "message": self.message,
            "hint": self.hint,
        })
    }
}

/// The widest source excerpt shown; longer lines are cropped around the caret.
const MAX_SHOWN: usize = 120;

fn render_snippet(out: &mut String, file: &SourceFile, span: Span, note: Option<&str>) {
    let start = file.line_col(span.start);
    let line: Vec<char> = file
        .line_text(start.line)
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect();
    let gutter = start.line.to_string().len();
    let pad = " ".repeat(gutter);
    let _ = writeln!(out, "{pad}--> {}:{}:{}", file.name, start.line, start.col);
    let _ = writeln!(out, "{pad} |");
    let end = file.line_col(span.end.max(span.start));
    let caret_at = start.col - 1;
    let width = if end.line == start.line {
        end.col.saturating_sub(start.col).max(1)
    } else {
        line.len().saturating_sub(caret_at).max(1)
    };
    let from = caret_at.saturating_sub(MAX_SHOWN / 2).min(line.len());
    let to = (from + MAX_SHOWN).min(line.len());
    let shown: String = line[from..to].iter().collect();
    let (open, close) = (
        if from > 0 { "…" } else { "" },
        if to < line.len() { "…" } else { "" },
    );
    let _ = writeln!(out, "{} | {open}{shown}{close}", start.line);
    let lead = " ".repeat(caret_at - from + open.chars().count());
    let carets = "^".repeat(width.min(MAX_SHOWN));
    match note {
        Some(note) => {
            let _ = writeln!(out, "{pad} | {lead}{carets} {note}");
        }
        None => {
            let _ = writeln!(out, "{pad} | {lead}{carets}");
        }
    }
}

/// The closest candidate to `word`, when one is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// "did you mean `x`?" when there is a close candidate, otherwise the list of choices.
pub fn suggestion(word: &str, candidates: &[&str]) -> Option<String> {
    if let Some(best) = did_you_mean(word, candidates.iter().copied()) {
        return Some(format!("did you mean `{best}`?"));
    }
    match candidates.len() {
        0 => None,
        _ => Some(format!(
            "expected one of: {}",
            candidates
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_location_line_and_caret() {
        let file = SourceFile::new("p.yaml", "stages:\n  t:\n    stpes: 4\n");
        let at = file.text.find("stpes").unwrap();
        let d = Diagnostic::error("unknown-key", "unknown key `stpes`")
            .at(Span::new(at, at + 5))
            .hint("did you mean `steps`?");
        let text = d.render(&file);
        assert_eq!(
            text,
            "error[unknown-key]: unknown key `stpes`\n --> p.yaml:3:5\n  |\n3 |     stpes: 4\n  |     ^^^^^\n   = hint: did you mean `steps`?\n"
        );
    }

    #[test]
    fn long_lines_are_cropped_around_the_caret() {
        let text = format!("a: {}x{}", "[".repeat(500), "]".repeat(500));
        let file = SourceFile::new("p.yaml", text.clone());
        let at = text.find('x').unwrap();
        let rendered = Diagnostic::error("e", "m")
            .at(Span::new(at, at + 1))
            .render(&file);
        assert!(
            rendered.lines().all(|l| l.chars().count() < 140),
            "{rendered}"
        );
        let source_line = rendered.lines().nth(3).unwrap();
        let caret_line = rendered.lines().nth(4).unwrap();
        let x_col = source_line.chars().position(|c| c == 'x').unwrap();
        assert_eq!(caret_line.chars().position(|c| c == '^'), Some(x_col));
    }

    #[test]
    fn suggests_close_words_only() {
        assert_eq!(
            did_you_mean("stpes", ["steps", "lr", "batch"]),
            Some("steps")
        );
        assert_eq!(did_you_mean("zzz", ["steps", "lr"]), None);
    }
}
