//! Every outside call goes through here: one request/response shape for every system
//! (store, hub, HTTP, chain, clock, randomness), and four faces over it.
//!
//! - **live**: a router to the real systems, registered by name (stage crates add theirs);
//!   the engine itself provides `clock` and `random`.
//! - **record**: passes calls through and writes a tape: each request with its response
//!   (or error), blobs by digest, keyed by cycle, stage, item, attempt and request digest.
//! - **replay**: answers from a tape, offline and exactly; an unexpected request is an
//!   error naming it and the nearest recorded one.
//! - **faults**: fails, delays or truncates the Nth call to a system by rule, for tests.
//!
//! Requests never carry secrets: a live face reads its credentials itself, so tapes are safe
//! to commit.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::runtime::{Digest, digest_of};

/// One outside call.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// `store`, `hub`, `http`, `chain`, `clock`, `random`, ...
    pub system: String,
    /// The operation: `get`, `put`, `now`, ...
    pub op: String,
    pub args: Json,
    pub body: Option<Vec<u8>>,
}

impl Request {
    pub fn new(system: &str, op: &str, args: Json) -> Self {
        Self {
            system: system.into(),
            op: op.into(),
            args,
            body: None,
        }
    }

    pub fn with_body(mut self, body: Vec<u8>) -> Self {
        self.body = Some(body);
        self
    }

    /// blake3 of the canonical request: system, op, args and the body's digest.
    pub fn digest(&self) -> Digest {
        digest_of(self.canonical().to_string().as_bytes())
    }

    fn canonical(&self) -> Json {
        json!({
            "system": self.system,
            "op": self.op,
            "args": self.args,
            "body": self.body.as_deref().map(digest_of),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Response {
    pub value: Json,
    pub body: Option<Vec<u8>>,
}

impl Response {
    pub fn value(value: Json) -> Self {
        Self { value, body: None }
    }
}

/// A failed outside call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct EffectError {
    /// Timeouts, I/O, HTTP 5xx and 429 are retryable; bad requests are not.
    pub retryable: bool,
    pub message: String,
}

impl EffectError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            retryable: true,
            message: message.into(),
        }
    }

    pub fn final_(message: impl Into<String>) -> Self {
        Self {
            retryable: false,
            message: message.into(),
        }
    }
}

impl From<EffectError> for crate::runtime::StageError {
    fn from(e: EffectError) -> Self {
        match e.retryable {
            true => crate::runtime::StageError::retryable(e.message),
            false => crate::runtime::StageError::final_(e.message),
        }
    }
}

/// Who is calling: keys tapes and fault rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CallScope {
    pub cycle: u64,
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    pub attempt: u32,
}

impl CallScope {
    /// The scope of the scheduler's own calls (windows, jitter) in a cycle.
    pub fn scheduler(cycle: u64) -> Self {
        Self {
            cycle,
            stage: "$scheduler".into(),
            item: None,
            attempt: 0,
        }
    }
}

/// Carries calls to a system (or to all of them).
pub trait Transport: Send + Sync {
    fn call<'a>(
        &'a self,
        scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>>;
}

/// The live face: routes each call to its system.
pub struct Live {
    systems: BTreeMap<String, Arc<dyn Transport>>,
    counter: AtomicU64,
    /// The wall clock read once, then advanced by tokio's clock (so paused-time tests and
    /// real runs see the same time source).
    epoch_ms: u64,
    origin: tokio::time::Instant,
}

impl Default for Live {
    fn default() -> Self {
        Self::new()
    }
}

impl Live {
    /// The engine's own systems (`clock`, `random`) and nothing else.
    pub fn new() -> Self {
        let epoch_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            systems: BTreeMap::new(),
            counter: AtomicU64::new(0),
            epoch_ms,
            origin: tokio::time::Instant::now(),
        }
    }

    pub fn with_system(mut self, name: &str, transport: Arc<dyn Transport>) -> Self {
        self.systems.insert(name.into(), transport);
        self
    }

    fn builtin(&self, request: &Request) -> Option<Result<Response, EffectError>> {
        match (request.system.as_str(), request.op.as_str()) {
            ("clock", "now") => {
                let ms = self.epoch_ms + self.origin.elapsed().as_millis() as u64;
                Some(Ok(Response::value(json!({ "unix_ms": ms }))))
            }
            ("random", "u64") => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let seed = format!(
                    "{:?}-{}-{n}",
                    std::time::SystemTime::now(),
                    std::process::id()
                );
                let bytes = blake3::hash(seed.as_bytes());
                let value = u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or([0; 8]));
                Some(Ok(Response::value(json!({ "value": value }))))
            }
            _ => None,
        }
    }
}

