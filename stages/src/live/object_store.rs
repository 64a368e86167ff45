//! The live `store`: an object store chosen by URL through `object_store` — `file://`,
//! `memory://`, `s3://` (AWS or any S3-compatible endpoint), `r2://ACCOUNT/BUCKET`
//! (Cloudflare R2 over S3), `gs://`, `az://`. Reads stream into a resumable partial file and
//! are capped; large writes go up in parts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use gradline_engine::effects::{CallScope, EffectError, Request, Response, Transport};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as ObjectPath;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use serde_json::json;

use super::fetch::{self, FetchPolicy, Opened, Unhashed};
use crate::store::{GetArgs, Stored};

/// Objects at least this large are uploaded in parts.
pub const MULTIPART_THRESHOLD: usize = 64 << 20;
const PART_SIZE: usize = 16 << 20;
const PARTS_IN_FLIGHT: usize = 4;

/// How to reach a store, from `resources.store` with params and environment resolved.
#[derive(Clone, Debug, Default)]
pub struct StoreConfig {
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: bool,
    pub virtual_hosted: bool,
    pub timeout: Option<Duration>,
}

/// An opened store with the prefix of its URL.
pub struct StoreSystem {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    partials: PathBuf,
    /// `file://` and `memory://`: read in one piece, no partial file needed.
    local: bool,
}

impl StoreSystem {
    /// Opens the store a URL names. `partials` is where interrupted reads wait to resume.
    pub fn open(
        config: &StoreConfig,
        env: &dyn Fn(&str) -> Option<String>,
        partials: PathBuf,
    ) -> Result<Self, String> {
        let (store, prefix) = open_store(config, env)?;
        Ok(Self {
            store,
            prefix,
            url: config.url.clone(),
            partials,
            local: config.url.starts_with("file://") || config.url.starts_with("memory://"),
        })
    }

    fn location(&self, key: &str) -> Result<ObjectPath, EffectError> {
        let key = ObjectPath::parse(key)
            .map_err(|e| EffectError::final_(format!("`{key}` is not a valid object key: {e}")))?;
        Ok(self.prefix.parts().chain(key.parts()).collect())
    }

    async fn get(&self, args: GetArgs) -> Result<Response, EffectError> {
        let location = self.location(&args.key)?;
        let meta = self.store.head(&location).await.map_err(store_error)?;
        let max_bytes = args.max_bytes.unwrap_or(u64::MAX);
        if self.local {
            if meta.size > max_bytes {
                return Err(fetch::too_large(meta.size, max_bytes));
            }
            let bytes = self
                .store
                .get(&location)
                .await
                .map_err(store_error)?
                .bytes()
                .await
                .map_err(store_error)?
                .to_vec();
            let stored = Stored {
                size: bytes.len() as u64,
                version: meta.version.or(meta.e_tag),
            };
            return Ok(Response {
                value: json!(stored),
                body: Some(bytes),
            });
        }
        let id = blake3::hash(
            format!("{}\n{location}\n{:?}\n{}", self.url, meta.e_tag, meta.size).as_bytes(),
        );
        let blob = self.partials.join(id.to_hex().as_str());
        let policy = FetchPolicy {
            max_bytes,
            ..FetchPolicy::default()
        };
        let e_tag = meta.e_tag.clone();
        let done = fetch::fetch(&blob, Some(meta.size), policy, &mut Unhashed, |offset| {
            let (store, location, e_tag) = (self.store.clone(), location.clone(), e_tag.clone());
            Box::pin(async move {
                let options = GetOptions {
                    range: (offset > 0).then_some(GetRange::Offset(offset)),
                    if_match: e_tag,
                    ..GetOptions::default()
                };
                let result = store
                    .get_opts(&location, options)
                    .await
                    .map_err(store_error)?;
                let start = result.range.start;
                Ok(Opened {
                    offset: start,
                    stream: result
                        .into_stream()
                        .map(|chunk| chunk.map_err(store_error))
                        .boxed(),
                })
            })
        })
        .await?;
        let _ = tokio::fs::remove_file(&done.partial).await;
        let bytes = done.bytes;
        let stored = Stored {
            size: bytes.len() as u64,
            version: meta.version.or(meta.e_tag),
        };
        Ok(Response {
            value: json!(stored),
            body: Some(bytes),
        })
    }

