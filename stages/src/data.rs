//! Training data: token shards, tokenizers, and the batch each miner trains on.
//!
//! Shards use llm.c's layout: a header of 256 little-endian i32 — magic `20240520`, version
//! (1: u16 tokens, 2: u32 tokens), token count — then the tokens. A folder of shards has an
//! `index.json` naming them with their token counts and digests.
//!
//! A miner's batch is a pure function of blake3(seed, uid, window): a validator recomputes it,
//! and draws a comparison batch the same way from its own seed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const SHARD_MAGIC: i32 = 20240520;
const HEADER_INTS: usize = 256;
const HEADER_BYTES: usize = HEADER_INTS * 4;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("not a token shard: {0}")]
    BadShard(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the shards hold no window of {span} tokens")]
    TooShort { span: u64 },
    #[error("token {token} is outside a vocabulary of {vocab}")]
    TokenRange { token: u32, vocab: u32 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes tokens as a shard: u16 when they all fit, u32 otherwise.
pub fn write_shard(tokens: &[u32]) -> Vec<u8> {
    let wide = tokens.iter().any(|&t| t > u16::MAX as u32);
    let mut out = Vec::with_capacity(HEADER_BYTES + tokens.len() * if wide { 4 } else { 2 });
    let mut header = [0i32; HEADER_INTS];
    header[0] = SHARD_MAGIC;
    header[1] = if wide { 2 } else { 1 };
    header[2] = tokens.len() as i32;
    header
        .iter()
        .for_each(|h| out.extend_from_slice(&h.to_le_bytes()));
    for &t in tokens {
        if wide {
            out.extend_from_slice(&t.to_le_bytes());
        } else {
            out.extend_from_slice(&(t as u16).to_le_bytes());
        }
    }
    out
}

/// Reads a shard, checking its header against its size.
pub fn read_shard(bytes: &[u8]) -> Result<Vec<u32>, DataError> {
    if bytes.len() < HEADER_BYTES {
        return Err(DataError::BadShard(format!(
            "{} bytes is shorter than the 1024-byte header",
            bytes.len()
        )));
    }
    let int = |i: usize| {
        i32::from_le_bytes([
            bytes[4 * i],
            bytes[4 * i + 1],
            bytes[4 * i + 2],
            bytes[4 * i + 3],
        ])
    };
    if int(0) != SHARD_MAGIC {
        return Err(DataError::BadShard(format!(
            "magic {} is not {SHARD_MAGIC}",
            int(0)
        )));
    }
    let width = match int(1) {
        1 => 2,
        2 => 4,
        v => {
            return Err(DataError::BadShard(format!(
                "version {v} is not 1 (u16) or 2 (u32)"
            )));
        }
    };
    let count = usize::try_from(int(2))
        .map_err(|_| DataError::BadShard(format!("token count {}", int(2))))?;
    let body = &bytes[HEADER_BYTES..];
    if body.len() != count * width {
        return Err(DataError::BadShard(format!(
            "{count} tokens need {} bytes, the shard has {}",
            count * width,
            body.len()
        )));
    }
    Ok(match width {
        2 => body
            .chunks_exact(2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
            .collect(),
        _ => body
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    })
}

/// How text becomes tokens.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Tokenizer {
    /// One token per byte, and an end-of-text token (vocabulary 257): the `tiny` model's.
    #[default]
    Bytes,
    /// OpenAI's cl100k_base (vocabulary 100,277): `nanogpt-10m`'s. The ranks ship in the binary.
    Cl100k,
}

impl std::str::FromStr for Tokenizer {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "bytes" => Ok(Tokenizer::Bytes),
            "cl100k" | "cl100k_base" => Ok(Tokenizer::Cl100k),
            other => Err(format!(
                "unknown tokenizer `{other}`: use `bytes` or `cl100k`"
            )),
        }
    }
}

