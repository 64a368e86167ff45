//! Running a checked pipeline, cycle after cycle.
//!
//! Within a cycle, ready stages start in stage-id order while fewer than `jobs` units run
//! (a unit is a stage, or one item of a `for_each` stage, also held to `max_parallel`).
//! Each attempt has the stage's timeout; retryable failures back off exponentially with
//! jitter drawn through the effects (so a replay waits exactly as the recording did); a
//! final failure cancels the cycle. Finished units are journalled, so `resume` skips them.
//! Between cycles each stage's outputs are kept: a stage reads its own previous outputs
//! with [`StageRun::previous`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use futures::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::effects::{CallScope, Effects, Request, Transport};
use crate::expr::{Origin, Scope, Segment, Val, parse_template};
use crate::graph::{ForEach, Pipeline, Stage};
use crate::journal::{EntryStatus, JournalEntry, ObjectStore, RunDir};
use crate::node::{Node, NodeKind, Spanned};
use crate::registry::Input;
use crate::runtime::{ArtifactRef, Digest, ErrorClass, Outputs, StageError, digest_of};
use crate::spec::Trigger;
use crate::value::Value;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Units running at once.
    pub jobs: usize,
    /// Stop after this many cycles (`None`: as the trigger says; `once` is one).
    pub cycles: Option<u64>,
    /// The length of a clock window, when no chain gives windows.
    pub window: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cycles: None,
            window: Duration::from_secs(60),
        }
    }
}

/// Asks a run to stop: gracefully at the next cycle boundary, or now.
#[derive(Clone, Default)]
pub struct StopSignal {
    graceful: Arc<AtomicBool>,
    now: CancellationToken,
}

impl StopSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// Finish the current cycle, then stop.
    pub fn stop_after_cycle(&self) {
        self.graceful.store(true, Ordering::SeqCst);
    }

    /// Cancel running stages and stop.
    pub fn stop_now(&self) {
        self.now.cancel();
    }

    pub fn graceful_requested(&self) -> bool {
        self.graceful.load(Ordering::SeqCst)
    }
}

/// What happens while running, for displays and logs.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    CycleStarted {
        cycle: u64,
        window: i64,
    },
    UnitStarted {
        stage: String,
        item: Option<usize>,
        attempt: u32,
    },
    UnitRetrying {
        stage: String,
        item: Option<usize>,
        attempt: u32,
        error: String,
        delay_ms: u64,
    },
    UnitFinished {
        stage: String,
        item: Option<usize>,
        status: UnitStatus,
        attempts: u32,
        duration_ms: u64,
        cached: bool,
    },
    ItemDropped {
        stage: String,
        item: usize,
        reason: String,
    },
    Progress {
        stage: String,
        item: Option<usize>,
        done: u64,
        total: u64,
        message: String,
    },
    CycleFinished {
        cycle: u64,
        window: i64,
        duration_ms: u64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitStatus {
    Done,
    Skipped,
    Failed,
}

/// Receives events; must be cheap.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// An observer that ignores everything.
pub struct Quiet;

impl Observer for Quiet {
    fn event(&self, _: &Event) {}
}

/// One row of the end-of-run summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub kind: String,
    /// `done`, `skipped`, `failed`, or `partial` (some items dropped).
    pub status: String,
    /// Most attempts any unit needed.
    pub attempts: u32,
    pub duration_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cached: bool,
    /// Dropped items and why.
    pub dropped: Vec<(usize, String)>,
    pub reason: Option<String>,
}

/// What one cycle did.
#[derive(Clone, Debug, Serialize)]
pub struct CycleReport {
    pub cycle: u64,
    pub window: i64,
    pub duration_ms: u64,
    pub stages: Vec<StageSummary>,
    /// Each finished stage's outputs, digested: what `replay` compares.
    pub output_digests: BTreeMap<String, Digest>,
    /// Each finished stage's outputs (a fan-out's: a list of its kept items' outputs), for
    /// whoever drives the run to read.
    #[serde(skip)]
    pub outputs: BTreeMap<String, Val>,
}

/// Why a run stopped short.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("stage `{stage}`{} failed on attempt {attempt}: {error}", item.map(|i| format!(" (item {i})")).unwrap_or_default())]
    Stage {
        stage: String,
        item: Option<usize>,
        attempt: u32,
        error: StageError,
        report: Box<CycleReport>,
    },
    #[error("cycle {cycle} passed its deadline of {deadline:?}")]
    Deadline { cycle: u64, deadline: Duration },
    #[error("cancelled")]
    Cancelled,
    #[error("parameter `{0}` has no value: pass `--set {0}=VALUE`")]
    MissingParam(String),
    #[error("windows: {0}")]
    Window(String),
    #[error("journal: {0}")]
    Journal(#[from] std::io::Error),
}

/// The result of one stage in one cycle.
#[derive(Clone, Debug)]
enum StageResult {
    Done(Outputs),
    Skipped(String),
    /// Per item: its outputs, or `None` when it was dropped.
    FanOut(Vec<Option<Outputs>>),
}

impl StageResult {
    fn output(&self, port: &str, item: Option<usize>) -> Option<Val> {
        match (self, item) {
            (StageResult::Done(out), _) => out.get(port).cloned(),
            (StageResult::FanOut(items), Some(i)) => items.get(i)?.as_ref()?.get(port).cloned(),
            (StageResult::FanOut(items), None) => Some(Val::List(
                items
                    .iter()
                    .flatten()
                    .filter_map(|o| o.get(port).cloned())
                    .collect(),
            )),
            (StageResult::Skipped(_), _) => None,
        }
    }
}