    async fn put(&self, key: &str, body: Vec<u8>) -> Result<Response, EffectError> {
        let location = self.location(key)?;
        let size = body.len() as u64;
        let result = if body.len() < MULTIPART_THRESHOLD {
            self.store
                .put(&location, PutPayload::from(body))
                .await
                .map_err(store_error)?
        } else {
            let upload = self
                .store
                .put_multipart(&location)
                .await
                .map_err(store_error)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let body = Bytes::from(body);
            for start in (0..body.len()).step_by(PART_SIZE) {
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(store_error)?;
                writer.put(body.slice(start..(start + PART_SIZE).min(body.len())));
            }
            writer.finish().await.map_err(store_error)?
        };
        let stored = Stored {
            size,
            version: result.version.or(result.e_tag),
        };
        Ok(Response::value(json!(stored)))
    }
}

impl Transport for StoreSystem {
    fn call<'a>(
        &'a self,
        _scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            match request.op.as_str() {
                "get" => self.get(super::args(&request)?).await,
                "put" => {
                    let key = request.args["key"]
                        .as_str()
                        .ok_or_else(|| EffectError::final_("store put needs a `key`"))?
                        .to_owned();
                    self.put(&key, request.body.unwrap_or_default()).await
                }
                op => Err(EffectError::final_(format!(
                    "the store has no operation `{op}`"
                ))),
            }
        })
    }
}

fn store_error(e: object_store::Error) -> EffectError {
    use object_store::Error as E;
    match &e {
        E::NotFound { .. } => EffectError::final_(format!("not found: {e}")),
        E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. }
        | E::UnknownConfigurationKey { .. }
        | E::PermissionDenied { .. }
        | E::Unauthenticated { .. } => EffectError::final_(e.to_string()),
        _ => EffectError::retryable(e.to_string()),
    }
}

fn client_options(config: &StoreConfig) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(config.allow_http)
        .with_timeout_disabled()
        .with_connect_timeout(Duration::from_secs(10))
        .with_read_timeout(config.timeout.unwrap_or(Duration::from_secs(60)))
}

fn retry() -> RetryConfig {
    RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(60),
        ..RetryConfig::default()
    }
}

/// Whether S3 credentials are in the environment; without them reads are anonymous.
fn has_aws_credentials(env: &dyn Fn(&str) -> Option<String>) -> bool {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ]
    .iter()
    .any(|name| env(name).is_some_and(|v| !v.is_empty()))
}

