//! The live `hub` for the Hugging Face Hub (or any server speaking its API), through
//! `hf-hub`: revisions resolve to commit SHAs, files download at that exact SHA into the
//! standard HF cache layout (`models--OWNER--NAME/{blobs,snapshots,refs}`), resuming an
//! interrupted download and checking size and hash (LFS sha256 or git blob sha1) before the
//! file becomes visible; commits, branches and tags go up through the Hub's commit API.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use gradline_engine::effects::{CallScope, EffectError, Request, Response, Transport};
use hf_hub::repository::{CommitOperation, HFRepository, RepoTreeEntry, RepoTypeModel};
use hf_hub::{HFClient, HFError};
use serde_json::json;
use sha1::Digest as _;

use super::fetch::{self, FetchPolicy, Opened};
use super::{HubFace, answer_hub};
use crate::hub::{self, CommitArgs, Committed, Fetched, GetArgs, Header, HeaderArgs, TagArgs};

/// How to reach a hub, resolved for a run. The token never leaves this struct.
#[derive(Clone)]
pub struct HfConfig {
    pub endpoint: String,
    pub token: Option<String>,
    pub timeout: Duration,
    /// The HF cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: Option<PathBuf>,
    /// Attempts of each request inside hf-hub, and of each resumed download stream.
    pub attempts: u32,
}

impl std::fmt::Debug for HfConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("cache_dir", &self.cache_dir)
            .finish()
    }
}

/// What the hub says of a file: its cache name (the LFS sha256 or git blob id) and size.
struct Meta {
    etag: String,
    file_size: u64,
}

pub struct HfHub {
    client: HFClient,
    endpoint: String,
    attempts: u32,
}

impl HfHub {
    pub fn connect(config: &HfConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(config.timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        let mut builder = HFClient::builder()
            .endpoint(config.endpoint.trim_end_matches('/'))
            .client(http)
            .retry_max_attempts(config.attempts.max(1) as usize)
            .retry_base_delay(Duration::from_millis(200));
        if let Some(token) = &config.token {
            builder = builder.token(token.clone());
        }
        if let Some(dir) = &config.cache_dir {
            builder = builder.cache_dir(dir.clone());
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up the hub client: {}", redact(&e)))?;
        Ok(Self {
            client,
            endpoint: config.endpoint.trim_end_matches('/').to_owned(),
            attempts: config.attempts,
        })
    }

    pub fn cache_dir(&self) -> &Path {
        self.client.cache_dir()
    }
}

impl HubFace for HfHub {
    async fn header(&self, args: HeaderArgs) -> Result<Response, EffectError> {
        let (owner, name) = hub::split_repo(&args.repo).map_err(EffectError::final_)?;
        let repo = self.client.model(owner, name);
        let commit = resolve_commit(&repo, &args.revision).await?;
        let (size, hash) = file_entry(&repo, &args.repo, &args.path, &commit).await?;
        let prefix = read_range(&repo, &args.path, &commit, 0, 8, size).await?;
        let length = hub::header_length(&prefix, size).map_err(EffectError::final_)?;
        let header = read_range(&repo, &args.path, &commit, 8, length, size).await?;
        let answer = Header {
            revision: commit,
            size,
            hash,
        };
        Ok(Response {
            value: serde_json::json!(answer),
            body: Some(header),
        })
    }

    async fn get(&self, args: GetArgs) -> Result<Response, EffectError> {
        let (owner, name) = hub::split_repo(&args.repo).map_err(EffectError::final_)?;
        let repo = self.client.model(owner, name);
        let commit = resolve_commit(&repo, &args.revision).await?;
        let (size, etag) = file_entry(&repo, &args.repo, &args.path, &commit).await?;
        if size > args.max_bytes {
            return Err(fetch::too_large(size, args.max_bytes));
        }
        if etag.is_empty() || etag.contains(['/', '\\', '.']) {
            return Err(EffectError::final_(format!(
                "the hub gave `{}` an unusable hash `{etag}`",
                args.path
            )));
        }
        let meta = Meta {
            etag,
            file_size: size,
        };
        let folder = self.cache_dir().join(format!("models--{owner}--{name}"));
        let blob = folder.join("blobs").join(&meta.etag);
        let snapshot = folder.join("snapshots").join(&commit).join(&args.path);
        let cached = tokio::fs::metadata(&blob)
            .await
            .is_ok_and(|m| m.len() == meta.file_size);
        let bytes = if cached {
            let bytes = read(&blob).await?;
            match verified(&meta.etag, bytes).await {
                Ok(bytes) => bytes,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&blob).await;
                    return Err(EffectError::retryable(format!(
                        "{}: the cached copy is damaged ({e}); removed it",
                        args.path
                    )));
                }
            }
        } else {
            let policy = FetchPolicy {
                attempts: self.attempts,
                max_bytes: args.max_bytes,
                ..FetchPolicy::default()
            };
            let size = meta.file_size;
            let mut hash = EtagHash::new(&meta.etag, size);
            let done = fetch::fetch(&blob, Some(size), policy, &mut hash, |offset| {
                let (repo, path, commit) = (repo.clone(), args.path.clone(), commit.clone());
                Box::pin(async move {
                    let request = repo.download_file_stream().filename(path).revision(commit);
                    let (length, stream) = match offset {
                        0 => request.send().await,
                        _ => request.range(offset..size).send().await,
                    }
                    .map_err(hub_error)?;
                    let start = match length {
                        Some(length) if offset > 0 && length == size => 0,
                        _ => offset,
                    };
                    Ok(Opened {
                        offset: start,
                        stream: stream.map(|chunk| chunk.map_err(hub_error)).boxed(),
                    })
                })
            })
            .await?;
            if let Err(e) = hash.check() {
                let _ = tokio::fs::remove_file(&done.partial).await;
                return Err(EffectError::final_(format!("{}: {e}", args.path)));
            }
            fetch::commit(&done.partial, &blob).await?;
            done.bytes
        };
        link_snapshot(&blob, &snapshot).await?;
        if !hub::is_commit_sha(&args.revision) {
            let reference = folder.join("refs").join(&args.revision);
            fetch::write_atomic(&reference, commit.as_bytes()).await?;
        }
        let fetched = Fetched {
            revision: commit,
            size: meta.file_size,
        };
        Ok(fetched.into_response(bytes))
    }