/// Cycle-wide facts every unit reads.
struct CycleShared {
    pipeline: Arc<Pipeline>,
    cycle: u64,
    window: i64,
    results: RwLock<Vec<Option<StageResult>>>,
    previous: Arc<Vec<Option<StageResult>>>,
    fan_keys: Vec<Option<String>>,
}

/// The context of one stage attempt: resolved settings and inputs, artifacts, effects.
pub struct StageRun {
    shared: Arc<CycleShared>,
    index: usize,
    item: Option<(usize, Val)>,
    pub attempt: u32,
    pub effects: Effects,
    pub objects: ObjectStore,
    pub cancel: CancellationToken,
    observer: Arc<dyn Observer>,
}

impl StageRun {
    pub fn stage(&self) -> &Stage {
        &self.shared.pipeline.stages[self.index]
    }

    pub fn cycle(&self) -> u64 {
        self.shared.cycle
    }

    /// The pipeline's `resources:` (values may be expressions: read them with [`Self::get`]).
    pub fn stage_resources(&self) -> &crate::spec::Resources {
        &self.shared.pipeline.spec.resources
    }

    /// Where the pipeline's compute runs (`resources.device`).
    pub fn stage_device(&self) -> crate::spec::Device {
        self.shared
            .pipeline
            .spec
            .resources
            .device
            .as_ref()
            .map_or(crate::spec::Device::Auto, |d| d.value)
    }

    pub fn window(&self) -> i64 {
        self.shared.window
    }

    /// The current `for_each` item.
    pub fn item(&self) -> Option<&Val> {
        self.item.as_ref().map(|(_, v)| v)
    }

    /// This stage's outputs in the previous cycle (the same item's, when fanned out).
    pub fn previous(&self) -> Option<Outputs> {
        match self.shared.previous.get(self.index)?.as_ref()? {
            StageResult::Done(out) => Some(out.clone()),
            StageResult::FanOut(items) => items.get(self.item.as_ref()?.0)?.clone(),
            StageResult::Skipped(_) => None,
        }
    }

    fn scope(&self) -> RunScope<'_> {
        RunScope {
            shared: &self.shared,
            index: self.index,
            item: self.item.as_ref(),
        }
    }

    /// A setting's value, with expressions evaluated; a wrong type is a final error at the
    /// setting's place in the file.
    pub fn get<T: DeserializeOwned + Clone>(&self, value: &Value<T>) -> Result<T, StageError> {
        match value {
            Value::Lit(v) => Ok(v.clone()),
            Value::Expr(text) => {
                let val = self.eval(text)?;
                serde_json::from_value(val.to_json()).map_err(|e| {
                    StageError::final_(format!(
                        "{}: `{}` gives {val}, which does not fit: {e}",
                        self.at(text),
                        text.value
                    ))
                })
            }
        }
    }

    /// An input port's value.
    pub fn input(&self, input: &Input) -> Result<Val, StageError> {
        self.eval(&input.0)
    }

    fn eval(&self, text: &Spanned<String>) -> Result<Val, StageError> {
        let template = parse_template(text, Origin::exact(text.span.start))
            .map_err(|e| StageError::final_(format!("{}: {}", self.at(text), e.message)))?;
        let val = template.eval(&self.scope());
        if !val.is_known() {
            return Err(StageError::final_(format!(
                "{}: `{}` has no value: {val}",
                self.at(text),
                text.value
            )));
        }
        Ok(val)
    }

    fn at(&self, text: &Spanned<String>) -> String {
        let file = &self.shared.pipeline.file;
        let lc = file.line_col(text.span.start);
        format!("{}:{}:{}", file.name, lc.line, lc.col)
    }

    /// Reads an artifact's bytes from the run's object store.
    pub async fn read_artifact(&self, artifact: &ArtifactRef) -> Result<Vec<u8>, StageError> {
        let objects = self.objects.clone();
        let artifact = artifact.clone();
        tokio::task::spawn_blocking(move || {
            objects
                .get(&artifact)
                .map_err(|e| StageError::io("reading an artifact", &e))
        })
        .await
        .map_err(|e| StageError::final_(format!("reading an artifact: {e}")))?
    }

    /// Stores bytes as an artifact of a type.
    pub async fn write_artifact(
        &self,
        ty: &str,
        bytes: Vec<u8>,
    ) -> Result<ArtifactRef, StageError> {
        let objects = self.objects.clone();
        let ty = ty.to_owned();
        tokio::task::spawn_blocking(move || {
            objects
                .put(&ty, &bytes)
                .map_err(|e| StageError::io("writing an artifact", &e))
        })
        .await
        .map_err(|e| StageError::final_(format!("writing an artifact: {e}")))?
    }

    /// Reports progress of long work (steps, bytes) to the display.
    pub fn progress(&self, done: u64, total: u64, message: impl Into<String>) {
        self.observer.event(&Event::Progress {
            stage: self.stage().id.clone(),
            item: self.item.as_ref().map(|(i, _)| *i),
            done,
            total,
            message: message.into(),
        });
    }
}

struct RunScope<'a> {
    shared: &'a CycleShared,
    index: usize,
    item: Option<&'a (usize, Val)>,
}

