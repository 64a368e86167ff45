//! The model folders under `fixtures/models` that the publishing and distillation pipelines
//! read by default are reproducible: seeded initializations, written byte for byte the same.
//! `GRADLINE_BLESS=1 cargo test -p gradline-stages --test model_fixtures` rewrites them.

use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use gradline_stages::model::distill::config_to_json;
use gradline_stages::model::train::parameters;
use gradline_stages::model::{Cpu, Gpt, GptConfig};
use gradline_stages::tensors::StoredDtype;

/// The student is smaller than the teacher: one layer, 32 dims.
fn student() -> GptConfig {
    GptConfig {
        layers: 1,
        dim: 32,
        ..GptConfig::tiny()
    }
}

/// Every fixture file: its path under `fixtures/models` and its bytes.
fn fixtures() -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut folder = |dir: &str, config: GptConfig, seed: u64, dtype: StoredDtype| {
        let device = Default::default();
        <Cpu as Backend>::seed(&device, seed);
        let model: Gpt<Cpu> = config.init(&device);
        let weights = parameters(&model)
            .to_safetensors_as("checkpoint", dtype)
            .unwrap();
        let mut json = serde_json::to_vec_pretty(&config_to_json(config)).unwrap();
        json.push(b'\n');
        files.push((Path::new(dir).join("model.safetensors"), weights));
        files.push((Path::new(dir).join("config.json"), json));
    };
    folder("tiny/f32", GptConfig::tiny(), 1, StoredDtype::F32);
    folder("tiny/bf16", GptConfig::tiny(), 1, StoredDtype::Bf16);
    folder("student", student(), 3, StoredDtype::Bf16);
    files
}

#[test]
fn the_committed_model_folders_are_reproducible() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models");
    let bless = std::env::var_os("GRADLINE_BLESS").is_some();
    for (path, bytes) in fixtures() {
        let file = root.join(&path);
        if bless {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &bytes).unwrap();
            continue;
        }
        let committed = std::fs::read(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (GRADLINE_BLESS=1 writes it)", path.display()));
        assert!(
            committed == bytes,
            "{} differs from a fresh seeded initialization",
            path.display()
        );
    }
}