impl fmt::Display for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Tokenizer::Bytes => "bytes",
            Tokenizer::Cl100k => "cl100k",
        })
    }
}

impl Tokenizer {
    pub fn vocab_size(self) -> u32 {
        match self {
            Tokenizer::Bytes => 257,
            Tokenizer::Cl100k => 100_277,
        }
    }

    /// The token that separates documents.
    pub fn end_of_text(self) -> u32 {
        match self {
            Tokenizer::Bytes => 256,
            Tokenizer::Cl100k => 100_257,
        }
    }

    /// Tokens of one document (no end-of-text).
    pub fn encode(self, text: &str) -> Vec<u32> {
        match self {
            Tokenizer::Bytes => text.bytes().map(u32::from).collect(),
            Tokenizer::Cl100k => tiktoken_rs::cl100k_base_singleton().encode_ordinary(text),
        }
    }
}

/// One shard in a folder's index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub name: String,
    pub tokens: u64,
    /// blake3 of the shard file.
    pub digest: String,
}

/// A folder of shards: `index.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub tokenizer: Tokenizer,
    pub vocab_size: u32,
    pub shards: Vec<ShardInfo>,
}

pub const INDEX_FILE: &str = "index.json";

/// Cuts documents (each followed by end-of-text) into shards of at most `shard_tokens`
/// tokens, handing each shard out as soon as it is full.
pub struct Sharder {
    tokenizer: Tokenizer,
    shard_tokens: usize,
    pending: Vec<u32>,
    index: ShardIndex,
}

/// A finished shard: its name, and the bytes of its file.
pub struct Shard {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Sharder {
    pub fn new(tokenizer: Tokenizer, shard_tokens: usize) -> Self {
        Self {
            tokenizer,
            shard_tokens: shard_tokens.max(1),
            pending: Vec::new(),
            index: ShardIndex {
                tokenizer,
                vocab_size: tokenizer.vocab_size(),
                shards: Vec::new(),
            },
        }
    }

    /// Adds a document; the shards it filled.
    pub fn push(&mut self, text: &str) -> Vec<Shard> {
        self.pending.extend(self.tokenizer.encode(text));
        self.pending.push(self.tokenizer.end_of_text());
        let mut full = Vec::new();
        while self.pending.len() >= self.shard_tokens {
            let rest = self.pending.split_off(self.shard_tokens);
            let tokens = std::mem::replace(&mut self.pending, rest);
            full.push(self.cut(&tokens));
        }
        full
    }

    /// The last, partly filled shard (if any) and the index of them all.
    pub fn finish(mut self) -> (Option<Shard>, ShardIndex) {
        let pending = std::mem::take(&mut self.pending);
        let last = (!pending.is_empty()).then(|| self.cut(&pending));
        (last, self.index)
    }

