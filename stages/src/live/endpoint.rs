//! The live `http`: a validator's checkpoint endpoint (`gradline serve`). A HEAD announces
//! the checkpoint's size, revision and blake3 digest; the GET resumes by byte range (with
//! `If-Range`, so a checkpoint replaced mid-download restarts cleanly) and the bytes must
//! hash to the announced digest.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use gradline_engine::effects::{CallScope, EffectError, Request, Response, Transport};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, IF_RANGE, RANGE};
use serde_json::json;

use super::fetch::{self, FetchPolicy, Opened};
use crate::endpoint::{DIGEST_HEADER, GetArgs, REVISION_HEADER, Served};

pub struct Endpoint {
    base: String,
    http: reqwest::Client,
    partials: PathBuf,
}

impl Endpoint {
    pub fn connect(base: &str, timeout: Duration, partials: PathBuf) -> Result<Self, String> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("`{base}` is not an http:// or https:// URL"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            partials,
        })
    }

    async fn get(&self, args: GetArgs) -> Result<Response, EffectError> {
        let url = format!("{}{}", self.base, args.path);
        let head = self
            .http
            .head(&url)
            .send()
            .await
            .map_err(|e| request_error(&url, &e))?;
        status_ok(&url, head.status())?;
        let header = |name: &str| {
            head.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let digest = header(DIGEST_HEADER).ok_or_else(|| {
            EffectError::final_(format!("{url} announced no digest ({DIGEST_HEADER})"))
        })?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EffectError::final_(format!(
                "{url} announced `{digest}`, which is not a blake3 digest"
            )));
        }
        let revision = header(REVISION_HEADER).unwrap_or_else(|| digest.clone());
        let size: u64 = header(CONTENT_LENGTH.as_str())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| EffectError::final_(format!("{url} announced no length")))?;
        if size > args.max_bytes {
            return Err(fetch::too_large(size, args.max_bytes));
        }
        let blob = self.partials.join(format!("endpoint-{digest}"));
        let policy = FetchPolicy {
            max_bytes: args.max_bytes,
            ..FetchPolicy::default()
        };
        let mut hasher = blake3::Hasher::new();
        let done = fetch::fetch(&blob, Some(size), policy, &mut hasher, |offset| {
            let (http, url, digest) = (self.http.clone(), url.clone(), digest.clone());
            Box::pin(async move {
                let mut request = http.get(&url);
                if offset > 0 {
                    request = request
                        .header(RANGE, format!("bytes={offset}-"))
                        .header(IF_RANGE, format!("\"{digest}\""));
                }
                let response = request.send().await.map_err(|e| request_error(&url, &e))?;
                status_ok(&url, response.status())?;
                let start = match response.status() {
                    StatusCode::PARTIAL_CONTENT => offset,
                    _ => 0,
                };
                Ok(Opened {
                    offset: start,
                    stream: response
                        .bytes_stream()
                        .map(move |chunk| chunk.map_err(|e| request_error("the endpoint", &e)))
                        .boxed(),
                })
            })
        })
        .await?;
        let _ = tokio::fs::remove_file(&done.partial).await;
        let bytes = done.bytes;
        let actual = hasher.finalize().to_hex().to_string();
        if actual != digest {
            return Err(EffectError::final_(format!(
                "{url} sent bytes hashing to {actual}, not the announced {digest}"
            )));
        }
        let served = Served {
            revision,
            digest,
            size,
        };
        Ok(Response {
            value: json!(served),
            body: Some(bytes),
        })
    }
}

impl Transport for Endpoint {
    fn call<'a>(
        &'a self,
        _scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            match request.op.as_str() {
                "get" => self.get(super::args(&request)?).await,
                op => Err(EffectError::final_(format!(
                    "the checkpoint endpoint has no operation `{op}`"
                ))),
            }
        })
    }
}

fn status_ok(url: &str, status: StatusCode) -> Result<(), EffectError> {
    if status.is_success() {
        return Ok(());
    }
    let message = format!("{url} answered {status}");
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        Err(EffectError::retryable(message))
    } else {
        Err(EffectError::final_(message))
    }
}

fn request_error(url: &str, e: &reqwest::Error) -> EffectError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    let url = url.split('?').next().unwrap_or(url);
    let detail = std::error::Error::source(e).map_or_else(String::new, |s| format!(": {s}"));
    EffectError::retryable(format!("{url}: {what}{detail}"))
}