impl Scope for RunScope<'_> {
    fn lookup(&self, path: &[Segment]) -> Val {
        let unknown = || crate::expr::unknown(path);
        let name = |i: usize| path.get(i).map(|s| s.name.as_str());
        match name(0) {
            Some("params") => name(1)
                .and_then(|n| self.shared.pipeline.param(n))
                .and_then(|p| p.value.clone())
                .unwrap_or_else(unknown),
            Some("cycle") => match name(1) {
                Some("window") => Val::Int(self.shared.window),
                Some("previous_window") => Val::Int(self.shared.window - 1),
                Some("index") => Val::Int(self.shared.cycle as i64),
                _ => unknown(),
            },
            Some("env") => name(1)
                .and_then(|n| std::env::var(n).ok())
                .map_or(Val::Null, Val::Str),
            Some("item") => match (self.item, name(1)) {
                (Some((_, v)), None) => v.clone(),
                (Some((_, v)), Some(field)) => v.field(field).cloned().unwrap_or_else(unknown),
                (None, _) => unknown(),
            },
            Some("stages") => {
                let (Some(id), Some(port)) = (name(1), name(3)) else {
                    return unknown();
                };
                let Some(from) = self.shared.pipeline.stage_index(id) else {
                    return unknown();
                };
                let same_fan = self.item.is_some()
                    && self.shared.fan_keys[from].is_some()
                    && self.shared.fan_keys[from] == self.shared.fan_keys[self.index];
                let item = if same_fan {
                    self.item.map(|(i, _)| *i)
                } else {
                    None
                };
                let results = match self.shared.results.read() {
                    Ok(r) => r,
                    Err(_) => return unknown(),
                };
                results[from]
                    .as_ref()
                    .and_then(|r| r.output(port, item))
                    .unwrap_or_else(unknown)
            }
            _ => unknown(),
        }
    }
}

/// What a ready stage became.
enum Expansion {
    /// Its units are pending.
    Units,
    /// It needs no unit: this is its result.
    Settled(StageResult),
}

/// A unit of work: a stage, or one item of it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Unit {
    stage: usize,
    item: Option<usize>,
}

enum UnitOutcome {
    Done(Outputs),
    Skipped(String),
    Failed { attempt: u32, error: StageError },
    Cancelled,
}

/// Runs a pipeline. The journal keys let a resumed run skip finished units.
/// A run's place between cycles: the next cycle's number, the last window run, and the
/// last cycle's results (what `previous()` hands a stage).
pub struct Progress {
    cycle: u64,
    last_window: Option<i64>,
    resumed_window: Option<i64>,
    previous: Arc<Vec<Option<StageResult>>>,
}

impl Progress {
    /// The number the next cycle will have.
    pub fn next_cycle(&self) -> u64 {
        self.cycle
    }
}

pub struct Runner {
    pipeline: Arc<Pipeline>,
    transport: Arc<dyn Transport>,
    observer: Arc<dyn Observer>,
    run_dir: Arc<RunDir>,
    options: RunOptions,
    stop: StopSignal,
    journalled: HashMap<Digest, JournalEntry>,
}

impl Runner {
    pub fn new(
        pipeline: Arc<Pipeline>,
        transport: Arc<dyn Transport>,
        observer: Arc<dyn Observer>,
        run_dir: Arc<RunDir>,
        options: RunOptions,
        stop: StopSignal,
    ) -> Result<Self, RunError> {
        if let Some(p) = pipeline.params.iter().find(|p| p.value.is_none()) {
            return Err(RunError::MissingParam(p.name.clone()));
        }
        let journalled = run_dir
            .entries()?
            .into_iter()
            .filter(|e| e.status == EntryStatus::Done)
            .map(|e| (e.key.clone(), e))
            .collect();
        Ok(Self {
            pipeline,
            transport,
            observer,
            run_dir,
            options,
            stop,
            journalled,
        })
    }

    /// Runs cycles until the trigger, `cycles` or a stop says to end.
    pub async fn run(&self) -> Result<Vec<CycleReport>, RunError> {
        let span = tracing::info_span!("run", pipeline = %self.pipeline.spec.name.value, run = %self.run_dir.info.run_id);
        self.run_cycles().instrument(span).await
    }

    /// Where a run stands before its first cycle: a fresh start, or the resume point its
    /// journal records. `None`: a `once` run that already finished.
    pub fn start(&self) -> Result<Option<Progress>, RunError> {
        let resume = self.run_dir.resume_point()?;
        if resume.is_some_and(|r| r.window.is_none())
            && matches!(self.pipeline.spec.trigger.value, Trigger::Once)
        {
            return Ok(None);
        }
        Ok(Some(Progress {
            cycle: resume.map_or(0, |r| r.cycle),
            last_window: None,
            resumed_window: resume.and_then(|r| r.window),
            previous: Arc::new(vec![None; self.pipeline.stages.len()]),
        }))
    }