fn open_store(
    config: &StoreConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
    let url = config.url.as_str();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("`{url}` is not a store URL (e.g. `file://DIR`, `s3://BUCKET`)"))?;
    let split = |rest: &str| -> (String, String) {
        let (head, tail) = rest.split_once('/').unwrap_or((rest, ""));
        (head.to_owned(), tail.trim_matches('/').to_owned())
    };
    let prefix = |p: &str| ObjectPath::parse(p).map_err(|e| format!("`{url}`: {e}"));
    let s3 = |bucket: &str| {
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(client_options(config))
            .with_retry(retry())
            .with_virtual_hosted_style_request(config.virtual_hosted)
            .with_skip_signature(!has_aws_credentials(env));
        for (name, key) in [
            ("AWS_ACCESS_KEY_ID", AmazonS3ConfigKey::AccessKeyId),
            ("AWS_SECRET_ACCESS_KEY", AmazonS3ConfigKey::SecretAccessKey),
            ("AWS_SESSION_TOKEN", AmazonS3ConfigKey::Token),
            ("AWS_DEFAULT_REGION", AmazonS3ConfigKey::Region),
            ("AWS_REGION", AmazonS3ConfigKey::Region),
        ] {
            if let Some(value) = env(name).filter(|v| !v.is_empty()) {
                builder = builder.with_config(key, value);
            }
        }
        if let Some(region) = &config.region {
            builder = builder.with_region(region);
        } else if env("AWS_REGION").is_none() && env("AWS_DEFAULT_REGION").is_none() {
            builder = builder.with_region("us-east-1");
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        builder
    };
    let http_refused = |endpoint: &str| {
        (endpoint.starts_with("http://") && !config.allow_http).then(|| {
            format!(
                "the store endpoint `{endpoint}` is plain HTTP: set `allow_http: true` in `resources.store` to allow it"
            )
        })
    };
    if let Some(endpoint) = &config.endpoint
        && let Some(refused) = http_refused(endpoint)
    {
        return Err(refused);
    }
    match scheme {
        "file" => {
            let dir = PathBuf::from(rest);
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create the store folder {}: {e}", dir.display()))?;
            let store = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| format!("`{url}`: {e}"))?
                .with_automatic_cleanup(true);
            Ok((Arc::new(store), ObjectPath::default()))
        }
        "memory" => Ok((Arc::new(InMemory::new()), prefix(rest)?)),
        "s3" => {
            let (bucket, path) = split(rest);
            let store = s3(&bucket).build().map_err(|e| format!("`{url}`: {e}"))?;
            Ok((Arc::new(store), prefix(&path)?))
        }
        "r2" => {
            let (account, rest) = split(rest);
            let (bucket, path) = split(&rest);
            if account.is_empty() || bucket.is_empty() {
                return Err(format!(
                    "`{url}`: an R2 URL is `r2://ACCOUNT_ID/BUCKET[/PREFIX]`"
                ));
            }
            let mut builder = s3(&bucket);
            if config.endpoint.is_none() {
                builder =
                    builder.with_endpoint(format!("https://{account}.r2.cloudflarestorage.com"));
            }
            if config.region.is_none() {
                builder = builder.with_region("auto");
            }
            let store = builder.build().map_err(|e| format!("`{url}`: {e}"))?;
            Ok((Arc::new(store), prefix(&path)?))
        }
        "gs" => {
            let (bucket, path) = split(rest);
            let store = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_client_options(client_options(config))
                .with_retry(retry())
                .build()
                .map_err(|e| format!("`{url}`: {e}"))?;
            Ok((Arc::new(store), prefix(&path)?))
        }
        "az" | "azure" => {
            let (container, path) = split(rest);
            let store = MicrosoftAzureBuilder::from_env()
                .with_container_name(container)
                .with_client_options(client_options(config))
                .with_retry(retry())
                .build()
                .map_err(|e| format!("`{url}`: {e}"))?;
            Ok((Arc::new(store), prefix(&path)?))
        }
        other => Err(format!(
            "`{url}`: unknown store scheme `{other}` (file, memory, s3, r2, gs, az)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(
        url: &str,
        endpoint: Option<&str>,
    ) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
        let config = StoreConfig {
            url: url.into(),
            endpoint: endpoint.map(str::to_owned),
            ..StoreConfig::default()
        };
        open_store(&config, &|_| None)
    }

    #[test]
    fn urls_choose_the_store_and_keep_their_prefix() {
        let (_, prefix) = open("s3://bucket/runs/7", None).unwrap();
        assert_eq!(prefix.as_ref(), "runs/7");
        let (_, prefix) = open("r2://0123abcd/bucket/ckpt", None).unwrap();
        assert_eq!(prefix.as_ref(), "ckpt");
        let (_, prefix) = open("memory://scratch", None).unwrap();
        assert_eq!(prefix.as_ref(), "scratch");
    }

    #[test]
    fn bad_urls_say_what_is_expected() {
        let e = open("r2://bucket-only", None).err().unwrap();
        assert!(e.contains("r2://ACCOUNT_ID/BUCKET"), "{e}");
        let e = open("ftp://host/x", None).err().unwrap();
        assert!(e.contains("unknown store scheme `ftp`"), "{e}");
        let e = open("checkpoints", None).err().unwrap();
        assert!(e.contains("not a store URL"), "{e}");
        let e = open("s3://bucket", Some("http://minio:9000"))
            .err()
            .unwrap();
        assert!(e.contains("allow_http: true"), "{e}");
        assert!(open("s3://bucket", Some("https://minio:9000")).is_ok());
    }

    #[test]
    fn a_file_store_creates_its_folder() {
        let dir = std::env::temp_dir().join(format!("gradline-store-url-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        open(&format!("file://{}", dir.display()), None).unwrap();
        assert!(dir.is_dir());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
