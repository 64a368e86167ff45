//! Model pre-checks for the distillation contest, from what the hub says without loading a
//! weight: the commitment pins a revision; the model is still there at it; its parameter
//! count (from the safetensors header) is within budget; its vocabulary is the teacher's;
//! its weights are BF16 or F16, not quantized; and its weights file is not a copy of one an
//! earlier commitment owns. A copier is disqualified for good: [`History`] is carried from
//! cycle to cycle.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::signed::Check;

use super::integrity::{fail, pass};

/// What a safetensors header says.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderSummary {
    pub params: u64,
    /// Every dtype named, e.g. `BF16`.
    pub dtypes: BTreeSet<String>,
    /// The `__metadata__` map (free text, written by whoever saved the file).
    pub metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Reads a safetensors JSON header: every tensor's dtype and shape, checked against its
/// byte range so a header cannot understate its size.
pub fn summarize(header: &[u8]) -> Result<HeaderSummary, String> {
    let entries: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("the header is not JSON: {e}"))?;
    let mut summary = HeaderSummary {
        params: 0,
        dtypes: BTreeSet::new(),
        metadata: BTreeMap::new(),
    };
    for (name, value) in entries {
        if name == "__metadata__" {
            summary.metadata = serde_json::from_value(value).unwrap_or_default();
            continue;
        }
        let entry: TensorEntry = serde_json::from_value(value)
            .map_err(|e| format!("tensor `{name}` in the header: {e}"))?;
        let count = entry
            .shape
            .iter()
            .try_fold(1u64, |n, d| n.checked_mul(*d))
            .ok_or_else(|| format!("tensor `{name}`: its shape overflows"))?;
        let [start, end] = entry.data_offsets;
        if let Some(width) = dtype_bits(&entry.dtype)
            && end.checked_sub(start) != count.checked_mul(width).map(|bits| bits.div_ceil(8))
        {
            return Err(format!(
                "tensor `{name}`: {count} {} values cannot fill bytes {start}..{end}",
                entry.dtype
            ));
        }
        summary.params = summary
            .params
            .checked_add(count)
            .ok_or("the parameter count overflows")?;
        summary.dtypes.insert(entry.dtype);
    }
    Ok(summary)
}

fn dtype_bits(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 64,
        "F32" | "I32" | "U32" => 32,
        "F16" | "BF16" | "I16" | "U16" => 16,
        "F8_E4M3" | "F8_E5M2" | "I8" | "U8" | "BOOL" => 8,
        _ => return None,
    })
}

/// The rules a model must meet.
pub struct Rules<'a> {
    pub max_params: u64,
    pub vocab_size: Option<u64>,
    pub dtypes: &'a [String],
}

/// What was learned about one committed model.
pub struct Facts {
    /// The header, or why it could not be read at the committed revision.
    pub header: Result<(HeaderSummary, String), String>,
    /// `config.json`, or why it could not be read.
    pub config: Result<serde_json::Value, String>,
}

/// Which hotkey owns which weights file, and who copied: kept across cycles.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// File hash → the first commitment that had it.
    pub owners: BTreeMap<String, Owner>,
    /// Hotkey → why it is disqualified for good.
    pub disqualified: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Owner {
    pub hotkey: String,
    pub uid: u16,
    pub block: u64,
}

/// A committed model, as the miner record names it.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub uid: u16,
    pub hotkey: String,
    pub repo: String,
    pub revision: String,
    pub block: u64,
}

impl Candidate {
    /// Whether the commitment names a repository at a pinned commit.
    pub fn pinned(&self) -> Result<(), String> {
        if self.repo.is_empty() {
            return Err("the commitment names no repository".into());
        }
        if !crate::hub::is_commit_sha(&self.revision) {
            return Err(format!(
                "the commitment's revision `{}` is not a 40-hex commit SHA (a branch can change)",
                self.revision
            ));
        }
        Ok(())
    }
}