    async fn commit(&self, args: CommitArgs, body: &[u8]) -> Result<Response, EffectError> {
        let (owner, name) = hub::split_repo(&args.repo).map_err(EffectError::final_)?;
        let files = hub::split_body(&args.files, body).map_err(EffectError::final_)?;
        if args.create_repo {
            self.client
                .create_repository()
                .repo_id(&args.repo)
                .repo_type(RepoTypeModel)
                .exist_ok(true)
                .send()
                .await
                .map_err(hub_error)?;
        }
        let repo = self.client.model(owner, name);
        if args.branch != "main" {
            let exists = repo
                .revision_exists()
                .revision(&args.branch)
                .send()
                .await
                .map_err(|e| missing_repo(e, &args))?;
            if !exists {
                repo.create_branch()
                    .branch(&args.branch)
                    .send()
                    .await
                    .map_err(|e| missing_repo(e, &args))?;
            }
        }
        let operations = files
            .into_iter()
            .map(|(path, bytes)| CommitOperation::add_bytes(path, bytes))
            .collect();
        let info = repo
            .create_commit()
            .operations(operations)
            .commit_message(args.message.clone())
            .revision(args.branch.clone())
            .send()
            .await
            .map_err(|e| missing_repo(e, &args))?;
        let revision = info
            .commit_oid
            .clone()
            .or_else(|| {
                info.commit_url
                    .as_deref()
                    .and_then(|u| u.rsplit('/').next())
                    .map(str::to_owned)
            })
            .filter(|sha| hub::is_commit_sha(sha))
            .ok_or_else(|| EffectError::final_("the hub's commit answer has no commit SHA"))?;
        let committed = Committed {
            url: info
                .commit_url
                .unwrap_or_else(|| format!("{}/{}/commit/{revision}", self.endpoint, args.repo)),
            revision,
        };
        Ok(Response::value(json!(committed)))
    }

