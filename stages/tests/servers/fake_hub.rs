//! A Hugging Face Hub on loopback: the URL paths `hf-hub` and `huggingface_hub` use for
//! revision info, paths-info, file resolve (with ETag / X-Repo-Commit / X-Linked-* headers,
//! and a redirect to a CDN path for LFS files), byte ranges, preupload, commit (NDJSON,
//! inline base64), repo creation, branches and tags. Writes need the configured token.
//! Faults make the next file downloads fail in chosen ways.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use base64::Engine as _;
use futures::StreamExt as _;
use sha1::Digest as _;

/// Files above this size are "LFS" files: sha256 ETag, served through a redirect.
pub const LFS_THRESHOLD: usize = 1024;

#[derive(Clone, Debug)]
pub enum Fault {
    /// Send headers, then stall this long before the body.
    Stall(Duration),
    /// Announce the full length but send only this many bytes.
    Truncate(usize),
    /// Send every byte, one of them changed.
    Corrupt,
}

/// A file's bytes with the hashes the hub announces, computed once.
#[derive(Clone)]
pub struct Blob {
    pub bytes: Bytes,
    pub sha256: String,
    pub oid: String,
}

impl Blob {
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            sha256: sha256(&bytes),
            oid: git_oid(&bytes),
            bytes,
        }
    }
}

#[derive(Default)]
pub struct Repo {
    pub commits: HashMap<String, BTreeMap<String, Blob>>,
    pub branches: HashMap<String, String>,
    pub tags: HashMap<String, String>,
}

#[derive(Default)]
pub struct HubState {
    pub token: Option<String>,
    pub repos: Mutex<HashMap<String, Repo>>,
    /// Applied to file downloads, one per request, in order.
    pub faults: Mutex<VecDeque<Fault>>,
    /// Applied to every file download while set.
    pub always: Mutex<Option<Fault>>,
    /// Every API request answers this status while set (the hub is down).
    pub down: Mutex<Option<u16>>,
    /// `Range` headers seen on file downloads.
    pub ranges: Mutex<Vec<String>>,
    pub downloads: Mutex<usize>,
}

pub type Hub = Arc<HubState>;

impl HubState {
    /// A hub whose writes need `token`.
    pub fn new(token: Option<&str>) -> Hub {
        Arc::new(Self {
            token: token.map(str::to_owned),
            ..Self::default()
        })
    }

    /// Creates a repository with one commit on `main` holding `files`; returns the SHA.
    pub fn seed(&self, repo: &str, files: &[(&str, &[u8])]) -> String {
        let mut repos = self.repos.lock().unwrap();
        let entry = repos.entry(repo.to_owned()).or_default();
        let tree: BTreeMap<String, Blob> = files
            .iter()
            .map(|(p, b)| (p.to_string(), Blob::new(b.to_vec())))
            .collect();
        let sha = commit_sha(&tree, entry.branches.get("main"));
        entry.commits.insert(sha.clone(), tree);
        entry.branches.insert("main".into(), sha.clone());
        sha
    }

    pub fn fault(&self, fault: Fault) {
        self.faults.lock().unwrap().push_back(fault);
    }

    pub fn file(&self, repo: &str, revision: &str, path: &str) -> Option<Vec<u8>> {
        self.blob(repo, revision, path).map(|b| b.bytes.to_vec())
    }

    pub fn blob(&self, repo: &str, revision: &str, path: &str) -> Option<Blob> {
        let repos = self.repos.lock().unwrap();
        let repo = repos.get(repo)?;
        let sha = resolve(repo, revision)?;
        repo.commits.get(&sha)?.get(path).cloned()
    }

    pub fn resolve(&self, repo: &str, revision: &str) -> Option<String> {
        resolve(self.repos.lock().unwrap().get(repo)?, revision)
    }
}

fn resolve(repo: &Repo, revision: &str) -> Option<String> {
    if repo.commits.contains_key(revision) {
        return Some(revision.to_owned());
    }
    repo.branches
        .get(revision)
        .or_else(|| repo.tags.get(revision))
        .cloned()
}

