//! The model hub as stages use it: `hub` requests through the effects. Two live faces answer
//! them — the Hugging Face Hub ([`crate::live::hf`]) and the embedded hub on a folder
//! ([`crate::live::local_hub`]):
//!
//! | op | args | body | answer |
//! |---|---|---|---|
//! | `get` | [`GetArgs`] | — | the file's bytes; [`Fetched`] |
//! | `commit` | [`CommitArgs`] | the files' bytes, one after another | [`Committed`] |
//! | `tag` | [`TagArgs`] | — | `{}` |
//! | `header` | [`HeaderArgs`] | — | a safetensors file's JSON header (its first bytes only); [`Header`] |
//!
//! Requests carry no token: the live face reads it from the environment.

use gradline_engine::effects::{Effects, Request};
use gradline_engine::runtime::StageError;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetArgs {
    /// `owner/name`.
    pub repo: String,
    /// A commit SHA, a branch or a tag.
    pub revision: String,
    /// The file's path in the repository.
    pub path: String,
    pub max_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fetched {
    /// The commit SHA the revision resolved to.
    pub revision: String,
    pub size: u64,
}

impl Fetched {
    /// The `get` answer: this as the value, the file's bytes as the body.
    pub fn into_response(self, bytes: Vec<u8>) -> gradline_engine::effects::Response {
        gradline_engine::effects::Response {
            value: json!(self),
            body: Some(bytes),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitArgs {
    pub repo: String,
    /// Created from `main` when it does not exist.
    pub branch: String,
    pub message: String,
    /// The files, in the order their bytes follow one another in the body.
    pub files: Vec<FileEntry>,
    /// Create the repository when it does not exist.
    #[serde(default)]
    pub create_repo: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    /// The new commit's SHA.
    pub revision: String,
    /// Where the commit can be seen.
    pub url: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TagArgs {
    pub repo: String,
    pub tag: String,
    pub revision: String,
}

/// The largest safetensors header read (the format's own limit is 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderArgs {
    pub repo: String,
    pub revision: String,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The commit SHA the revision resolved to.
    pub revision: String,
    /// The whole file's size.
    pub size: u64,
    /// The hub's content hash of the whole file (sha256 of an LFS file on the Hugging Face
    /// Hub, blake3 on the embedded hub).
    pub hash: String,
}

/// The JSON header of a safetensors file at a revision, without its weights.
pub async fn header(effects: &Effects, args: HeaderArgs) -> Result<(Vec<u8>, Header), StageError> {
    let what = format!("{}@{}/{}", args.repo, args.revision, args.path);
    let response = effects
        .call(Request::new("hub", "header", json!(args)))
        .await
        .map_err(|e| StageError::from(e).context(format!("reading the header of {what}")))?;
    let header: Header = serde_json::from_value(response.value)
        .map_err(|e| StageError::final_(format!("the hub's answer for {what}: {e}")))?;
    let body = response
        .body
        .ok_or_else(|| StageError::final_(format!("the hub answered {what} without a body")))?;
    Ok((body, header))
}

/// The header length a safetensors file starts with, checked against the file's size.
pub fn header_length(prefix: &[u8], file_size: u64) -> Result<u64, String> {
    let bytes: [u8; 8] = prefix
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("shorter than a safetensors header")?;
    let length = u64::from_le_bytes(bytes);
    if length > MAX_HEADER_BYTES || length.saturating_add(8) > file_size {
        return Err(format!(
            "not a safetensors file: a {length}-byte header in a {file_size}-byte file"
        ));
    }
    Ok(length)
}

/// Fetches a file at a revision.
pub async fn get(effects: &Effects, args: GetArgs) -> Result<(Vec<u8>, Fetched), StageError> {
    let what = format!("{}@{}/{}", args.repo, args.revision, args.path);
    let response = effects
        .call(Request::new("hub", "get", json!(args)))
        .await
        .map_err(|e| StageError::from(e).context(format!("fetching {what} from the hub")))?;
    let fetched: Fetched = serde_json::from_value(response.value)
        .map_err(|e| StageError::final_(format!("the hub's answer for {what}: {e}")))?;
    let body = response
        .body
        .ok_or_else(|| StageError::final_(format!("the hub answered {what} without a body")))?;
    Ok((body, fetched))
}

/// Commits files (path, bytes) to a branch and returns the new commit.
pub async fn commit(
    effects: &Effects,
    repo: &str,
    branch: &str,
    message: &str,
    create_repo: bool,
    files: Vec<(String, Vec<u8>)>,
) -> Result<Committed, StageError> {
    let entries = files
        .iter()
        .map(|(path, bytes)| FileEntry {
            path: path.clone(),
            size: bytes.len() as u64,
        })
        .collect();
    let args = CommitArgs {
        repo: repo.to_owned(),
        branch: branch.to_owned(),
        message: message.to_owned(),
        files: entries,
        create_repo,
    };
    let body = files.into_iter().flat_map(|(_, bytes)| bytes).collect();
    let response = effects
        .call(Request::new("hub", "commit", json!(args)).with_body(body))
        .await
        .map_err(|e| StageError::from(e).context(format!("committing to {repo}@{branch}")))?;
    serde_json::from_value(response.value)
        .map_err(|e| StageError::final_(format!("the hub's answer to a commit: {e}")))
}

/// Tags a commit.
pub async fn tag(effects: &Effects, args: TagArgs) -> Result<(), StageError> {
    let what = format!("tagging {}@{} as {}", args.repo, args.revision, args.tag);
    effects
        .call(Request::new("hub", "tag", json!(args)))
        .await
        .map_err(|e| StageError::from(e).context(what))?;
    Ok(())
}

/// Splits a commit body back into its files, checking it against the entries.
pub fn split_body(files: &[FileEntry], body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let total: u64 = files.iter().map(|f| f.size).sum();
    if total != body.len() as u64 {
        return Err(format!(
            "the commit lists {total} bytes of files but carries {}",
            body.len()
        ));
    }
    let mut at = 0usize;
    Ok(files
        .iter()
        .map(|f| {
            let end = at + f.size as usize;
            let part = (f.path.clone(), body[at..end].to_vec());
            at = end;
            part
        })
        .collect())
}

/// Splits `owner/name`; a repository needs both.
pub fn split_repo(repo: &str) -> Result<(&str, &str), String> {
    match repo.split_once('/') {
        Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((owner, name))
        }
        _ => Err(format!(
            "`{repo}` is not a repository id of the form `owner/name`"
        )),
    }
}

/// Whether a revision is a full commit SHA (40 hex digits).
pub fn is_commit_sha(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}