    /// Runs the next cycle, in the next window the trigger allows (waiting for it), and
    /// carries its results into `progress` for the one after. For a driver that runs
    /// several pipelines in lock step.
    pub async fn step(&self, progress: &mut Progress) -> Result<CycleReport, RunError> {
        let trigger = self.pipeline.spec.trigger.value.clone();
        let window = match progress.resumed_window.take() {
            Some(w) => w,
            None => {
                self.next_window(progress.cycle, &trigger, progress.last_window)
                    .await?
            }
        };
        progress.last_window = Some(window);
        let cycle = progress.cycle;
        let span = tracing::info_span!("cycle", cycle, window);
        let (report, results) = self
            .run_cycle(cycle, window, progress.previous.clone())
            .instrument(span)
            .await?;
        self.run_dir.cycle_done(cycle, window)?;
        progress.previous = Arc::new(results);
        progress.cycle += 1;
        Ok(report)
    }

    async fn run_cycles(&self) -> Result<Vec<CycleReport>, RunError> {
        let trigger = self.pipeline.spec.trigger.value.clone();
        let limit = match (&trigger, self.options.cycles) {
            (_, Some(n)) => Some(n),
            (Trigger::Once, None) => Some(1),
            _ => None,
        };
        let mut reports = Vec::new();
        let Some(mut progress) = self.start()? else {
            return Ok(reports);
        };
        let first = progress.cycle;
        while limit.is_none_or(|l| progress.cycle - first < l) {
            if self.stop.graceful_requested() || self.stop.now.is_cancelled() {
                break;
            }
            let started = Instant::now();
            reports.push(self.step(&mut progress).await?);
            let cycle = progress.cycle;
            if let Trigger::Interval(every) = &trigger
                && limit.is_none_or(|l| cycle - first < l)
            {
                let wait = every.0.saturating_sub(started.elapsed());
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.stop.now.cancelled() => break,
                }
            }
        }
        Ok(reports)
    }

    /// The window of the next cycle: the chain's (block / window length) when a chain is
    /// configured, else the clock's; `every: window` waits for a window not yet run.
    async fn next_window(
        &self,
        cycle: u64,
        trigger: &Trigger,
        last: Option<i64>,
    ) -> Result<i64, RunError> {
        let effects = Effects::new(self.transport.clone(), CallScope::scheduler(cycle));
        loop {
            let (window, wait) = self.current_window(&effects).await?;
            if !matches!(trigger, Trigger::EveryWindow) || last.is_none_or(|l| window > l) {
                return Ok(window);
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.now.cancelled() => return Err(RunError::Cancelled),
            }
        }
    }

    async fn current_window(&self, effects: &Effects) -> Result<(i64, Duration), RunError> {
        if let Some(blocks) =
            crate::preflight::window_blocks(&self.pipeline, &|_| None).map_err(RunError::Window)?
        {
            let blocks = blocks as i64;
            let response = effects
                .call(Request::new("chain", "block", Json::Null))
                .await
                .map_err(|e| RunError::Window(e.message))?;
            let block = response.value["number"]
                .as_i64()
                .ok_or_else(|| RunError::Window("the chain gave no block number".into()))?;
            return Ok((block / blocks.max(1), Duration::from_secs(2)));
        }
        let now = effects
            .now_ms()
            .await
            .map_err(|e| RunError::Window(e.message))?;
        let length = self.options.window.as_millis().max(1) as u64;
        let window = now / length;
        Ok((
            window as i64,
            Duration::from_millis((window + 1) * length - now),
        ))
    }

    async fn run_cycle(
        &self,
        cycle: u64,
        window: i64,
        previous: Arc<Vec<Option<StageResult>>>,
    ) -> Result<(CycleReport, Vec<Option<StageResult>>), RunError> {
        let started = Instant::now();
        self.observer.event(&Event::CycleStarted { cycle, window });
        let pipeline = &self.pipeline;
        let n = pipeline.stages.len();
        let shared = Arc::new(CycleShared {
            pipeline: pipeline.clone(),
            cycle,
            window,
            results: RwLock::new(vec![None; n]),
            previous,
            fan_keys: pipeline
                .stages
                .iter()
                .map(|s| s.for_each.as_ref().map(fan_key))
                .collect(),
        });
        let cancel = self.stop.now.child_token();
        let deadline = pipeline.spec.deadline.as_ref().map(|d| d.value.0);
        let work = self.drive(&shared, &cancel);
        let outcome = match deadline {
            Some(limit) => match tokio::time::timeout(limit, work).await {
                Ok(r) => r,
                Err(_) => {
                    cancel.cancel();
                    return Err(RunError::Deadline {
                        cycle,
                        deadline: limit,
                    });
                }
            },
            None => work.await,
        };
        let mut summaries = outcome?;
        let results = shared.results.read().map(|r| r.clone()).unwrap_or_default();
        let mut output_digests = BTreeMap::new();
        let mut outputs = BTreeMap::new();
        for (i, result) in results.iter().enumerate() {
            let (digest, value) = match result {
                Some(StageResult::Done(out)) => (
                    digest_outputs(std::slice::from_ref(&Some(out.clone()))),
                    Val::Map(out.clone()),
                ),
                Some(StageResult::FanOut(items)) => (
                    digest_outputs(items),
                    Val::List(items.iter().flatten().cloned().map(Val::Map).collect()),
                ),
                _ => continue,
            };
            let id = pipeline.stages[i].id.clone();
            output_digests.insert(id.clone(), digest);
            outputs.insert(id, value);
        }
        let duration_ms = started.elapsed().as_millis() as u64;
        self.observer.event(&Event::CycleFinished {
            cycle,
            window,
            duration_ms,
        });
        summaries.sort_by_key(|s| pipeline.stage_index(&s.stage).map(|i| pipeline.rank(i)));
        Ok((
            CycleReport {
                cycle,
                window,
                duration_ms,
                stages: summaries,
                output_digests,
                outputs,
            },
            results,
        ))
    }

    /// Runs every unit of a cycle, in dependency order, within the limits.
    async fn drive(
        &self,
        shared: &Arc<CycleShared>,
        cancel: &CancellationToken,
    ) -> Result<Vec<StageSummary>, RunError> {
        let pipeline = &self.pipeline;
        let n = pipeline.stages.len();
        let mut waiting_on: Vec<usize> = pipeline.stages.iter().map(|s| s.after.len()).collect();
        let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, s) in pipeline.stages.iter().enumerate() {
            for &d in &s.after {
                dependants[d].push(i);
            }
        }
        let mut ready: BTreeSet<(&str, usize)> = (0..n)
            .filter(|&i| waiting_on[i] == 0)
            .map(|i| (pipeline.stages[i].id.as_str(), i))
            .collect();
        let mut pending: BTreeSet<(&str, Unit)> = BTreeSet::new();
        let mut item_values: HashMap<Unit, Val> = HashMap::new();
        let mut left_in_stage: Vec<usize> = vec![0; n];
        let mut item_results: Vec<Vec<Option<Outputs>>> = vec![Vec::new(); n];
        let mut running_in_stage: Vec<usize> = vec![0; n];
        let mut running = 0usize;
        let mut summaries: Vec<StageSummary> = pipeline
            .stages
            .iter()
            .map(|s| StageSummary {
                stage: s.id.clone(),
                kind: s.kind.into(),
                ..StageSummary::default()
            })
            .collect();
        // Units are polled here, in the driver's task: no thread hand-off per unit. Kinds
        // that compute for long move that work to `spawn_blocking`.
        let mut tasks: FuturesUnordered<
            futures::future::BoxFuture<'static, (Unit, UnitOutcome, UnitStats)>,
        > = FuturesUnordered::new();
        let jobs = self.options.jobs.max(1);

        loop {
            // Expand stages whose dependencies are all finished into units.
            while let Some((_, s)) = ready.pop_first() {
                let expansion = self.expand(
                    shared,
                    s,
                    &mut pending,
                    &mut item_values,
                    &mut left_in_stage,
                    &mut item_results,
                );
                if let Expansion::Settled(result) = expansion {
                    set_result(shared, s, result.clone());
                    if let StageResult::Skipped(why) = &result {
                        summaries[s].status = "skipped".into();
                        summaries[s].reason = Some(why.clone());
                    } else {
                        summaries[s].status = "done".into();
                    }
                    release(s, &dependants, &mut waiting_on, &mut ready, pipeline);
                }
            }
            // Start units in id order while there is room.
            let mut started_any = true;
            while running < jobs && started_any {
                started_any = false;
                let next = pending
                    .iter()
                    .find(|(_, u)| {
                        let limit = pipeline.stages[u.stage]
                            .spec
                            .max_parallel
                            .as_ref()
                            .map_or(usize::MAX, |m| m.value.max(1) as usize);
                        running_in_stage[u.stage] < limit
                    })
                    .cloned();
                if let Some(key) = next {
                    pending.remove(&key);
                    let unit = key.1;
                    let item = unit
                        .item
                        .and_then(|i| item_values.remove(&unit).map(|v| (i, v)));
                    running += 1;
                    running_in_stage[unit.stage] += 1;
                    let job = self.unit_job(shared.clone(), unit.clone(), item, cancel.clone());
                    let span = tracing::info_span!("stage", id = %pipeline.stages[unit.stage].id, item = ?unit.item);
                    tasks.push(Box::pin(job.instrument(span)));
                    started_any = true;
                }
            }
            if running == 0 {
                if pending.is_empty() && ready.is_empty() {
                    break;
                }
                continue;
            }
            let Some((unit, outcome, stats)) = tasks.next().await else {
                break;
            };
            running -= 1;
            running_in_stage[unit.stage] -= 1;
            let s = unit.stage;
            let stage = &pipeline.stages[s];
            let summary = &mut summaries[s];
            summary.attempts = summary.attempts.max(stats.attempts);
            summary.duration_ms += stats.duration_ms;
            summary.bytes_in += stats.bytes_in;
            summary.bytes_out += stats.bytes_out;
            summary.cached |= stats.cached;
            match outcome {
                UnitOutcome::Done(outputs) => match unit.item {
                    Some(i) => item_results[s][i] = Some(outputs),
                    None => set_result(shared, s, StageResult::Done(outputs)),
                },
                UnitOutcome::Skipped(reason) => match unit.item {
                    Some(i) => {
                        summary.dropped.push((i, reason));
                    }
                    None => {
                        summary.status = "skipped".into();
                        summary.reason = Some(reason.clone());
                        set_result(shared, s, StageResult::Skipped(reason));
                    }
                },
                UnitOutcome::Failed { attempt, error } if stage.skips_on_error() => {
                    let reason = format!("failed on attempt {attempt}: {error}");
                    match unit.item {
                        Some(i) => {
                            self.observer.event(&Event::ItemDropped {
                                stage: stage.id.clone(),
                                item: i,
                                reason: reason.clone(),
                            });
                            summary.dropped.push((i, reason));
                        }
                        None => {
                            summary.status = "skipped".into();
                            summary.reason = Some(reason.clone());
                            set_result(shared, s, StageResult::Skipped(reason));
                        }
                    }
                }
                UnitOutcome::Failed { attempt, error } => {
                    summary.status = "failed".into();
                    summary.reason = Some(error.to_string());
                    cancel.cancel();
                    drop(tasks);
                    self.run_dir.sync()?;
                    let report = CycleReport {
                        cycle: shared.cycle,
                        window: shared.window,
                        duration_ms: 0,
                        stages: summaries,
                        output_digests: BTreeMap::new(),
                        outputs: BTreeMap::new(),
                    };
                    return Err(RunError::Stage {
                        stage: stage.id.clone(),
                        item: unit.item,
                        attempt,
                        error,
                        report: Box::new(report),
                    });
                }
                UnitOutcome::Cancelled => {
                    drop(tasks);
                    return Err(RunError::Cancelled);
                }
            }
            left_in_stage[s] -= 1;
            if left_in_stage[s] == 0 {
                if stage.for_each.is_some() {
                    let items = std::mem::take(&mut item_results[s]);
                    set_result(shared, s, StageResult::FanOut(items));
                }
                if summaries[s].status.is_empty() {
                    summaries[s].status = if summaries[s].dropped.is_empty() {
                        "done".into()
                    } else {
                        "partial".into()
                    };
                }
                release(s, &dependants, &mut waiting_on, &mut ready, pipeline);
            }
        }
        Ok(summaries)
    }

    /// Turns a ready stage into pending units, or settles it without any (skipped because an
    /// upstream stage was, or a fan-out over an empty list).
    fn expand<'p>(
        &'p self,
        shared: &CycleShared,
        s: usize,
        pending: &mut BTreeSet<(&'p str, Unit)>,
        item_values: &mut HashMap<Unit, Val>,
        left_in_stage: &mut [usize],
        item_results: &mut [Vec<Option<Outputs>>],
    ) -> Expansion {
        let stage = &self.pipeline.stages[s];
        let results = shared
            .results
            .read()
            .map_err(|_| StageResult::Skipped("internal: results lock".into()));
        let results = match results {
            Ok(r) => r,
            Err(settled) => return Expansion::Settled(settled),
        };
        if let Some(&up) = stage
            .after
            .iter()
            .find(|&&d| matches!(results[d], Some(StageResult::Skipped(_))))
        {
            return Expansion::Settled(StageResult::Skipped(format!(
                "upstream stage `{}` was skipped",
                self.pipeline.stages[up].id
            )));
        }
        drop(results);
        let id = stage.id.as_str();
        let items = match &stage.for_each {
            None => {
                pending.insert((
                    id,
                    Unit {
                        stage: s,
                        item: None,
                    },
                ));
                left_in_stage[s] = 1;
                return Expansion::Units;
            }
            Some(ForEach::Literal { items, .. }) => items.clone(),
            Some(ForEach::Expr { expr, .. }) => {
                let scope = RunScope {
                    shared,
                    index: s,
                    item: None,
                };
                match expr.eval(&scope) {
                    Val::List(items) => items,
                    other => {
                        return Expansion::Settled(StageResult::Skipped(format!(
                            "`for_each` did not give a list: {other}"
                        )));
                    }
                }
            }
        };
        if items.is_empty() {
            return Expansion::Settled(StageResult::FanOut(Vec::new()));
        }
        left_in_stage[s] = items.len();
        item_results[s] = vec![None; items.len()];
        for (i, value) in items.into_iter().enumerate() {
            let unit = Unit {
                stage: s,
                item: Some(i),
            };
            item_values.insert(unit.clone(), value);
            pending.insert((id, unit));
        }
        Expansion::Units
    }

    fn unit_job(
        &self,
        shared: Arc<CycleShared>,
        unit: Unit,
        item: Option<(usize, Val)>,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = (Unit, UnitOutcome, UnitStats)> + Send + 'static {
        let transport = self.transport.clone();
        let observer = self.observer.clone();
        let run_dir = self.run_dir.clone();
        let cached = self
            .journalled
            .get(&unit_key_for(&shared, &unit, item.as_ref()))
            .cloned();
        async move {
            let started = Instant::now();
            let mut stats = UnitStats::default();
            let outcome = run_unit(
                &shared,
                &unit,
                item,
                transport,
                observer.clone(),
                &run_dir,
                cancel,
                cached,
                &mut stats,
            )
            .await;
            stats.duration_ms = started.elapsed().as_millis() as u64;
            let stage = &shared.pipeline.stages[unit.stage];
            let status = match &outcome {
                UnitOutcome::Done(_) => UnitStatus::Done,
                UnitOutcome::Skipped(_) => UnitStatus::Skipped,
                _ => UnitStatus::Failed,
            };
            observer.event(&Event::UnitFinished {
                stage: stage.id.clone(),
                item: unit.item,
                status,
                attempts: stats.attempts,
                duration_ms: stats.duration_ms,
                cached: stats.cached,
            });
            (unit, outcome, stats)
        }
    }
}