/// The checks of one model; ownership of its weights hash is recorded in `history`.
/// Candidates must be judged in commitment order (block, then uid).
pub fn check(
    candidate: &Candidate,
    facts: &Facts,
    rules: &Rules,
    history: &mut History,
) -> Vec<Check> {
    let mut checks = vec![pass("pinned")];
    if let Some(why) = history.disqualified.get(&candidate.hotkey) {
        checks.push(fail("original", format!("disqualified for good: {why}")));
        return checks;
    }
    let (header, hash) = match &facts.header {
        Ok((header, hash)) => (header, hash),
        Err(why) => {
            checks.push(fail("available", why.clone()));
            return checks;
        }
    };
    checks.push(pass("available"));
    checks.push(if header.params <= rules.max_params {
        pass("params")
    } else {
        fail(
            "params",
            format!(
                "{} parameters (from the safetensors header), over the budget of {}",
                header.params, rules.max_params
            ),
        )
    });
    let odd: Vec<&String> = header
        .dtypes
        .iter()
        .filter(|d| !rules.dtypes.contains(d))
        .collect();
    checks.push(if odd.is_empty() {
        pass("dtype")
    } else {
        fail(
            "dtype",
            format!(
                "weights stored as {odd:?}; only {:?} are allowed (quantized or full-precision files are not)",
                rules.dtypes
            ),
        )
    });
    match &facts.config {
        Ok(config) => {
            checks.push(match quantization(config, header) {
                Some(why) => fail("quantization", why),
                None => pass("quantization"),
            });
            if let Some(want) = rules.vocab_size {
                let got = config["vocab_size"].as_u64();
                checks.push(if got == Some(want) {
                    pass("vocab")
                } else {
                    fail(
                        "vocab",
                        format!(
                            "config.json says vocab_size {}, the contest's is {want}",
                            got.map_or("(none)".to_owned(), |v| v.to_string())
                        ),
                    )
                });
            }
        }
        Err(why) => checks.push(fail("config", why.clone())),
    }
    match history.owners.get(hash) {
        Some(owner) if owner.hotkey != candidate.hotkey => {
            let why = format!(
                "its weights file is uid {}'s, committed first (block {})",
                owner.uid, owner.block
            );
            history
                .disqualified
                .insert(candidate.hotkey.clone(), why.clone());
            checks.push(fail("original", why));
        }
        Some(_) => checks.push(pass("original")),
        None => {
            history.owners.insert(
                hash.clone(),
                Owner {
                    hotkey: candidate.hotkey.clone(),
                    uid: candidate.uid,
                    block: candidate.block,
                },
            );
            checks.push(pass("original"));
        }
    }
    checks
}

