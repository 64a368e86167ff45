//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use gradline_engine::{Loaded, Override, load};

/// Runs the `gradline` binary in `dir`, failing the test (with its output) unless it succeeds.
pub fn gradline_ok(dir: &Path, args: &[&str]) -> std::process::Output {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gradline"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "gradline {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads a file by its path relative to the repository root (the name diagnostics show).
pub fn load_rel(rel: &str, overrides: &[Override]) -> Loaded {
    let text = std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    load(rel, &text, &gradline_stages::registry(), overrides)
}

/// Every pipeline under `pipelines/`, as relative paths, sorted.
pub fn pipeline_files() -> Vec<String> {
    let mut out = Vec::new();
    let base = root().join("pipelines");
    for system in std::fs::read_dir(&base).unwrap() {
        let system = system.unwrap().path();
        for file in std::fs::read_dir(&system).unwrap() {
            let file = file.unwrap().path();
            if file.extension().is_some_and(|e| e == "yaml") {
                out.push(relative(&file));
            }
        }
    }
    out.sort();
    out
}

pub fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

/// A plan environment where nothing is set, so plans do not depend on the machine.
pub fn no_env(_: &str) -> bool {
    false
}