impl Transport for Live {
    fn call<'a>(
        &'a self,
        scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            if let Some(system) = self.systems.get(&request.system) {
                return system.call(scope, request).await;
            }
            match self.builtin(&request) {
                Some(result) => result,
                None => Err(EffectError::final_(format!(
                    "no `{}` system is configured for `{}`",
                    request.system, request.op
                ))),
            }
        })
    }
}

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TapeEntry {
    #[serde(flatten)]
    pub scope: CallScope,
    pub seq: u64,
    pub system: String,
    pub op: String,
    pub args: Json,
    pub request: Digest,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_body: Option<Digest>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok {
        value: Json,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<Digest>,
    },
    Err(EffectError),
}

const TAPE_FILE: &str = "tape.jsonl";
const BLOBS_DIR: &str = "blobs";

/// The record face.
pub struct Recorder {
    inner: Arc<dyn Transport>,
    dir: PathBuf,
    file: Mutex<File>,
    seq: AtomicU64,
}

impl Recorder {
    pub fn create(inner: Arc<dyn Transport>, dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir.join(BLOBS_DIR))?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(dir.join(TAPE_FILE))?;
        Ok(Self {
            inner,
            dir: dir.to_owned(),
            file: Mutex::new(file),
            seq: AtomicU64::new(0),
        })
    }

    fn blob(&self, bytes: &[u8]) -> io::Result<Digest> {
        let digest = digest_of(bytes);
        let path = self.dir.join(BLOBS_DIR).join(&digest);
        if !path.exists() {
            let tmp = path.with_extension("tmp");
            fs::write(&tmp, bytes)?;
            fs::rename(&tmp, &path)?;
        }
        Ok(digest)
    }

    fn write(&self, entry: &TapeEntry) -> io::Result<()> {
        let mut line = serde_json::to_string(entry).map_err(io::Error::other)?;
        line.push('\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| io::Error::other("tape lock poisoned"))?;
        file.write_all(line.as_bytes())?;
        file.flush()
    }

    /// Flushes the tape to disk.
    pub fn sync(&self) -> io::Result<()> {
        let file = self
            .file
            .lock()
            .map_err(|_| io::Error::other("tape lock poisoned"))?;
        file.sync_all()
    }
}

impl Transport for Recorder {
    fn call<'a>(
        &'a self,
        scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let tape_error =
                |e: io::Error| EffectError::final_(format!("cannot write the tape: {e}"));
            let request_body = request
                .body
                .as_deref()
                .map(|b| self.blob(b))
                .transpose()
                .map_err(tape_error)?;
            let mut entry = TapeEntry {
                scope: scope.clone(),
                seq,
                system: request.system.clone(),
                op: request.op.clone(),
                args: request.args.clone(),
                request: request.digest(),
                request_body,
                outcome: Outcome::Err(EffectError::final_("not finished")),
            };
            let result = self.inner.call(scope, request).await;
            entry.outcome = match &result {
                Ok(response) => Outcome::Ok {
                    value: response.value.clone(),
                    body: response
                        .body
                        .as_deref()
                        .map(|b| self.blob(b))
                        .transpose()
                        .map_err(tape_error)?,
                },
                Err(e) => Outcome::Err(e.clone()),
            };
            self.write(&entry).map_err(tape_error)?;
            result
        })
    }
}

type TapeKey = (CallScope, Digest);

/// The replay face.
pub struct Replayer {
    dir: PathBuf,
    entries: Vec<TapeEntry>,
    queues: Mutex<HashMap<TapeKey, VecDeque<usize>>>,
}