    async fn tag(&self, args: TagArgs) -> Result<Response, EffectError> {
        let (owner, name) = hub::split_repo(&args.repo).map_err(EffectError::final_)?;
        self.client
            .model(owner, name)
            .create_tag()
            .tag(&args.tag)
            .revision(&args.revision)
            .send()
            .await
            .map_err(hub_error)?;
        Ok(Response::value(json!({})))
    }
}

impl Transport for HfHub {
    fn call<'a>(
        &'a self,
        _scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(answer_hub(self, request))
    }
}

type ModelRepo = HFRepository<RepoTypeModel>;

/// The commit SHA a revision (a SHA, branch or tag) names.
async fn resolve_commit(repo: &ModelRepo, revision: &str) -> Result<String, EffectError> {
    if hub::is_commit_sha(revision) {
        return Ok(revision.to_ascii_lowercase());
    }
    repo.info()
        .revision(revision.to_owned())
        .send()
        .await
        .map_err(hub_error)?
        .sha
        .filter(|sha| hub::is_commit_sha(sha))
        .ok_or_else(|| {
            EffectError::final_(format!("the hub resolved `{revision}` to no commit SHA"))
        })
}

/// A file's size and content hash (LFS sha256, else the git blob id) at a commit.
async fn file_entry(
    repo: &ModelRepo,
    name: &str,
    path: &str,
    commit: &str,
) -> Result<(u64, String), EffectError> {
    repo.get_paths_info()
        .paths(vec![path.to_owned()])
        .revision(commit.to_owned())
        .send()
        .await
        .map_err(hub_error)?
        .into_iter()
        .find_map(|entry| match entry {
            RepoTreeEntry::File {
                path: found,
                size,
                oid,
                lfs,
                ..
            } if found == path => Some((size, lfs.and_then(|l| l.sha256).unwrap_or(oid))),
            _ => None,
        })
        .ok_or_else(|| EffectError::final_(format!("`{name}` has no file `{path}` at {commit}")))
}

/// `length` bytes of a file from `offset`, by a ranged request (a server that sends the
/// whole file anyway is read only as far as needed).
async fn read_range(
    repo: &ModelRepo,
    path: &str,
    commit: &str,
    offset: u64,
    length: u64,
    file_size: u64,
) -> Result<Vec<u8>, EffectError> {
    let (sent, mut stream) = repo
        .download_file_stream()
        .filename(path.to_owned())
        .revision(commit.to_owned())
        .range(offset..offset + length)
        .send()
        .await
        .map_err(hub_error)?;
    let skip = match sent {
        Some(sent) if offset > 0 && sent == file_size => offset as usize,
        _ => 0,
    };
    let mut bytes = Vec::with_capacity(skip + length as usize);
    while ((bytes.len() - skip.min(bytes.len())) as u64) < length {
        match stream.next().await {
            Some(chunk) => bytes.extend_from_slice(&chunk.map_err(hub_error)?),
            None => break,
        }
    }
    let bytes = bytes
        .get(skip..skip + length as usize)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            EffectError::retryable(format!("`{path}` ended before byte {}", offset + length))
        })?;
    Ok(bytes)
}

/// The hash an ETag names, fed while the file streams in.
enum EtagHash {
    Sha256(String, sha2::Sha256),
    GitBlob(String, u64, sha1::Sha1),
    Unchecked,
}

impl EtagHash {
    fn new(etag: &str, size: u64) -> Self {
        let etag = etag.trim_matches('"').to_ascii_lowercase();
        let mut hash = match etag.len() {
            64 => Self::Sha256(etag, sha2::Sha256::new()),
            40 => Self::GitBlob(etag, size, sha1::Sha1::new()),
            _ => Self::Unchecked,
        };
        fetch::Digester::reset(&mut hash);
        hash
    }

    fn check(self) -> Result<(), String> {
        let (etag, actual) = match self {
            Self::Sha256(etag, hasher) => (etag, hex(&hasher.finalize())),
            Self::GitBlob(etag, _, hasher) => (etag, hex(&hasher.finalize())),
            Self::Unchecked => return Ok(()),
        };
        match actual == etag {
            true => Ok(()),
            false => Err(format!(
                "the content hashes to {actual}, the hub announced {etag}"
            )),
        }
    }
}