/// Why a model counts as quantized, if it does.
fn quantization(config: &serde_json::Value, header: &HeaderSummary) -> Option<String> {
    if let Some(q) = config.get("quantization_config") {
        let method = q["quant_method"].as_str().unwrap_or("unnamed");
        return Some(format!(
            "config.json carries a quantization_config ({method})"
        ));
    }
    header
        .metadata
        .iter()
        .find(|(k, v)| {
            let text = format!("{k} {v}").to_ascii_lowercase();
            ["gptq", "awq", "bitsandbytes", "quant"]
                .iter()
                .any(|m| text.contains(m))
        })
        .map(|(k, v)| format!("the safetensors metadata says it is quantized ({k}: {v})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tensors: &[(&str, &str, &[u64])], metadata: Option<(&str, &str)>) -> Vec<u8> {
        let mut map = serde_json::Map::new();
        let mut at = 0u64;
        for (name, dtype, shape) in tensors {
            let bytes = shape.iter().product::<u64>() * dtype_bits(dtype).unwrap() / 8;
            map.insert(
                (*name).to_owned(),
                serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [at, at + bytes] }),
            );
            at += bytes;
        }
        if let Some((k, v)) = metadata {
            map.insert("__metadata__".into(), serde_json::json!({ k: v }));
        }
        serde_json::to_vec(&map).unwrap()
    }

    fn candidate(uid: u16, block: u64) -> Candidate {
        Candidate {
            uid,
            hotkey: format!("hotkey-{uid}"),
            repo: format!("miner/{uid}"),
            revision: "a".repeat(40),
            block,
        }
    }

    fn facts(header_bytes: &[u8], hash: &str, config: serde_json::Value) -> Facts {
        Facts {
            header: summarize(header_bytes).map(|h| (h, hash.to_owned())),
            config: Ok(config),
        }
    }

    fn failed(checks: &[Check]) -> Vec<(&str, &str)> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| (c.name.as_str(), c.reason.as_deref().unwrap_or("")))
            .collect()
    }

    fn rules() -> Rules<'static> {
        static DTYPES: std::sync::LazyLock<Vec<String>> =
            std::sync::LazyLock::new(|| vec!["BF16".to_owned(), "F16".to_owned()]);
        Rules {
            max_params: 1000,
            vocab_size: Some(50),
            dtypes: &DTYPES,
        }
    }

    #[test]
    fn the_parameter_count_comes_from_the_header_and_must_add_up() {
        let bytes = header(&[("a", "BF16", &[10, 20]), ("b", "F32", &[7])], None);
        let summary = summarize(&bytes).unwrap();
        assert_eq!(summary.params, 207);
        assert_eq!(
            summary.dtypes,
            BTreeSet::from(["BF16".to_owned(), "F32".to_owned()])
        );
        let lying = br#"{"a":{"dtype":"BF16","shape":[1000,1000],"data_offsets":[0,2]}}"#;
        assert!(summarize(lying).unwrap_err().contains("cannot fill"));
        assert!(summarize(b"not json").is_err());
    }

    #[test]
    fn an_honest_model_passes_and_each_dishonest_one_says_why() {
        let config = serde_json::json!({ "vocab_size": 50 });
        let mut history = History::default();
        let honest = header(&[("w", "BF16", &[50, 10])], None);
        let checks = check(
            &candidate(1, 5),
            &facts(&honest, "h1", config.clone()),
            &rules(),
            &mut history,
        );
        assert!(failed(&checks).is_empty(), "{:?}", failed(&checks));

        let big = header(&[("w", "BF16", &[50, 30])], None);
        let checks = check(
            &candidate(2, 6),
            &facts(&big, "h2", config.clone()),
            &rules(),
            &mut history,
        );
        assert_eq!(failed(&checks)[0].0, "params");
        assert!(failed(&checks)[0].1.contains("1500 parameters"));

        let int8 = header(&[("w", "I8", &[50, 10])], None);
        let checks = check(
            &candidate(3, 6),
            &facts(&int8, "h3", config.clone()),
            &rules(),
            &mut history,
        );
        assert_eq!(failed(&checks)[0].0, "dtype");

        let gptq = serde_json::json!({ "vocab_size": 50, "quantization_config": { "quant_method": "gptq" } });
        let checks = check(
            &candidate(4, 6),
            &facts(&honest, "h4", gptq),
            &rules(),
            &mut history,
        );
        assert_eq!(
            failed(&checks),
            [(
                "quantization",
                "config.json carries a quantization_config (gptq)"
            )]
        );

        let wrong_vocab = serde_json::json!({ "vocab_size": 51 });
        let checks = check(
            &candidate(5, 6),
            &facts(&honest, "h5", wrong_vocab),
            &rules(),
            &mut history,
        );
        assert_eq!(failed(&checks)[0].0, "vocab");
    }

    #[test]
    fn a_copied_weights_file_is_disqualified_for_good() {
        let config = serde_json::json!({ "vocab_size": 50 });
        let bytes = header(&[("w", "BF16", &[50, 10])], None);
        let mut history = History::default();
        let first = check(
            &candidate(1, 5),
            &facts(&bytes, "same", config.clone()),
            &rules(),
            &mut history,
        );
        assert!(failed(&first).is_empty());
        let copy = check(
            &candidate(2, 9),
            &facts(&bytes, "same", config.clone()),
            &rules(),
            &mut history,
        );
        assert_eq!(
            failed(&copy),
            [(
                "original",
                "its weights file is uid 1's, committed first (block 5)"
            )]
        );
        // Next cycle the copier commits a different file: still out.
        let carried: History =
            serde_json::from_str(&serde_json::to_string(&history).unwrap()).unwrap();
        let mut history = carried;
        let later = check(
            &candidate(2, 20),
            &facts(&bytes, "new", config),
            &rules(),
            &mut history,
        );
        assert!(failed(&later)[0].1.starts_with("disqualified for good"));
        // The owner re-committing its own file is fine.
        assert_eq!(history.owners["same"].uid, 1);
    }

    #[test]
    fn branches_are_not_pins() {
        let mut moving = candidate(1, 5);
        moving.revision = "main".into();
        assert!(
            moving
                .pinned()
                .unwrap_err()
                .contains("not a 40-hex commit SHA")
        );
        assert!(candidate(1, 5).pinned().is_ok());
    }
}