#[derive(Default)]
struct UnitStats {
    attempts: u32,
    duration_ms: u64,
    bytes_in: u64,
    bytes_out: u64,
    cached: bool,
}

#[allow(clippy::too_many_arguments)]
async fn run_unit(
    shared: &Arc<CycleShared>,
    unit: &Unit,
    item: Option<(usize, Val)>,
    transport: Arc<dyn Transport>,
    observer: Arc<dyn Observer>,
    run_dir: &RunDir,
    cancel: CancellationToken,
    cached: Option<JournalEntry>,
    stats: &mut UnitStats,
) -> UnitOutcome {
    let stage = &shared.pipeline.stages[unit.stage];
    if let Some(when) = &stage.when {
        let scope = RunScope {
            shared,
            index: unit.stage,
            item: item.as_ref(),
        };
        match when.eval(&scope) {
            Val::Bool(true) => {}
            Val::Bool(false) => return UnitOutcome::Skipped(format!("`when: {when}` is false")),
            other => {
                let error =
                    StageError::final_(format!("`when: {when}` gave {other}, not true or false"));
                return UnitOutcome::Failed { attempt: 0, error };
            }
        }
    }
    let key = unit_key_for(shared, unit, item.as_ref());
    if let Some(entry) = cached {
        let complete = entry
            .outputs
            .values()
            .flat_map(Val::artifacts)
            .all(|a| run_dir.objects.contains(a));
        if complete {
            stats.cached = true;
            return UnitOutcome::Done(entry.outputs);
        }
    }
    let retry = stage.spec.retry.as_ref();
    let attempts = retry.map_or(1, |r| r.attempts.max(1));
    let timeout = stage.spec.timeout.as_ref().map(|t| t.value.0);
    let started = Instant::now();
    for attempt in 1..=attempts {
        stats.attempts = attempt;
        let scope = CallScope {
            cycle: shared.cycle,
            stage: stage.id.clone(),
            item: unit.item,
            attempt,
        };
        let effects = Effects::new(transport.clone(), scope);
        let cx = StageRun {
            shared: shared.clone(),
            index: unit.stage,
            item: item.clone(),
            attempt,
            effects: effects.clone(),
            objects: run_dir.objects.clone(),
            cancel: cancel.clone(),
            observer: observer.clone(),
        };
        observer.event(&Event::UnitStarted {
            stage: stage.id.clone(),
            item: unit.item,
            attempt,
        });
        let attempt_span = tracing::info_span!("attempt", attempt);
        let work = stage.settings.run(&cx).instrument(attempt_span);
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return UnitOutcome::Cancelled,
            r = async {
                match timeout {
                    Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                        Err(StageError::retryable(format!("timed out after {}", crate::value::Duration(limit))))
                    }),
                    None => work.await,
                }
            } => r,
        };
        stats.bytes_in += effects.traffic().bytes_in.load(Ordering::Relaxed);
        stats.bytes_out += effects.traffic().bytes_out.load(Ordering::Relaxed);
        let result = result.and_then(|outputs| check_outputs(stage, outputs));
        match result {
            Ok(outputs) => {
                for a in outputs.values().flat_map(Val::artifacts) {
                    stats.bytes_out += a.size;
                }
                let entry = JournalEntry {
                    cycle: shared.cycle,
                    window: shared.window,
                    stage: stage.id.clone(),
                    item: unit.item,
                    key,
                    status: EntryStatus::Done,
                    outputs: outputs.clone(),
                    attempts: attempt,
                    duration_ms: started.elapsed().as_millis() as u64,
                    reason: None,
                };
                if let Err(e) = run_dir.append(&entry) {
                    return UnitOutcome::Failed {
                        attempt,
                        error: StageError::io("writing the journal", &e),
                    };
                }
                return UnitOutcome::Done(outputs);
            }
            Err(error) if error.class == ErrorClass::Retryable && attempt < attempts => {
                let delay = match retry {
                    Some(r) => backoff(r, attempt, &effects).await,
                    None => Duration::ZERO,
                };
                tracing::warn!(stage = %stage.id, attempt, error = %error, delay_ms = delay.as_millis() as u64, "retrying");
                observer.event(&Event::UnitRetrying {
                    stage: stage.id.clone(),
                    item: unit.item,
                    attempt,
                    error: error.to_string(),
                    delay_ms: delay.as_millis() as u64,
                });
                tokio::select! {
                    _ = cancel.cancelled() => return UnitOutcome::Cancelled,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(error) => return UnitOutcome::Failed { attempt, error },
        }
    }
    UnitOutcome::Failed {
        attempt: attempts,
        error: StageError::final_("no attempt was made"),
    }
}

