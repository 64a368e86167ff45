//! The checkpoint endpoint a validator runs (`gradline serve`): `GET /get-checkpoint` sends
//! the latest checkpoint with its revision and blake3 digest in headers (the digest is also
//! the ETag), honouring single byte ranges and `If-Range`; `GET /health` says whether a
//! checkpoint is being served. Miners fall back to it when the hub fails them.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::endpoint::{CHECKPOINT_PATH, DIGEST_HEADER, HEALTH_PATH, REVISION_HEADER};

/// The checkpoint being served.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    pub path: PathBuf,
    pub revision: String,
    /// blake3, hex.
    pub digest: String,
    pub size: u64,
}

/// Where the latest checkpoint comes from; asked on every request, so a new cycle's
/// checkpoint is served as soon as it exists.
pub trait CheckpointSource: Send + Sync + 'static {
    fn current(&self) -> Result<Option<Served>, String>;
}

/// One fixed file.
pub struct FixedFile(pub Served);

impl FixedFile {
    /// Serves a file; its digest is computed now, its revision defaults to the digest.
    pub fn open(path: PathBuf, revision: Option<String>) -> std::io::Result<Self> {
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(std::fs::File::open(&path)?)?;
        let digest = hasher.finalize().to_hex().to_string();
        let size = std::fs::metadata(&path)?.len();
        Ok(Self(Served {
            path,
            revision: revision.unwrap_or_else(|| digest.clone()),
            digest,
            size,
        }))
    }
}

impl CheckpointSource for FixedFile {
    fn current(&self) -> Result<Option<Served>, String> {
        Ok(Some(self.0.clone()))
    }
}

/// The endpoint's routes.
pub fn router(source: Arc<dyn CheckpointSource>) -> Router {
    Router::new()
        .route(CHECKPOINT_PATH, get(checkpoint))
        .route(HEALTH_PATH, get(health))
        .with_state(source)
}

async fn health(State(source): State<Arc<dyn CheckpointSource>>) -> Response {
    match source.current() {
        Ok(current) => {
            let body = serde_json::json!({
                "status": "ok",
                "revision": current.as_ref().map(|c| c.revision.clone()),
                "digest": current.as_ref().map(|c| c.digest.clone()),
            });
            (
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

async fn checkpoint(
    State(source): State<Arc<dyn CheckpointSource>>,
    headers: HeaderMap,
) -> Response {
    let served = match source.current() {
        Ok(Some(served)) => served,
        Ok(None) => return (StatusCode::NOT_FOUND, "no checkpoint yet\n").into_response(),
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    };
    let etag = format!("\"{}\"", served.digest);
    let if_range_matches = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .filter(|_| if_range_matches)
        .map(|v| parse_range(v, served.size));
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, served.size),
        Some(Some((start, end))) => (StatusCode::PARTIAL_CONTENT, start, end),
        Some(None) => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{}", served.size))],
            )
                .into_response();
        }
    };
    let mut file = match tokio::fs::File::open(&served.path).await {
        Ok(file) => file,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the checkpoint cannot be read: {e}\n"),
            )
                .into_response();
        }
    };
    if start > 0
        && let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await
    {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    let length = end - start;
    let body = Body::from_stream(ReaderStream::with_capacity(file.take(length), 1 << 20));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
    headers.insert(header::CONTENT_LENGTH, value(&length.to_string()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(header::ETAG, value(&etag));
    headers.insert(DIGEST_HEADER, value(&served.digest));
    headers.insert(REVISION_HEADER, value(&served.revision));
    if status == StatusCode::PARTIAL_CONTENT {
        headers.insert(
            header::CONTENT_RANGE,
            value(&format!("bytes {start}-{}/{}", end - 1, served.size)),
        );
    }
    response
}

/// One `bytes=` range as `[start, end)`; `None` when it cannot be satisfied. Several ranges
/// are answered with the first.
fn parse_range(text: &str, size: u64) -> Option<(u64, u64)> {
    let spec = text
        .trim()
        .strip_prefix("bytes=")?
        .split(',')
        .next()?
        .trim();
    let (first, last) = spec.split_once('-')?;
    let (start, end) = match (first.trim(), last.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().ok()?;
            (size.saturating_sub(n), size)
        }
        (start, "") => (start.parse().ok()?, size),
        (start, last) => {
            let last: u64 = last.parse().ok()?;
            (start.parse().ok()?, last.saturating_add(1).min(size))
        }
    };
    (start < end && start < size).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 10)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 100)));
        assert_eq!(parse_range("bytes=-5", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=95-200", 100), Some((95, 100)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