impl Replayer {
    pub fn open(dir: &Path) -> io::Result<Self> {
        let file = File::open(dir.join(TAPE_FILE)).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", dir.join(TAPE_FILE).display()))
        })?;
        let mut entries = Vec::new();
        for (n, line) in io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let entry: TapeEntry = serde_json::from_str(&line).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("tape line {}: {e}", n + 1),
                )
            })?;
            entries.push(entry);
        }
        let mut queues: HashMap<TapeKey, VecDeque<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            queues
                .entry((e.scope.clone(), e.request.clone()))
                .or_default()
                .push_back(i);
        }
        Ok(Self {
            dir: dir.to_owned(),
            entries,
            queues: Mutex::new(queues),
        })
    }

    fn nearest(&self, scope: &CallScope, request: &Request) -> String {
        let wanted = request.canonical().to_string();
        let best = self
            .entries
            .iter()
            .filter(|e| e.scope.stage == scope.stage)
            .map(|e| {
                let recorded = json!({ "system": e.system, "op": e.op, "args": e.args, "body": e.request_body });
                let text = recorded.to_string();
                (strsim::levenshtein(&clip(&wanted), &clip(&text)), e)
            })
            .min_by_key(|(d, _)| *d);
        match best {
            Some((_, e)) => format!(
                "the nearest recorded call of stage `{}` is {}.{} {} (cycle {}, attempt {})",
                e.scope.stage, e.system, e.op, e.args, e.scope.cycle, e.scope.attempt
            ),
            None => format!("the tape has no call from stage `{}`", scope.stage),
        }
    }
}

fn clip(text: &str) -> String {
    text.chars().take(2000).collect()
}

impl Transport for Replayer {
    fn call<'a>(
        &'a self,
        scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            let found = {
                let mut queues = self
                    .queues
                    .lock()
                    .map_err(|_| EffectError::final_("tape lock poisoned"))?;
                queues
                    .get_mut(&(scope.clone(), request.digest()))
                    .and_then(VecDeque::pop_front)
            };
            let Some(index) = found else {
                return Err(EffectError::final_(format!(
                    "replay: unexpected call {}.{} {} from stage `{}` (cycle {}, attempt {}); {}",
                    request.system,
                    request.op,
                    request.args,
                    scope.stage,
                    scope.cycle,
                    scope.attempt,
                    self.nearest(scope, &request)
                )));
            };
            match &self.entries[index].outcome {
                Outcome::Err(e) => Err(e.clone()),
                Outcome::Ok { value, body } => {
                    let body = match body {
                        Some(digest) => Some(
                            fs::read(self.dir.join(BLOBS_DIR).join(digest)).map_err(|e| {
                                EffectError::final_(format!(
                                    "replay: blob {digest} is missing from the tape: {e}"
                                ))
                            })?,
                        ),
                        None => None,
                    };
                    Ok(Response {
                        value: value.clone(),
                        body,
                    })
                }
            }
        })
    }
}

/// What a fault rule does to the call it matches.
#[derive(Clone, Debug, PartialEq)]
pub enum FaultAction {
    Fail {
        retryable: bool,
        message: String,
    },
    Delay(Duration),
    /// Cut the response body to this many bytes.
    Truncate(usize),
}

/// Injects a fault into the Nth call (1-based; 0 = every call) to `system` (and `op`).
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    pub system: String,
    pub op: Option<String>,
    pub nth: u64,
    pub action: FaultAction,
}

/// The fault-injection face.
pub struct Faults {
    inner: Arc<dyn Transport>,
    rules: Vec<(FaultRule, AtomicU64)>,
}

impl Faults {
    pub fn new(inner: Arc<dyn Transport>, rules: Vec<FaultRule>) -> Self {
        Self {
            inner,
            rules: rules.into_iter().map(|r| (r, AtomicU64::new(0))).collect(),
        }
    }
}

impl Transport for Faults {
    fn call<'a>(
        &'a self,
        scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            let mut actions = Vec::new();
            for (rule, count) in &self.rules {
                let matches = rule.system == request.system
                    && rule.op.as_ref().is_none_or(|op| *op == request.op);
                if matches {
                    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                    if rule.nth == 0 || rule.nth == n {
                        actions.push(rule.action.clone());
                    }
                }
            }
            for action in &actions {
                match action {
                    FaultAction::Fail { retryable, message } => {
                        return Err(EffectError {
                            retryable: *retryable,
                            message: message.clone(),
                        });
                    }
                    FaultAction::Delay(d) => tokio::time::sleep(*d).await,
                    FaultAction::Truncate(_) => {}
                }
            }
            let mut response = self.inner.call(scope, request).await?;
            for action in &actions {
                if let (FaultAction::Truncate(n), Some(body)) = (action, response.body.as_mut()) {
                    body.truncate(*n);
                }
            }
            Ok(response)
        })
    }
}

/// Bytes moved through a handle, for the summary.
#[derive(Debug, Default)]
pub struct Traffic {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

/// What a stage uses to reach outside: a transport and the caller's scope.
#[derive(Clone)]
pub struct Effects {
    transport: Arc<dyn Transport>,
    scope: CallScope,
    traffic: Arc<Traffic>,
}

impl Effects {
    pub fn new(transport: Arc<dyn Transport>, scope: CallScope) -> Self {
        Self {
            transport,
            scope,
            traffic: Arc::new(Traffic::default()),
        }
    }