/// Exponential backoff: `backoff × 2^(attempt−1)`, capped by `max_backoff`; with jitter,
/// a uniform draw in [0, that] from the `random` system.
async fn backoff(retry: &crate::spec::RetrySpec, attempt: u32, effects: &Effects) -> Duration {
    let base = retry
        .backoff
        .0
        .saturating_mul(1u32 << (attempt - 1).min(20));
    let capped = retry.max_backoff.map_or(base, |m| base.min(m.0));
    if !retry.jitter {
        return capped;
    }
    match effects.random_u64().await {
        Ok(r) => capped.mul_f64((r as f64) / (u64::MAX as f64)),
        Err(_) => capped,
    }
}

/// Every declared output is present.
fn check_outputs(stage: &Stage, outputs: Outputs) -> Result<Outputs, StageError> {
    match stage.outputs.iter().find(|p| !outputs.contains_key(p.name)) {
        Some(port) => Err(StageError::final_(format!(
            "`{}` produced no `{}` output",
            stage.kind, port.name
        ))),
        None => Ok(outputs),
    }
}

/// The cache key of a unit: kind, kind version, settings with every expression evaluated
/// (artifacts by digest), the window and the item.
fn unit_key_for(shared: &CycleShared, unit: &Unit, item: Option<&(usize, Val)>) -> Digest {
    let stage = &shared.pipeline.stages[unit.stage];
    let scope = RunScope {
        shared,
        index: unit.stage,
        item,
    };
    let with = stage
        .spec
        .with
        .as_ref()
        .map_or(Json::Null, |w| resolve_node(w, &scope));
    let key = serde_json::json!({
        "kind": stage.kind,
        "version": stage.kind_version,
        "with": with,
        "window": shared.window,
        "item": item.map(|(_, v)| v.to_json()),
    });
    digest_of(key.to_string().as_bytes())
}