fn commit_sha(tree: &BTreeMap<String, Blob>, parent: Option<&String>) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(parent.map_or("", String::as_str).as_bytes());
    for (path, blob) in tree {
        hasher.update(path.as_bytes());
        hasher.update(blob.sha256.as_bytes());
    }
    hex(&hasher.finalize())
}

pub fn sha256(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

pub fn git_oid(bytes: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", bytes.len()).as_bytes());
    hasher.update(bytes);
    hex(&hasher.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/api/models/{owner}/{name}", get(info_main))
        .route("/api/models/{owner}/{name}/revision/{revision}", get(info))
        .route(
            "/api/models/{owner}/{name}/paths-info/{revision}",
            post(paths_info),
        )
        .route(
            "/api/models/{owner}/{name}/preupload/{revision}",
            post(preupload),
        )
        .route("/api/models/{owner}/{name}/commit/{revision}", post(commit))
        .route("/api/models/{owner}/{name}/branch/{branch}", post(branch))
        .route("/api/models/{owner}/{name}/tag/{revision}", post(tag))
        .route("/api/repos/create", post(create))
        .route(
            "/{owner}/{name}/resolve/{revision}/{*path}",
            any(resolve_file),
        )
        .route("/cdn/{owner}/{name}/{revision}/{*path}", any(cdn))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(hub)
}

fn down(hub: &HubState) -> Option<Response> {
    hub.down
        .lock()
        .unwrap()
        .map(|status| (StatusCode::from_u16(status).unwrap(), "the hub is down").into_response())
}

/// The refusal of a write without the configured token.
fn unauthorized(hub: &HubState, headers: &HeaderMap) -> Option<Response> {
    let token = hub.token.as_ref()?;
    let sent = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (sent != format!("Bearer {token}")).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            "Invalid credentials in Authorization header",
        )
            .into_response()
    })
}

fn not_found(what: &str) -> Response {
    let mut response = (
        StatusCode::NOT_FOUND,
        format!("{{\"error\":\"{what} not found\"}}"),
    )
        .into_response();
    response
        .headers_mut()
        .insert("x-error-code", "RepoNotFound".parse().unwrap());
    response
}

async fn info_main(state: State<Hub>, Path((owner, name)): Path<(String, String)>) -> Response {
    info(state, Path((owner, name, "main".into()))).await
}