impl fetch::Digester for EtagHash {
    fn reset(&mut self) {
        match self {
            Self::Sha256(_, hasher) => *hasher = sha2::Sha256::new(),
            Self::GitBlob(_, size, hasher) => {
                *hasher = sha1::Sha1::new();
                hasher.update(format!("blob {size}\0").as_bytes());
            }
            Self::Unchecked => {}
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha256(_, hasher) => hasher.update(bytes),
            Self::GitBlob(_, _, hasher) => hasher.update(bytes),
            Self::Unchecked => {}
        }
    }
}

/// Checks a file against the hub's ETag: an LFS file's is its sha256, a git file's its
/// git blob sha1. Other ETags (e.g. from a CDN) are not hashes and are not checked.
pub fn verify_etag(etag: &str, bytes: &[u8]) -> Result<(), String> {
    let etag = etag.trim_matches('"').to_ascii_lowercase();
    let actual = match etag.len() {
        64 => hex(&sha2::Sha256::digest(bytes)),
        40 => {
            let mut hasher = sha1::Sha1::new();
            hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
            hasher.update(bytes);
            hex(&hasher.finalize())
        }
        _ => return Ok(()),
    };
    if actual == etag {
        Ok(())
    } else {
        Err(format!(
            "the content hashes to {actual}, the hub announced {etag}"
        ))
    }
}

/// [`verify_etag`] off the async threads (hashing a checkpoint takes a while).
async fn verified(etag: &str, bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let etag = etag.to_owned();
    tokio::task::spawn_blocking(move || verify_etag(&etag, &bytes).map(|()| bytes))
        .await
        .map_err(|e| format!("hashing: {e}"))?
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn read(path: &Path) -> Result<Vec<u8>, EffectError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| fetch::io_error(&format!("reading {}", path.display()), &e))
}

/// Points `snapshots/COMMIT/PATH` at the blob, as the HF cache does (a relative symlink).
async fn link_snapshot(blob: &Path, snapshot: &Path) -> Result<(), EffectError> {
    let Some(dir) = snapshot.parent() else {
        return Ok(());
    };
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| fetch::io_error("creating the snapshot folder", &e))?;
    let depth = dir
        .strip_prefix(blob.parent().and_then(Path::parent).unwrap_or(dir))
        .map_or(0, |rel| rel.components().count());
    let mut target = PathBuf::new();
    for _ in 0..depth {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob.file_name().unwrap_or_default());
    let _ = tokio::fs::remove_file(snapshot).await;
    #[cfg(unix)]
    let linked = tokio::fs::symlink(&target, snapshot).await;
    #[cfg(not(unix))]
    let linked = tokio::fs::copy(blob, snapshot).await.map(|_| ());
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(fetch::io_error("linking the snapshot", &e)),
    }
}

fn missing_repo(e: HFError, args: &CommitArgs) -> EffectError {
    match e {
        HFError::RepoNotFound { .. } if !args.create_repo => EffectError::final_(format!(
            "the repository `{}` does not exist on the hub: create it, or set `create_repo: true`",
            args.repo
        )),
        other => hub_error(other),
    }
}

/// Sorts hub errors into retryable (timeouts, connection failures, 5xx, 429) and final.
pub fn hub_error(e: HFError) -> EffectError {
    let message = redact(&e);
    let retryable = match &e {
        HFError::Http { context } => {
            let status = context.status.as_u16();
            status >= 500 || status == 429 || status == 408
        }
        HFError::RateLimited { .. } => true,
        HFError::Request { source, .. } => {
            source.is_timeout() || source.is_connect() || source.is_body() || source.is_request()
        }
        HFError::Io(_) => true,
        _ => false,
    };
    EffectError { retryable, message }
}

/// An hf-hub error as text, with any query string (signed URLs) cut from URLs in it.
fn redact(e: &HFError) -> String {
    let text = e.to_string();
    text.split_whitespace()
        .map(|word| match word.find("://") {
            Some(_) => word.split('?').next().unwrap_or(word),
            None => word,
        })
        .collect::<Vec<_>>()
        .join(" ")
}