fn resolve_node(node: &Node, scope: &RunScope) -> Json {
    match &node.kind {
        NodeKind::Str(text) if crate::expr::is_template(text) => {
            match parse_template(text, Origin::exact(0)) {
                Ok(t) => t.eval(scope).to_json(),
                Err(_) => Json::String(text.clone()),
            }
        }
        NodeKind::Seq(items) => items.iter().map(|n| resolve_node(n, scope)).collect(),
        NodeKind::Map(entries) => entries
            .iter()
            .map(|(k, v)| (k.scalar_text(), resolve_node(v, scope)))
            .collect(),
        _ => node.to_json(),
    }
}

fn fan_key(f: &ForEach) -> String {
    match f {
        ForEach::Expr { expr, .. } => expr.to_string(),
        ForEach::Literal { items, .. } => format!("{items:?}"),
    }
}

fn set_result(shared: &CycleShared, s: usize, result: StageResult) {
    if let Ok(mut results) = shared.results.write() {
        results[s] = Some(result);
    }
}

fn release<'p>(
    s: usize,
    dependants: &[Vec<usize>],
    waiting_on: &mut [usize],
    ready: &mut BTreeSet<(&'p str, usize)>,
    pipeline: &'p Pipeline,
) {
    for &d in &dependants[s] {
        waiting_on[d] -= 1;
        if waiting_on[d] == 0 {
            ready.insert((pipeline.stages[d].id.as_str(), d));
        }
    }
}

