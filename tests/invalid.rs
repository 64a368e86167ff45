//! Every file under `fixtures/invalid/` fails with exactly the findings listed in
//! `fixtures/invalid/expected.tsv`, each at its line and column.

mod common;

use std::collections::BTreeMap;

use common::{load_rel, root};
use gradline_engine::Override;

struct Expected {
    set: Option<Override>,
    findings: Vec<(String, String, String)>,
}

fn manifest() -> BTreeMap<String, Expected> {
    let text = std::fs::read_to_string(root().join("fixtures/invalid/expected.tsv")).unwrap();
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 5, "malformed manifest line: {line}");
        let entry = out.entry(cols[0].to_owned()).or_insert_with(|| Expected {
            set: (cols[1] != "-").then(|| cols[1].parse().unwrap()),
            findings: Vec::new(),
        });
        entry
            .findings
            .push((cols[2].to_owned(), cols[3].to_owned(), cols[4].to_owned()));
    }
    out
}

#[test]
fn every_invalid_fixture_is_listed() {
    let listed = manifest();
    let mut files: Vec<String> = std::fs::read_dir(root().join("fixtures/invalid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 25, "the corpus has {} files", files.len());
    for file in &files {
        assert!(
            listed.contains_key(file),
            "{file} has no expected finding in expected.tsv"
        );
    }
}

#[test]
fn each_invalid_fixture_gives_its_located_messages() {
    for (file, expected) in manifest() {
        let rel = format!("fixtures/invalid/{file}");
        let overrides: Vec<Override> = expected.set.iter().cloned().collect();
        let loaded = load_rel(&rel, &overrides);
        assert!(loaded.has_errors(), "{file}: expected errors, got none");
        let mut actual: Vec<(String, String, String)> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| {
                let at = d.span.map_or("-".to_owned(), |s| {
                    let lc = loaded.file.line_col(s.start);
                    format!("{}:{}", lc.line, lc.col)
                });
                (d.code.to_owned(), at, d.message.clone())
            })
            .collect();
        for (code, at, text) in &expected.findings {
            let found = actual
                .iter()
                .position(|(c, a, m)| c == code && a == at && m.contains(text.as_str()));
            match found {
                Some(i) => {
                    actual.remove(i);
                }
                None => panic!(
                    "{file}: expected [{code}] at {at} containing {text:?}\nactual:\n{}",
                    loaded.render()
                ),
            }
        }
        assert!(
            actual.is_empty(),
            "{file}: unexpected findings {actual:?}\n{}",
            loaded.render()
        );
    }
}

#[test]
fn rendered_errors_show_file_line_column_source_and_caret() {
    let loaded = load_rel("fixtures/invalid/04-unknown-setting-key.yaml", &[]);
    let text = loaded.render();
    assert!(
        text.contains("--> fixtures/invalid/04-unknown-setting-key.yaml:16:7"),
        "{text}"
    );
    assert!(text.contains("16 |       stpes: 4"), "{text}");
    assert!(text.contains("   |       ^^^^^"), "{text}");
    assert!(text.contains("= hint: did you mean `steps`?"), "{text}");
}

#[test]
fn all_errors_of_a_file_are_reported_together() {
    let loaded = load_rel("fixtures/invalid/11-cycle.yaml", &[]);
    let codes: Vec<&str> = loaded.diagnostics.iter().map(|d| d.code).collect();
    assert!(
        codes.contains(&"cycle") && codes.iter().filter(|c| **c == "port-type").count() == 2,
        "{codes:?}"
    );
}
