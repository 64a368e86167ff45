//! Downloads that survive interruption: bytes stream into `<blob>.incomplete` next to their
//! final place, a broken or short stream resumes from the partial file's length, the size
//! cap is enforced while streaming, and only a whole, checked file is renamed into place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use gradline_engine::effects::EffectError;
use tokio::io::AsyncWriteExt;

/// Bytes from a source, starting at `offset` (the source may ignore the requested offset
/// and start at 0).
pub struct Opened {
    pub offset: u64,
    pub stream: BoxStream<'static, Result<Bytes, EffectError>>,
}

/// How a resumable fetch behaves.
#[derive(Clone, Copy, Debug)]
pub struct FetchPolicy {
    /// Stream attempts (each resumes where the last stopped).
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_bytes: u64,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_millis(200),
            max_bytes: u64::MAX,
        }
    }
}

/// Where a blob's bytes collect before they are whole.
pub fn partial_path(blob: &Path) -> PathBuf {
    let mut name = blob.as_os_str().to_owned();
    name.push(".incomplete");
    PathBuf::from(name)
}

/// A hash fed while the bytes stream in, so checking costs no second pass.
pub trait Digester: Send {
    /// Forget everything: the download restarts from its first byte.
    fn reset(&mut self);
    fn update(&mut self, bytes: &[u8]);
}

/// No hash: the caller checks the bytes some other way.
pub struct Unhashed;

impl Digester for Unhashed {
    fn reset(&mut self) {}
    fn update(&mut self, _: &[u8]) {}
}

impl Digester for blake3::Hasher {
    fn reset(&mut self) {
        blake3::Hasher::reset(self);
    }
    fn update(&mut self, bytes: &[u8]) {
        blake3::Hasher::update(self, bytes);
    }
}

/// A whole download: its partial file (to [`commit`] or remove) and its bytes.
pub struct Downloaded {
    pub partial: PathBuf,
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Downloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloaded")
            .field("partial", &self.partial)
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

/// Streams `size` bytes (when known) into `blob`'s partial file and into memory, feeding
/// `digester`, resuming across attempts; returns once the partial file holds the whole
/// object. The caller checks the content and calls [`commit`] (or removes it). A partial
/// file left by a killed process is resumed; one left by attempts that all failed is removed.
pub async fn fetch<'a>(
    blob: &Path,
    size: Option<u64>,
    policy: FetchPolicy,
    digester: &mut dyn Digester,
    open: impl Fn(u64) -> BoxFuture<'a, Result<Opened, EffectError>>,
) -> Result<Downloaded, EffectError> {
    if let Some(size) = size
        && size > policy.max_bytes
    {
        return Err(too_large(size, policy.max_bytes));
    }
    let partial = partial_path(blob);
    if let Some(dir) = partial.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_error("creating the download folder", &e))?;
    }
    let mut bytes = Vec::with_capacity(size.unwrap_or(0).min(policy.max_bytes) as usize);
    let mut last_error = None;
    for attempt in 0..policy.attempts.max(1) {
        if attempt > 0 {
            let backoff = policy.first_backoff * 2u32.saturating_pow(attempt - 1);
            tokio::time::sleep(backoff.min(Duration::from_secs(10))).await;
        }
        let have = tokio::fs::metadata(&partial).await.map_or(0, |m| m.len());
        let have = match size {
            Some(size) if have > size => 0,
            _ => have,
        };
        if bytes.len() as u64 != have {
            bytes = match have {
                0 => Vec::new(),
                _ => tokio::fs::read(&partial)
                    .await
                    .map_err(|e| io_error("reading the partial download", &e))?,
            };
            bytes.truncate(have as usize);
            digester.reset();
            digester.update(&bytes);
        }
        if size.is_some_and(|size| size == have && size > 0) {
            return Ok(Downloaded { partial, bytes });
        }
        let target = Target {
            partial: &partial,
            size,
            max_bytes: policy.max_bytes,
        };
        match target.stream_into(&mut bytes, digester, &open).await {
            Ok(()) => return Ok(Downloaded { partial, bytes }),
            Err(e) if !e.retryable => {
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(e);
            }
            Err(e) => {
                tracing::debug!(attempt, error = %e, "download interrupted; resuming");
                last_error = Some(e);
            }
        }
    }
    // Given up: the caller falls back to another source, so nothing partial stays behind.
    let _ = tokio::fs::remove_file(&partial).await;
    Err(last_error.unwrap_or_else(|| EffectError::retryable("download failed")))
}