    pub fn scope(&self) -> &CallScope {
        &self.scope
    }

    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    pub async fn call(&self, request: Request) -> Result<Response, EffectError> {
        let sent = request.body.as_ref().map_or(0, Vec::len) as u64;
        self.traffic.bytes_out.fetch_add(sent, Ordering::Relaxed);
        let response = self.transport.call(&self.scope, request).await?;
        let received = response.body.as_ref().map_or(0, Vec::len) as u64;
        self.traffic.bytes_in.fetch_add(received, Ordering::Relaxed);
        Ok(response)
    }

    /// Milliseconds since the Unix epoch, from the `clock` system.
    pub async fn now_ms(&self) -> Result<u64, EffectError> {
        let response = self.call(Request::new("clock", "now", json!({}))).await?;
        response.value["unix_ms"]
            .as_u64()
            .ok_or_else(|| EffectError::final_("clock: no `unix_ms` in the answer"))
    }

    /// A random number from the `random` system (recorded, so replays draw the same).
    pub async fn random_u64(&self) -> Result<u64, EffectError> {
        let response = self.call(Request::new("random", "u64", json!({}))).await?;
        response.value["value"]
            .as_u64()
            .ok_or_else(|| EffectError::final_("random: no `value` in the answer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(stage: &str, attempt: u32) -> CallScope {
        CallScope {
            cycle: 0,
            stage: stage.into(),
            item: None,
            attempt,
        }
    }

    struct Echo;
    impl Transport for Echo {
        fn call<'a>(
            &'a self,
            _: &'a CallScope,
            request: Request,
        ) -> BoxFuture<'a, Result<Response, EffectError>> {
            Box::pin(async move {
                Ok(Response {
                    value: json!({ "echo": request.args }),
                    body: Some(b"0123456789".to_vec()),
                })
            })
        }
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gradline-tape-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn recorded_calls_replay_exactly_and_strangers_are_named() {
        let dir = temp("replay");
        let live = Arc::new(Live::new().with_system("store", Arc::new(Echo)));
        let recorder = Recorder::create(live, &dir).unwrap();
        let get = Request::new("store", "get", json!({ "key": "a" }));
        let recorded = recorder.call(&scope("s", 1), get.clone()).await.unwrap();
        let now = recorder
            .call(&scope("s", 1), Request::new("clock", "now", json!({})))
            .await
            .unwrap();
        drop(recorder);

        let replay = Replayer::open(&dir).unwrap();
        assert_eq!(
            replay.call(&scope("s", 1), get.clone()).await.unwrap(),
            recorded
        );
        assert_eq!(
            replay
                .call(&scope("s", 1), Request::new("clock", "now", json!({})))
                .await
                .unwrap(),
            now
        );
        let stranger = replay
            .call(
                &scope("s", 1),
                Request::new("store", "get", json!({ "key": "b" })),
            )
            .await;
        let message = stranger.unwrap_err().message;
        assert!(
            message.contains("unexpected call store.get {\"key\":\"b\"}"),
            "{message}"
        );
        assert!(
            message.contains("nearest recorded call of stage `s` is store.get {\"key\":\"a\"}"),
            "{message}"
        );
        let again = replay.call(&scope("s", 1), get).await;
        assert!(again.is_err(), "each recorded call answers once");
        fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn fault_rules_hit_the_nth_call() {
        let live: Arc<dyn Transport> = Arc::new(Live::new().with_system("store", Arc::new(Echo)));
        let rules = vec![
            FaultRule {
                system: "store".into(),
                op: Some("get".into()),
                nth: 2,
                action: FaultAction::Fail {
                    retryable: true,
                    message: "503".into(),
                },
            },
            FaultRule {
                system: "store".into(),
                op: None,
                nth: 3,
                action: FaultAction::Truncate(4),
            },
        ];
        let faults = Faults::new(live, rules);
        let get = || Request::new("store", "get", json!({}));
        assert!(faults.call(&scope("s", 1), get()).await.is_ok());
        let second = faults.call(&scope("s", 1), get()).await.unwrap_err();
        assert!(second.retryable && second.message == "503");
        let third = faults.call(&scope("s", 1), get()).await.unwrap();
        assert_eq!(third.body.unwrap(), b"0123");
    }
}