fn digest_outputs(items: &[Option<Outputs>]) -> Digest {
    let json: Vec<Json> = items
        .iter()
        .map(|o| match o {
            Some(out) => out.iter().map(|(k, v)| (k.clone(), v.to_json())).collect(),
            None => Json::Null,
        })
        .collect();
    digest_of(Json::Array(json).to_string().as_bytes())
}

/// The stages whose work for a run's interrupted cycle is already journalled: what
/// `--resume` would not redo. Nothing is cached once the last cycle completed (the next
/// cycle has a new window).
pub fn cached_stages(pipeline: &Arc<Pipeline>, entries: &[JournalEntry]) -> BTreeSet<String> {
    let mut cached = BTreeSet::new();
    let Some(crate::journal::ResumePoint {
        cycle,
        window: Some(window),
    }) = crate::journal::resume_point(entries)
    else {
        return cached;
    };
    let done: Vec<&JournalEntry> = entries
        .iter()
        .filter(|e| e.cycle == cycle && e.status == EntryStatus::Done)
        .collect();
    let keys: std::collections::HashSet<&str> = done.iter().map(|e| e.key.as_str()).collect();
    let n = pipeline.stages.len();
    let mut results: Vec<Option<StageResult>> = vec![None; n];
    for e in &done {
        let Some(i) = pipeline.stage_index(&e.stage) else {
            continue;
        };
        match e.item {
            None => results[i] = Some(StageResult::Done(e.outputs.clone())),
            Some(k) => {
                if !matches!(results[i], Some(StageResult::FanOut(_))) {
                    results[i] = Some(StageResult::FanOut(Vec::new()));
                }
                if let Some(StageResult::FanOut(items)) = &mut results[i] {
                    if items.len() <= k {
                        items.resize(k + 1, None);
                    }
                    items[k] = Some(e.outputs.clone());
                }
            }
        }
    }
    let shared = CycleShared {
        pipeline: pipeline.clone(),
        cycle,
        window,
        results: RwLock::new(results),
        previous: Arc::new(vec![None; n]),
        fan_keys: pipeline
            .stages
            .iter()
            .map(|s| s.for_each.as_ref().map(fan_key))
            .collect(),
    };
    for (s, stage) in pipeline.stages.iter().enumerate() {
        let hit = |item: Option<(usize, Val)>| {
            let unit = Unit {
                stage: s,
                item: item.as_ref().map(|(i, _)| *i),
            };
            keys.contains(unit_key_for(&shared, &unit, item.as_ref()).as_str())
        };
        let all_cached = match &stage.for_each {
            None => hit(None),
            Some(fan) => {
                let items = match fan {
                    ForEach::Literal { items, .. } => items.clone(),
                    ForEach::Expr { expr, .. } => match expr.eval(&RunScope {
                        shared: &shared,
                        index: s,
                        item: None,
                    }) {
                        Val::List(items) => items,
                        _ => Vec::new(),
                    },
                };
                !items.is_empty()
                    && items
                        .into_iter()
                        .enumerate()
                        .all(|(i, v)| hit(Some((i, v))))
            }
        };
        if all_cached {
            cached.insert(stage.id.clone());
        }
    }
    cached
}