async fn info(
    State(hub): State<Hub>,
    Path((owner, name, revision)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = down(&hub) {
        return r;
    }
    let repo = format!("{owner}/{name}");
    match hub.resolve(&repo, &revision) {
        Some(sha) => axum::Json(serde_json::json!({ "id": repo, "sha": sha, "private": false }))
            .into_response(),
        None => {
            let mut response = not_found("revision");
            response
                .headers_mut()
                .insert("x-error-code", "RevisionNotFound".parse().unwrap());
            response
        }
    }
}

async fn paths_info(
    State(hub): State<Hub>,
    Path((owner, name, revision)): Path<(String, String, String)>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    if let Some(r) = down(&hub) {
        return r;
    }
    let repo = format!("{owner}/{name}");
    let mut out = Vec::new();
    for path in body["paths"].as_array().into_iter().flatten() {
        let path = path.as_str().unwrap_or_default();
        if let Some(blob) = hub.blob(&repo, &revision, path) {
            let size = blob.bytes.len();
            let mut entry = serde_json::json!({
                "type": "file", "oid": blob.oid, "size": size, "path": path,
            });
            if size > LFS_THRESHOLD {
                entry["lfs"] = serde_json::json!({
                    "oid": blob.sha256, "size": size, "pointerSize": 134,
                });
                entry["lfs"]["sha256"] = entry["lfs"]["oid"].clone();
            }
            out.push(entry);
        }
    }
    axum::Json(out).into_response()
}

async fn resolve_file(
    State(hub): State<Hub>,
    method: Method,
    headers: HeaderMap,
    Path((owner, name, revision, path)): Path<(String, String, String, String)>,
) -> Response {
    if let Some(r) = down(&hub) {
        return r;
    }
    let repo = format!("{owner}/{name}");
    let (Some(sha), Some(blob)) = (
        hub.resolve(&repo, &revision),
        hub.blob(&repo, &revision, &path),
    ) else {
        let mut response = (StatusCode::NOT_FOUND, "entry not found").into_response();
        response
            .headers_mut()
            .insert("x-error-code", "EntryNotFound".parse().unwrap());
        return response;
    };
    if blob.bytes.len() > LFS_THRESHOLD {
        // To another host, as the real hub's CDN redirects are (clients follow only redirects
        // within the hub on HEAD): `127.0.0.1` and `localhost` are the same server.
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1")
            .replace("127.0.0.1", "localhost");
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::FOUND;
        let h = response.headers_mut();
        h.insert(
            header::LOCATION,
            format!("http://{host}/cdn/{owner}/{name}/{sha}/{path}")
                .parse()
                .unwrap(),
        );
        h.insert("x-repo-commit", sha.parse().unwrap());
        h.insert(
            "x-linked-etag",
            format!("\"{}\"", blob.sha256).parse().unwrap(),
        );
        h.insert(
            "x-linked-size",
            blob.bytes.len().to_string().parse().unwrap(),
        );
        h.insert(header::ETAG, format!("\"{}\"", blob.oid).parse().unwrap());
        return response;
    }
    let mut response = serve_bytes(&hub, &method, &headers, blob.bytes.clone()).await;
    let h = response.headers_mut();
    h.insert("x-repo-commit", sha.parse().unwrap());
    h.insert(header::ETAG, format!("\"{}\"", blob.oid).parse().unwrap());
    response
}

async fn cdn(
    State(hub): State<Hub>,
    method: Method,
    headers: HeaderMap,
    Path((owner, name, sha, path)): Path<(String, String, String, String)>,
) -> Response {
    match hub.blob(&format!("{owner}/{name}"), &sha, &path) {
        Some(blob) => serve_bytes(&hub, &method, &headers, blob.bytes).await,
        None => (StatusCode::NOT_FOUND, "no such object").into_response(),
    }
}

async fn serve_bytes(
    hub: &HubState,
    method: &Method,
    headers: &HeaderMap,
    bytes: Bytes,
) -> Response {
    let total = bytes.len();
    let (status, start) = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(range) => {
            hub.ranges.lock().unwrap().push(range.to_owned());
            let start: usize = range
                .trim_start_matches("bytes=")
                .split('-')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (StatusCode::PARTIAL_CONTENT, start.min(total))
        }
        None => (StatusCode::OK, 0),
    };
    let body = bytes.slice(start..);
    let fault = if *method == Method::GET {
        *hub.downloads.lock().unwrap() += 1;
        let next = hub.faults.lock().unwrap().pop_front();
        next.or_else(|| hub.always.lock().unwrap().clone())
    } else {
        None
    };
    let length = body.len();
    let response_body = match fault {
        Some(Fault::Stall(pause)) => Body::from_stream(futures::stream::once(async move {
            tokio::time::sleep(pause).await;
            Ok::<_, std::io::Error>(body)
        })),
        Some(Fault::Truncate(keep)) => {
            let part = body.slice(..keep.min(length));
            // The bytes go out before the connection breaks.
            let broken = futures::stream::once(async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(std::io::Error::other("connection reset by the fault"))
            });
            Body::from_stream(futures::stream::iter(vec![Ok(part)]).chain(broken))
        }
        Some(Fault::Corrupt) => {
            let mut changed = body.to_vec();
            if let Some(byte) = changed.last_mut() {
                *byte ^= 0xff;
            }
            Body::from(changed)
        }
        None => Body::from(body),
    };
    let mut response = Response::new(if *method == Method::HEAD {
        Body::empty()
    } else {
        response_body
    });
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_LENGTH, length.to_string().parse().unwrap());
    h.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{total}", total.saturating_sub(1))
                .parse()
                .unwrap(),
        );
    }
    response
}