struct Target<'p> {
    partial: &'p Path,
    size: Option<u64>,
    max_bytes: u64,
}

impl Target<'_> {
    /// One attempt: continues from `bytes` (what the partial file holds) where the source
    /// allows, else starts over.
    async fn stream_into<'a>(
        &self,
        bytes: &mut Vec<u8>,
        digester: &mut dyn Digester,
        open: &impl Fn(u64) -> BoxFuture<'a, Result<Opened, EffectError>>,
    ) -> Result<(), EffectError> {
        let have = bytes.len() as u64;
        let opened = open(have).await?;
        let mut file = if opened.offset == have && have > 0 {
            tokio::fs::OpenOptions::new()
                .append(true)
                .open(self.partial)
                .await
                .map_err(|e| io_error("reopening the partial download", &e))?
        } else {
            bytes.clear();
            digester.reset();
            tokio::fs::File::create(self.partial)
                .await
                .map_err(|e| io_error("creating the partial download", &e))?
        };
        if opened.offset != bytes.len() as u64 {
            return Err(EffectError::retryable(format!(
                "the source answered from byte {} when byte {} was asked",
                opened.offset,
                bytes.len()
            )));
        }
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, &mut file);
        let mut stream = opened.stream;
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let written = (bytes.len() + chunk.len()) as u64;
            if written > self.max_bytes {
                return Err(too_large(written, self.max_bytes));
            }
            if let Some(size) = self.size
                && written > size
            {
                return Err(EffectError::final_(format!(
                    "the source sent more than the {size} bytes it announced"
                )));
            }
            out.write_all(&chunk)
                .await
                .map_err(|e| io_error("writing the download", &e))?;
            digester.update(&chunk);
            bytes.extend_from_slice(&chunk);
        }
        out.flush()
            .await
            .map_err(|e| io_error("writing the download", &e))?;
        file.sync_all()
            .await
            .map_err(|e| io_error("syncing the download", &e))?;
        let written = bytes.len();
        if let Some(e) = failure {
            return Err(EffectError::retryable(format!(
                "the download broke off after {written} bytes: {}",
                e.message
            )));
        }
        match self.size {
            Some(size) if (written as u64) < size => Err(EffectError::retryable(format!(
                "the download ended after {written} of {size} bytes"
            ))),
            _ => Ok(()),
        }
    }
}

/// Moves a checked partial file to its final place (an atomic rename), making it visible.
pub async fn commit(partial: &Path, blob: &Path) -> Result<(), EffectError> {
    tokio::fs::rename(partial, blob)
        .await
        .map_err(|e| io_error("moving the download into place", &e))?;
    if let Some(dir) = blob.parent()
        && let Ok(dir) = tokio::fs::File::open(dir).await
    {
        let _ = dir.sync_all().await;
    }
    Ok(())
}

/// Writes bytes to a file atomically: a unique temp file beside it, fsync, rename.
pub async fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), EffectError> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_error("creating a folder", &e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}-{}", std::process::id(), unique()));
    let tmp = PathBuf::from(tmp);
    let result = async {
        let mut file = tokio::fs::File::create(&tmp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_error(&format!("writing {}", path.display()), &e));
    }
    Ok(())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub fn too_large(size: u64, max_bytes: u64) -> EffectError {
    EffectError::final_(format!(
        "the object is {size} bytes or more, over the cap of {max_bytes} bytes (`max_bytes`)"
    ))
}

