//! The embedded hub, `local://DIR`: the hub's interface on a folder, for the demo network
//! and for tests. Files are stored once by blake3; a commit is an immutable JSON record of
//! its parent, message and files, named by the first 40 hex digits of its own blake3 (so it
//! reads like a git SHA); branches and tags are files naming a commit.
//!
//! ```text
//! DIR/OWNER/NAME/objects/<blake3>
//!               /commits/<sha>.json
//!               /refs/heads/<branch>
//!               /refs/tags/<tag>
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use gradline_engine::effects::{CallScope, EffectError, Request, Response, Transport};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::fetch::{self, io_error};
use super::{HubFace, answer_hub};
use crate::hub::{self, CommitArgs, Committed, Fetched, GetArgs, Header, HeaderArgs, TagArgs};

pub struct LocalHub {
    root: PathBuf,
}

/// One commit of the embedded hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalCommit {
    pub parent: Option<String>,
    pub message: String,
    /// Every file of the tree at this commit.
    pub files: BTreeMap<String, FileRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileRef {
    pub digest: String,
    pub size: u64,
}

impl LocalHub {
    /// The hub of a `local://DIR` endpoint.
    pub fn open(endpoint: &str) -> Result<Self, String> {
        let dir = endpoint
            .strip_prefix("local://")
            .ok_or_else(|| format!("`{endpoint}` is not a `local://DIR` endpoint"))?;
        if dir.is_empty() {
            return Err("`local://` needs a folder, e.g. `local://.gradline/hub`".into());
        }
        Ok(Self {
            root: PathBuf::from(dir),
        })
    }

    fn repo_dir(&self, repo: &str) -> Result<PathBuf, EffectError> {
        let (owner, name) = hub::split_repo(repo).map_err(EffectError::final_)?;
        for part in [owner, name] {
            if part == "." || part == ".." || part.contains(['\\', '\0']) {
                return Err(EffectError::final_(format!(
                    "`{repo}` is not a valid repository id"
                )));
            }
        }
        Ok(self.root.join(owner).join(name))
    }

    fn existing_repo(&self, repo: &str) -> Result<PathBuf, EffectError> {
        let dir = self.repo_dir(repo)?;
        if dir.join("refs").is_dir() {
            Ok(dir)
        } else {
            Err(EffectError::final_(format!(
                "the repository `{repo}` does not exist in the embedded hub at {}",
                self.root.display()
            )))
        }
    }

    /// The commit a revision (SHA, branch or tag) names.
    pub fn resolve(&self, repo: &str, revision: &str) -> Result<String, EffectError> {
        let dir = self.existing_repo(repo)?;
        if hub::is_commit_sha(revision)
            && dir
                .join("commits")
                .join(format!("{revision}.json"))
                .is_file()
        {
            return Ok(revision.to_owned());
        }
        safe_ref(revision)?;
        for kind in ["heads", "tags"] {
            let path = dir.join("refs").join(kind).join(revision);
            if let Ok(sha) = std::fs::read_to_string(&path) {
                return Ok(sha.trim().to_owned());
            }
        }
        Err(EffectError::final_(format!(
            "`{repo}` has no revision `{revision}`"
        )))
    }

    fn read_commit(&self, dir: &Path, sha: &str) -> Result<LocalCommit, EffectError> {
        let path = dir.join("commits").join(format!("{sha}.json"));
        let text =
            std::fs::read(&path).map_err(|e| io_error(&format!("reading commit {sha}"), &e))?;
        if commit_id(&text) != sha {
            return Err(EffectError::final_(format!(
                "commit {sha} is damaged: its content does not match its id"
            )));
        }
        serde_json::from_slice(&text)
            .map_err(|e| EffectError::final_(format!("commit {sha} is damaged: {e}")))
    }
}

impl LocalHub {
    /// A file of a repository at a revision: the commit SHA, its entry, and where its bytes lie.
    fn file_at(
        &self,
        repo: &str,
        revision: &str,
        path: &str,
    ) -> Result<(String, FileRef, PathBuf), EffectError> {
        let dir = self.existing_repo(repo)?;
        let sha = self.resolve(repo, revision)?;
        let mut commit = self.read_commit(&dir, &sha)?;
        let file = commit.files.remove(path).ok_or_else(|| {
            EffectError::final_(format!("`{repo}` has no file `{path}` at {sha}"))
        })?;
        let object = dir.join("objects").join(&file.digest);
        Ok((sha, file, object))
    }
}

impl HubFace for LocalHub {
    async fn header(&self, args: HeaderArgs) -> Result<Response, EffectError> {
        use tokio::io::AsyncReadExt;
        let (sha, file, object) = self.file_at(&args.repo, &args.revision, &args.path)?;
        let what = format!("reading the header of `{}`", args.path);
        let mut object = tokio::fs::File::open(&object)
            .await
            .map_err(|e| io_error(&what, &e))?;
        let mut prefix = [0u8; 8];
        object
            .read_exact(&mut prefix)
            .await
            .map_err(|e| io_error(&what, &e))?;
        let length = hub::header_length(&prefix, file.size).map_err(EffectError::final_)?;
        let mut header = vec![0u8; length as usize];
        object
            .read_exact(&mut header)
            .await
            .map_err(|e| io_error(&what, &e))?;
        let answer = Header {
            revision: sha,
            size: file.size,
            hash: file.digest,
        };
        Ok(Response {
            value: json!(answer),
            body: Some(header),
        })
    }