    fn cut(&mut self, tokens: &[u32]) -> Shard {
        let name = format!("shard_{:06}.bin", self.index.shards.len());
        let bytes = write_shard(tokens);
        self.index.shards.push(ShardInfo {
            name: name.clone(),
            tokens: tokens.len() as u64,
            digest: blake3::hash(&bytes).to_hex().to_string(),
        });
        Shard { name, bytes }
    }
}

impl ShardIndex {
    /// The index as its `index.json` file holds it.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// Tokenizes text files (each a document, followed by end-of-text) into shards of at most
/// `shard_tokens` tokens under `out`, and writes the index. Shards are written whole or not
/// at all (temporary file, then rename).
pub fn tokenize_files(
    files: &[PathBuf],
    tokenizer: Tokenizer,
    shard_tokens: usize,
    out: &Path,
) -> Result<ShardIndex, DataError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let write = |shard: Shard| -> Result<(), DataError> {
        let path = out.join(&shard.name);
        let tmp = out.join(format!(".{}.tmp", shard.name));
        std::fs::write(&tmp, &shard.bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    };
    let mut sharder = Sharder::new(tokenizer, shard_tokens);
    for file in files {
        let text = std::fs::read_to_string(file).map_err(io(file))?;
        for shard in sharder.push(&text) {
            write(shard)?;
        }
    }
    let (last, index) = sharder.finish();
    if let Some(shard) = last {
        write(shard)?;
    }
    let path = out.join(INDEX_FILE);
    std::fs::write(&path, index.to_json()).map_err(io(&path))?;
    Ok(index)
}

/// Where a batch starts: a shard and a token offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub shard: usize,
    pub offset: u64,
}

/// The batch of `uid` in `window`: `span` consecutive tokens (batch × sequence + 1), at a
/// position drawn uniformly over every place such a span fits, from
/// blake3("gradline.batch.v1", seed, uid, window). Validators recompute it; with their own
/// seed they draw a random comparison batch the same way.
pub fn assign(
    seed: &str,
    uid: i64,
    window: i64,
    shard_tokens: &[u64],
    span: u64,
) -> Result<Assignment, DataError> {
    let places: Vec<u64> = shard_tokens
        .iter()
        .map(|&t| (t + 1).saturating_sub(span))
        .collect();
    let total: u64 = places.iter().sum();
    if total == 0 || span == 0 {
        return Err(DataError::TooShort { span });
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"gradline.batch.v1");
    hasher.update(&(seed.len() as u64).to_le_bytes());
    hasher.update(seed.as_bytes());
    hasher.update(&uid.to_le_bytes());
    hasher.update(&window.to_le_bytes());
    let hash = hasher.finalize();
    let draw = u128::from_le_bytes(hash.as_bytes()[..16].try_into().unwrap_or([0; 16]));
    let mut position = (draw % total as u128) as u64;
    for (shard, &p) in places.iter().enumerate() {
        if position < p {
            return Ok(Assignment {
                shard,
                offset: position,
            });
        }
        position -= p;
    }
    Err(DataError::TooShort { span })
}

/// A deterministic English-like corpus about training networks, for tests and the demo:
/// short sentences from a small grammar, so a tiny model's loss visibly falls.
pub fn demo_corpus(seed: u64, bytes: usize) -> String {
    generate(seed, bytes, None)
}

/// The demo corpus in sections of about [`SECTION_BYTES`], each about a node with its own
/// invented name: text from one section teaches something text from another does not, as
/// real data does — which is what lets a validator tell whether a miner trained on the
/// batch it was given. The demo network trains on this one.
pub fn sectioned_corpus(seed: u64, bytes: usize) -> String {
    generate(seed, bytes, Some(SECTION_BYTES))
}

/// About how long one section of [`sectioned_corpus`] runs.
pub const SECTION_BYTES: usize = 2048;

fn generate(seed: u64, bytes: usize, sections: Option<usize>) -> String {
    const SUBJECTS: &[&str] = &[
        "the miner",
        "the validator",
        "a node",
        "the orchestrator",
        "each peer",
        "the network",
    ];
    const VERBS: &[&str] = &[
        "trains",
        "verifies",
        "compresses",
        "uploads",
        "merges",
        "scores",
        "downloads",
        "commits",
    ];
    const OBJECTS: &[&str] = &[
        "the gradient",
        "a checkpoint",
        "the model",
        "its weights",
        "the batch",
        "every fragment",
    ];
    const TAILS: &[&str] = &[
        "in this window",
        "before the deadline",
        "on the chain",
        "from the store",
        "with care",
        "at block",
    ];
    const SYLLABLES: &[&str] = &[
        "ka", "zu", "rim", "tol", "ve", "nor", "qui", "bex", "lo", "mar", "syn", "dra",
    ];
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut out = String::with_capacity(bytes + 64);
    let (mut section_end, mut name, mut block) = (0, String::new(), 0);
    while out.len() < bytes {
        if let Some(length) = sections
            && out.len() >= section_end
        {
            name.clear();
            for _ in 0..3 {
                name.push_str(SYLLABLES[next(SYLLABLES.len())]);
            }
            block = next(1000);
            section_end = out.len() + length;
        }
        let tail = TAILS[next(TAILS.len())];
        match sections {
            None => out.push_str(SUBJECTS[next(SUBJECTS.len())]),
            Some(_) => {
                out.push_str(if next(2) == 0 { "node " } else { "peer " });
                out.push_str(&name);
            }
        }
        out.push(' ');
        out.push_str(VERBS[next(VERBS.len())]);
        out.push(' ');
        out.push_str(OBJECTS[next(OBJECTS.len())]);
        out.push(' ');
        out.push_str(tail);
        if tail == "at block" {
            let number = match sections {
                None => next(1000),
                Some(_) => block,
            };
            out.push_str(&format!(" {number}"));
        }
        out.push_str(if next(5) == 0 { ".\n" } else { ". " });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_round_trip_in_both_widths_and_reject_damage() {
        let narrow = vec![1, 2, 65535];
        assert_eq!(read_shard(&write_shard(&narrow)).unwrap(), narrow);
        let wide = vec![1, 100_257, 7];
        let bytes = write_shard(&wide);
        assert_eq!(i32::from_le_bytes(bytes[4..8].try_into().unwrap()), 2);
        assert_eq!(read_shard(&bytes).unwrap(), wide);
        assert!(read_shard(&bytes[..bytes.len() - 1]).is_err());
        assert!(read_shard(b"short").is_err());
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert!(matches!(read_shard(&bad), Err(DataError::BadShard(_))));
    }

    #[test]
    fn assignment_is_stable_and_spreads_over_shards() {
        let shards = [10_000u64, 30_000, 60_000];
        let a = assign("s", 3, 17, &shards, 513).unwrap();
        assert_eq!(a, assign("s", 3, 17, &shards, 513).unwrap());
        assert_ne!(a, assign("s", 4, 17, &shards, 513).unwrap());
        assert_ne!(a, assign("other seed", 3, 17, &shards, 513).unwrap());
        let mut counts = [0usize; 3];
        for uid in 0..3000 {
            let a = assign("s", uid, 5, &shards, 513).unwrap();
            assert!(a.offset + 513 <= shards[a.shard]);
            counts[a.shard] += 1;
        }
        for (count, expected) in counts.iter().zip([0.1, 0.3, 0.6]) {
            let share = *count as f64 / 3000.0;
            assert!(
                (share - expected).abs() < 0.04,
                "share {share} vs {expected}"
            );
        }
        assert!(assign("s", 0, 0, &[100], 513).is_err());
    }

    #[test]
    fn tokenizers_know_their_vocabularies() {
        assert_eq!(Tokenizer::Bytes.encode("hi"), [104, 105]);
        let cl = Tokenizer::Cl100k.encode("hello world");
        assert_eq!(cl, [15339, 1917]);
        assert!(cl.iter().all(|&t| t < Tokenizer::Cl100k.vocab_size()));
        assert_eq!("cl100k".parse::<Tokenizer>(), Ok(Tokenizer::Cl100k));
    }

    #[test]
    fn the_demo_corpus_is_deterministic() {
        assert_eq!(demo_corpus(1, 500), demo_corpus(1, 500));
        assert_ne!(demo_corpus(1, 500), demo_corpus(2, 500));
        assert!(demo_corpus(1, 500).len() >= 500);
        let sectioned = sectioned_corpus(1, 3 * SECTION_BYTES);
        assert_eq!(sectioned, sectioned_corpus(1, 3 * SECTION_BYTES));
        let name = |at: usize| {
            sectioned[at..]
                .split_whitespace()
                .skip_while(|w| *w != "node" && *w != "peer")
                .nth(1)
                .map(str::to_owned)
        };
        assert_ne!(name(0), name(2 * SECTION_BYTES + 10), "sections differ");
    }
}