async fn preupload(
    State(hub): State<Hub>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    if let Some(r) = down(&hub) {
        return r;
    }
    if let Some(r) = unauthorized(&hub, &headers) {
        return r;
    }
    let files: Vec<serde_json::Value> = body["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| serde_json::json!({ "path": f["path"], "uploadMode": "regular", "shouldIgnore": false }))
        .collect();
    axum::Json(serde_json::json!({ "files": files })).into_response()
}

async fn commit(
    State(hub): State<Hub>,
    headers: HeaderMap,
    Path((owner, name, revision)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if let Some(r) = down(&hub) {
        return r;
    }
    if let Some(r) = unauthorized(&hub, &headers) {
        return r;
    }
    let repo_id = format!("{owner}/{name}");
    let mut repos = hub.repos.lock().unwrap();
    let Some(repo) = repos.get_mut(&repo_id) else {
        return not_found("repository");
    };
    let parent = repo.branches.get(&revision).cloned();
    let mut tree = parent
        .as_ref()
        .and_then(|p| repo.commits.get(p).cloned())
        .unwrap_or_default();
    for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(op) = serde_json::from_slice::<serde_json::Value>(line) else {
            return (StatusCode::BAD_REQUEST, "bad ndjson").into_response();
        };
        if op["key"] == "file" {
            let content = base64::engine::general_purpose::STANDARD
                .decode(op["value"]["content"].as_str().unwrap_or_default())
                .unwrap_or_default();
            tree.insert(
                op["value"]["path"].as_str().unwrap_or_default().to_owned(),
                Blob::new(content),
            );
        }
    }
    let sha = commit_sha(&tree, parent.as_ref());
    repo.commits.insert(sha.clone(), tree);
    repo.branches.insert(revision, sha.clone());
    axum::Json(serde_json::json!({
        "commitOid": sha,
        "commitUrl": format!("http://hub.test/{repo_id}/commit/{sha}"),
        "commitMessage": "",
    }))
    .into_response()
}

async fn branch(
    State(hub): State<Hub>,
    headers: HeaderMap,
    Path((owner, name, branch)): Path<(String, String, String)>,
) -> Response {
    if let Some(r) = unauthorized(&hub, &headers) {
        return r;
    }
    let mut repos = hub.repos.lock().unwrap();
    let Some(repo) = repos.get_mut(&format!("{owner}/{name}")) else {
        return not_found("repository");
    };
    let Some(main) = repo.branches.get("main").cloned() else {
        return (StatusCode::BAD_REQUEST, "empty repository").into_response();
    };
    repo.branches.entry(branch).or_insert(main);
    StatusCode::OK.into_response()
}

async fn tag(
    State(hub): State<Hub>,
    headers: HeaderMap,
    Path((owner, name, revision)): Path<(String, String, String)>,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    if let Some(r) = unauthorized(&hub, &headers) {
        return r;
    }
    let mut repos = hub.repos.lock().unwrap();
    let Some(repo) = repos.get_mut(&format!("{owner}/{name}")) else {
        return not_found("repository");
    };
    let Some(sha) = resolve(repo, &revision) else {
        return (StatusCode::NOT_FOUND, "revision not found").into_response();
    };
    repo.tags
        .insert(body["tag"].as_str().unwrap_or_default().to_owned(), sha);
    StatusCode::OK.into_response()
}

async fn create(
    State(hub): State<Hub>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<serde_json::Value>,
) -> Response {
    if let Some(r) = unauthorized(&hub, &headers) {
        return r;
    }
    let repo = format!(
        "{}/{}",
        body["organization"].as_str().unwrap_or("user"),
        body["name"].as_str().unwrap_or_default()
    );
    let mut repos = hub.repos.lock().unwrap();
    if repos.contains_key(&repo) {
        return (StatusCode::CONFLICT, "already exists").into_response();
    }
    // Like the real hub, a new repository starts with one commit holding `.gitattributes`.
    let tree = BTreeMap::from([(
        ".gitattributes".to_owned(),
        Blob::new(b"*.safetensors filter=lfs\n".to_vec()),
    )]);
    let sha = commit_sha(&tree, None);
    let mut fresh = Repo::default();
    fresh.commits.insert(sha.clone(), tree);
    fresh.branches.insert("main".into(), sha);
    repos.insert(repo.clone(), fresh);
    axum::Json(serde_json::json!({ "url": format!("http://hub.test/{repo}") })).into_response()
}