    async fn get(&self, args: GetArgs) -> Result<Response, EffectError> {
        let (sha, file, object) = self.file_at(&args.repo, &args.revision, &args.path)?;
        if file.size > args.max_bytes {
            return Err(fetch::too_large(file.size, args.max_bytes));
        }
        let bytes = tokio::fs::read(&object)
            .await
            .map_err(|e| io_error(&format!("reading `{}`", args.path), &e))?;
        let digest = blake3::hash(&bytes).to_hex().to_string();
        if digest != file.digest || bytes.len() as u64 != file.size {
            return Err(EffectError::final_(format!(
                "`{}` at {sha} is damaged: it hashes to {digest}, the commit says {}",
                args.path, file.digest
            )));
        }
        let fetched = Fetched {
            revision: sha,
            size: file.size,
        };
        Ok(fetched.into_response(bytes))
    }

    async fn commit(&self, args: CommitArgs, body: &[u8]) -> Result<Response, EffectError> {
        let dir = self.repo_dir(&args.repo)?;
        safe_ref(&args.branch)?;
        if !dir.join("refs").is_dir() {
            if !args.create_repo {
                return Err(EffectError::final_(format!(
                    "the repository `{}` does not exist in the embedded hub: set `create_repo: true` to create it",
                    args.repo
                )));
            }
            for sub in ["objects", "commits", "refs/heads", "refs/tags"] {
                tokio::fs::create_dir_all(dir.join(sub))
                    .await
                    .map_err(|e| io_error("creating the repository", &e))?;
            }
        }
        let files = hub::split_body(&args.files, body).map_err(EffectError::final_)?;
        let _lock = BranchLock::acquire(&dir, &args.branch).await?;
        let head = dir.join("refs/heads").join(&args.branch);
        let parent = match std::fs::read_to_string(&head) {
            Ok(sha) => Some(sha.trim().to_owned()),
            Err(_) => std::fs::read_to_string(dir.join("refs/heads/main"))
                .ok()
                .map(|s| s.trim().to_owned()),
        };
        let mut tree = match &parent {
            Some(sha) => self.read_commit(&dir, sha)?.files,
            None => BTreeMap::new(),
        };
        for (path, bytes) in files {
            let digest = blake3::hash(&bytes).to_hex().to_string();
            let object = dir.join("objects").join(&digest);
            if !object.exists() {
                fetch::write_atomic(&object, &bytes).await?;
            }
            tree.insert(
                path,
                FileRef {
                    digest,
                    size: bytes.len() as u64,
                },
            );
        }
        let commit = LocalCommit {
            parent,
            message: args.message.clone(),
            files: tree,
        };
        let text = serde_json::to_vec_pretty(&commit)
            .map_err(|e| EffectError::final_(format!("encoding the commit: {e}")))?;
        let sha = commit_id(&text);
        fetch::write_atomic(&dir.join("commits").join(format!("{sha}.json")), &text).await?;
        fetch::write_atomic(&head, sha.as_bytes()).await?;
        let committed = Committed {
            url: format!("local://{}/{}/commit/{sha}", self.root.display(), args.repo),
            revision: sha,
        };
        Ok(Response::value(json!(committed)))
    }

    async fn tag(&self, args: TagArgs) -> Result<Response, EffectError> {
        let dir = self.existing_repo(&args.repo)?;
        safe_ref(&args.tag)?;
        let sha = self.resolve(&args.repo, &args.revision)?;
        let path = dir.join("refs/tags").join(&args.tag);
        match std::fs::read_to_string(&path) {
            Ok(existing) if existing.trim() == sha => {}
            Ok(existing) => {
                return Err(EffectError::final_(format!(
                    "tag `{}` already names {}; tags do not move",
                    args.tag,
                    existing.trim()
                )));
            }
            Err(_) => fetch::write_atomic(&path, sha.as_bytes()).await?,
        }
        Ok(Response::value(json!({})))
    }
}

impl Transport for LocalHub {
    fn call<'a>(
        &'a self,
        _scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(answer_hub(self, request))
    }
}

fn commit_id(text: &[u8]) -> String {
    blake3::hash(text).to_hex()[..40].to_owned()
}

fn safe_ref(name: &str) -> Result<(), EffectError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains("..")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(EffectError::final_(format!(
            "`{name}` is not a valid branch or tag name (letters, digits, `-`, `_`, `.`)"
        )))
    }
}

/// One writer per branch: a lock file created exclusively, removed on drop.
struct BranchLock(PathBuf);

impl BranchLock {
    async fn acquire(dir: &Path, branch: &str) -> Result<Self, EffectError> {
        let path = dir.join("refs/heads").join(format!(".{branch}.lock"));
        for _ in 0..200 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(io_error("locking the branch", &e)),
            }
        }
        Err(EffectError::retryable(format!(
            "branch `{branch}` stayed locked for 10s ({} may be left from a crash)",
            path.display()
        )))
    }
}

impl Drop for BranchLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