pub fn io_error(what: &str, e: &std::io::Error) -> EffectError {
    EffectError::retryable(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn chunks(data: &[u8], from: u64, fail_after: Option<usize>) -> Opened {
        let rest = data[from as usize..].to_vec();
        let mut items: Vec<Result<Bytes, EffectError>> = rest
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        if let Some(n) = fail_after {
            items.truncate(n);
            items.push(Err(EffectError::retryable("connection reset")));
        }
        Opened {
            offset: from,
            stream: futures::stream::iter(items).boxed(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_broken_stream_resumes_from_the_partial_file() {
        let dir = tempdir();
        let blob = dir.join("blob");
        let data: Vec<u8> = (0..100u8).collect();
        let calls = Arc::new(AtomicU32::new(0));
        let offsets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = fetch(
            &blob,
            Some(100),
            FetchPolicy::default(),
            &mut Unhashed,
            |offset| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                offsets.lock().unwrap().push(offset);
                let data = data.clone();
                Box::pin(async move { Ok(chunks(&data, offset, (n == 0).then_some(3))) })
            },
        )
        .await
        .unwrap();
        assert_eq!(*offsets.lock().unwrap(), vec![0, 21]);
        assert_eq!(done.bytes, data);
        assert!(!blob.exists(), "nothing is visible before commit");
        commit(&done.partial, &blob).await.unwrap();
        assert_eq!(std::fs::read(&blob).unwrap(), data);
        assert!(!done.partial.exists());
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_ignoring_the_range_restarts_from_zero() {
        let dir = tempdir();
        let blob = dir.join("blob");
        let data: Vec<u8> = (0..50u8).collect();
        std::fs::write(partial_path(&blob), &data[..10]).unwrap();
        let mut hasher = blake3::Hasher::new();
        let done = fetch(&blob, Some(50), FetchPolicy::default(), &mut hasher, |_| {
            let data = data.clone();
            Box::pin(async move { Ok(chunks(&data, 0, None)) })
        })
        .await
        .unwrap();
        assert_eq!(std::fs::read(done.partial).unwrap(), data);
        assert_eq!(done.bytes, data);
        assert_eq!(
            hasher.finalize(),
            blake3::hash(&data),
            "the hash starts over too"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_file_left_by_a_killed_process_resumes_with_its_hash() {
        let dir = tempdir();
        let blob = dir.join("blob");
        let data: Vec<u8> = (0..80u8).collect();
        std::fs::write(partial_path(&blob), &data[..30]).unwrap();
        let mut hasher = blake3::Hasher::new();
        let done = fetch(
            &blob,
            Some(80),
            FetchPolicy::default(),
            &mut hasher,
            |offset| {
                assert_eq!(offset, 30, "asks only for what is missing");
                let data = data.clone();
                Box::pin(async move { Ok(chunks(&data, offset, None)) })
            },
        )
        .await
        .unwrap();
        assert_eq!(done.bytes, data);
        assert_eq!(hasher.finalize(), blake3::hash(&data));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_stops_the_stream_and_leaves_nothing() {
        let dir = tempdir();
        let blob = dir.join("blob");
        let data = vec![1u8; 64];
        let policy = FetchPolicy {
            max_bytes: 20,
            ..FetchPolicy::default()
        };
        let err = fetch(&blob, None, policy, &mut Unhashed, |_| {
            let data = data.clone();
            Box::pin(async move { Ok(chunks(&data, 0, None)) })
        })
        .await
        .unwrap_err();
        assert!(!err.retryable);
        assert!(err.message.contains("cap"), "{err}");
        assert!(!partial_path(&blob).exists());
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_stream_fails_after_its_attempts() {
        let dir = tempdir();
        let blob = dir.join("blob");
        let data = vec![1u8; 10];
        let err = fetch(
            &blob,
            Some(20),
            FetchPolicy::default(),
            &mut Unhashed,
            |offset| {
                let data = data.clone();
                Box::pin(async move {
                    Ok(Opened {
                        offset,
                        stream: futures::stream::iter(
                            (offset < 10)
                                .then(|| Ok(Bytes::from(data[offset as usize..].to_vec()))),
                        )
                        .boxed(),
                    })
                })
            },
        )
        .await
        .unwrap_err();
        assert!(err.retryable);
        assert!(err.message.contains("10 of 20"), "{err}");
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gradline-fetch-{}-{}",
            std::process::id(),
            unique()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
