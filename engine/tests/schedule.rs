//! The scheduler with a test kind: order and concurrency limits, retries with backoff on a
//! paused clock, timeouts, cancellation, fan-out with dropped items, `when`, cycles with
//! state, the journal, and record → replay → fault injection through the effects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use gradline_engine::effects::{
    FaultAction, FaultRule, Faults, Live, Recorder, Replayer, Transport,
};
use gradline_engine::expr::Val;
use gradline_engine::journal::{RunDir, RunInfo};
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{Input, Port, Registry, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::{
    CycleReport, Quiet, RunError, RunOptions, Runner, StageRun, StopSignal,
};
use gradline_engine::types::{Type, TypeDef};
use gradline_engine::value::Value;
use gradline_engine::{Override, load};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio::time::Instant;

/// What the test kind saw: (tag, stage, event, time since the test's start).
static LOG: Mutex<Vec<(String, String, &'static str, Duration)>> = Mutex::new(Vec::new());
static START: Mutex<Option<Instant>> = Mutex::new(None);

fn log(tag: &str, stage: &str, event: &'static str) {
    let start = START
        .lock()
        .unwrap()
        .get_or_insert_with(Instant::now)
        .to_owned();
    LOG.lock()
        .unwrap()
        .push((tag.into(), stage.into(), event, start.elapsed()));
}

fn events(tag: &str) -> Vec<(String, &'static str, Duration)> {
    LOG.lock()
        .unwrap()
        .iter()
        .filter(|e| e.0 == tag)
        .map(|e| (e.1.clone(), e.2, e.3))
        .collect()
}

/// A test stage: waits, fails as told, calls effects, and emits a value and a blob.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct Step {
    tag: String,
    #[serde(default)]
    value: Option<Value<serde_json::Value>>,
    #[serde(default)]
    input: Option<Input>,
    #[serde(default)]
    sleep_ms: u64,
    /// Fail (retryably) the first N attempts.
    #[serde(default)]
    flaky: u32,
    /// Fail for good with this message.
    #[serde(default)]
    fail: Option<Value<String>>,
    /// Fail for good when this holds.
    #[serde(default)]
    fail_when: Option<Value<bool>>,
    /// Read the clock and draw a random number through the effects.
    #[serde(default)]
    touch: bool,
    /// Add one to this stage's previous `count`.
    #[serde(default)]
    count: bool,
}

impl StageKind for Step {
    const NAME: &'static str = "step";
    const DESCRIPTION: &'static str = "test step";

    fn inputs(&self) -> Vec<Port> {
        vec![Port::new("input", Type::Any, "")]
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("out", Type::Any, ""),
            Port::new("blob", Type::Named("blob"), ""),
            Port::new("count", Type::Int, ""),
        ]
    }

    fn effects(&self, _: &PlanContext) -> Vec<Effect> {
        Vec::new()
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let id = match cx.item() {
                Some(item) => format!("{}[{item}]", cx.stage().id),
                None => cx.stage().id.clone(),
            };
            log(&self.tag, &id, "start");
            tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
            if cx.attempt <= self.flaky {
                log(&self.tag, &id, "flaky");
                return Err(StageError::retryable(format!(
                    "flaky attempt {}",
                    cx.attempt
                )));
            }
            if let Some(fail) = &self.fail {
                let why = cx.get(fail)?;
                if !why.is_empty() {
                    log(&self.tag, &id, "fail");
                    return Err(StageError::final_(why).context("the step refused"));
                }
            }
            if let Some(when) = &self.fail_when
                && cx.get(when)?
            {
                log(&self.tag, &id, "fail");
                return Err(StageError::final_("told to fail"));
            }
            let mut out = match &self.value {
                Some(v) => json_val(cx.get(v)?),
                None => Val::Null,
            };
            if let Some(input) = &self.input {
                out = Val::List(vec![out, cx.input(input)?]);
            }
            if self.touch {
                let now = cx.effects.now_ms().await?;
                let r = cx.effects.random_u64().await?;
                out = Val::List(vec![out, Val::Int(now as i64), Val::Str(r.to_string())]);
            }
            let previous = cx.previous().and_then(|p| match p.get("count") {
                Some(Val::Int(n)) => Some(*n),
                _ => None,
            });
            let count = if self.count {
                previous.unwrap_or(0) + 1
            } else {
                0
            };
            let blob = cx
                .write_artifact("blob", out.to_string().into_bytes())
                .await?;
            log(&self.tag, &id, "end");
            Ok(BTreeMap::from([
                ("out".to_owned(), out),
                ("blob".to_owned(), Val::Artifact(blob)),
                ("count".to_owned(), Val::Int(count)),
            ]))
        })
    }
}

fn json_val(json: serde_json::Value) -> Val {
    match json {
        serde_json::Value::Null => Val::Null,
        serde_json::Value::Bool(b) => Val::Bool(b),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map_or(Val::Float(n.as_f64().unwrap_or(0.0)), Val::Int),
        serde_json::Value::String(s) => Val::Str(s),
        serde_json::Value::Array(items) => Val::List(items.into_iter().map(json_val).collect()),
        serde_json::Value::Object(fields) => {
            Val::Map(fields.into_iter().map(|(k, v)| (k, json_val(v))).collect())
        }
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_type(TypeDef::artifact("blob", ""));
    r.register::<Step>();
    r
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gradline-sched-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

struct Setup {
    text: String,
    jobs: usize,
    cycles: Option<u64>,
    transport: Arc<dyn Transport>,
    runs: PathBuf,
    fresh: bool,
}

fn setup(name: &str, stages: &str) -> Setup {
    Setup {
        text: format!("version: 1\nname: {name}\nrole: miner\nstages:\n{stages}"),
        jobs: 4,
        cycles: None,
        transport: Arc::new(Live::new()),
        runs: temp(name),
        fresh: true,
    }
}

async fn run(s: &Setup) -> Result<Vec<CycleReport>, RunError> {
    run_with(s, &[]).await
}

async fn run_with(s: &Setup, set: &[Override]) -> Result<Vec<CycleReport>, RunError> {
    let loaded = load("t.yaml", &s.text, &registry(), set);
    assert!(!loaded.has_errors(), "{}", loaded.render());
    let pipeline = Arc::new(loaded.pipeline.unwrap());
    let info = RunInfo {
        run_id: String::new(),
        pipeline: pipeline.spec.name.value.clone(),
        file: "t.yaml".into(),
        file_digest: String::new(),
        overrides: vec![],
    };
    let run_dir = match RunDir::latest(&s.runs, &info.pipeline).unwrap() {
        Some(dir) if !s.fresh => dir,
        _ => RunDir::create(&s.runs, info).unwrap(),
    };
    let options = RunOptions {
        jobs: s.jobs,
        cycles: s.cycles,
        window: Duration::from_secs(1),
    };
    let runner = Runner::new(
        pipeline,
        s.transport.clone(),
        Arc::new(Quiet),
        Arc::new(run_dir),
        options,
        StopSignal::new(),
    )?;
    runner.run().await
}

fn starts(tag: &str) -> Vec<(String, Duration)> {
    events(tag)
        .into_iter()
        .filter(|e| e.1 == "start")
        .map(|e| (e.0, e.2))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn ready_stages_start_in_id_order_within_the_jobs_limit() {
    let mut s = setup(
        "order",
        "  d: { uses: step, with: { tag: order, sleep_ms: 100 } }\n  b: { uses: step, with: { tag: order, sleep_ms: 100 } }\n  c: { uses: step, with: { tag: order, sleep_ms: 100 } }\n  a: { uses: step, with: { tag: order, sleep_ms: 100 } }\n  z: { uses: step, with: { tag: order, input: '${{ stages.a.outputs.out }}' } }\n",
    );
    s.jobs = 2;
    let began = Instant::now();
    run(&s).await.unwrap();
    let order: Vec<String> = starts("order").into_iter().map(|e| e.0).collect();
    assert_eq!(order, ["a", "b", "c", "d", "z"]);
    assert_eq!(
        began.elapsed(),
        Duration::from_millis(200),
        "two at a time, 100 ms each"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially() {
    let s = setup(
        "retry",
        "  a:\n    uses: step\n    with: { tag: retry, flaky: 3 }\n    retry: { attempts: 4, backoff: 1s, max_backoff: 3s, jitter: false }\n",
    );
    run(&s).await.unwrap();
    let times: Vec<Duration> = starts("retry").into_iter().map(|e| e.1).collect();
    let gaps: Vec<u64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis() as u64)
        .collect();
    assert_eq!(gaps, [1000, 2000, 3000], "1s, 2s, then capped at 3s");
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_the_backoff() {
    let s = setup(
        "jitter",
        "  a:\n    uses: step\n    with: { tag: jitter, flaky: 3 }\n    retry: { attempts: 4, backoff: 2s }\n",
    );
    run(&s).await.unwrap();
    let times: Vec<Duration> = starts("jitter").into_iter().map(|e| e.1).collect();
    for (i, w) in times.windows(2).enumerate() {
        let gap = w[1] - w[0];
        assert!(gap <= Duration::from_secs(2 << i), "gap {i} is {gap:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_retryable_and_then_fail_naming_the_stage() {
    let s = setup(
        "timeout",
        "  slow:\n    uses: step\n    with: { tag: timeout, sleep_ms: 5000 }\n    timeout: 1s\n    retry: { attempts: 2, backoff: 1s, jitter: false }\n",
    );
    let began = Instant::now();
    let err = run(&s).await.unwrap_err();
    assert_eq!(began.elapsed(), Duration::from_secs(3));
    let text = err.to_string();
    assert!(
        text.contains("stage `slow` failed on attempt 2: timed out after 1s"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_final_failure_cancels_the_rest_with_its_cause() {
    let s = setup(
        "cancel",
        "  bad: { uses: step, with: { tag: cancel, sleep_ms: 100, fail: 'the digest does not match' } }\n  long: { uses: step, with: { tag: cancel, sleep_ms: 60000 } }\n  after: { uses: step, needs: long, with: { tag: cancel } }\n",
    );
    let began = Instant::now();
    let err = run(&s).await.unwrap_err();
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "the long stage is cancelled, not awaited"
    );
    let text = err.to_string();
    assert!(
        text.contains(
            "stage `bad` failed on attempt 1: the step refused: the digest does not match"
        ),
        "{text}"
    );
    let seen = events("cancel");
    assert!(!seen.iter().any(|e| e.0 == "long" && e.1 == "end"));
    assert!(!seen.iter().any(|e| e.0 == "after"));
    let RunError::Stage { report, .. } = err else {
        panic!("a stage error")
    };
    let bad = report.stages.iter().find(|s| s.stage == "bad").unwrap();
    assert_eq!(bad.status, "failed");
}

#[tokio::test(start_paused = true)]
async fn fan_out_drops_failed_items_and_fans_in_the_rest() {
    let s = setup(
        "fan",
        "  each:\n    uses: step\n    for_each: [1, 2, 3, 4]\n    max_parallel: 2\n    on_error: skip\n    with: { tag: fan, sleep_ms: 10, value: '${{ item }}', fail_when: \"${{ item == 2 }}\" }\n  all: { uses: step, with: { tag: fan, input: '${{ stages.each.outputs.out }}' } }\n",
    );
    let reports = run(&s).await;
    let reports = match reports {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    let each = reports[0]
        .stages
        .iter()
        .find(|s| s.stage == "each")
        .unwrap();
    assert_eq!(each.status, "partial");
    assert_eq!(each.dropped.len(), 1);
    assert_eq!(each.dropped[0].0, 1);
    assert!(
        each.dropped[0].1.contains("told to fail"),
        "{:?}",
        each.dropped
    );
    let all_log = events("fan");
    let concurrent = max_concurrency(&all_log, "each[");
    assert!(concurrent <= 2, "max_parallel holds: {concurrent}");
}

fn max_concurrency(log: &[(String, &'static str, Duration)], prefix: &str) -> usize {
    let mut running = 0usize;
    let mut most = 0;
    let mut sorted: Vec<_> = log.iter().filter(|e| e.0.starts_with(prefix)).collect();
    sorted.sort_by_key(|e| (e.2, e.1 == "start"));
    for e in sorted {
        match e.1 {
            "start" => running += 1,
            "end" | "fail" => running = running.saturating_sub(1),
            _ => {}
        }
        most = most.max(running);
    }
    most
}

#[tokio::test(start_paused = true)]
async fn when_skips_a_stage_and_what_needs_it() {
    let s = setup(
        "when",
        "  first: { uses: step, when: 'cycle.index > 0', with: { tag: when } }\n  second: { uses: step, needs: first, with: { tag: when } }\n  other: { uses: step, with: { tag: when } }\n",
    );
    let reports = run(&s).await.unwrap();
    let status: BTreeMap<&str, &str> = reports[0]
        .stages
        .iter()
        .map(|s| (s.stage.as_str(), s.status.as_str()))
        .collect();
    assert_eq!(status["first"], "skipped");
    assert_eq!(status["second"], "skipped");
    assert_eq!(status["other"], "done");
    let second = reports[0]
        .stages
        .iter()
        .find(|s| s.stage == "second")
        .unwrap();
    assert_eq!(
        second.reason.as_deref(),
        Some("upstream stage `first` was skipped")
    );
}

#[tokio::test(start_paused = true)]
async fn cycles_carry_state_and_advance_windows() {
    let mut s = setup(
        "cycles",
        "  tick: { uses: step, with: { tag: cycles, count: true, value: '${{ cycle.index }}' } }\n",
    );
    s.text = s
        .text
        .replace("stages:", "trigger: { every: window }\nstages:");
    s.cycles = Some(3);
    let reports = run(&s).await.unwrap();
    assert_eq!(reports.len(), 3);
    let windows: Vec<i64> = reports.iter().map(|r| r.window).collect();
    assert!(
        windows.windows(2).all(|w| w[1] == w[0] + 1),
        "one cycle per window: {windows:?}"
    );
    let journal = RunDir::latest(&s.runs, "cycles")
        .unwrap()
        .unwrap()
        .entries()
        .unwrap();
    let counts: Vec<&Val> = journal
        .iter()
        .filter(|e| e.stage == "tick")
        .map(|e| &e.outputs["count"])
        .collect();
    assert_eq!(counts, [&Val::Int(1), &Val::Int(2), &Val::Int(3)]);
}

#[tokio::test(start_paused = true)]
async fn a_resumed_run_redoes_only_unfinished_stages() {
    let mut s = setup(
        "resume",
        "  a: { uses: step, with: { tag: resume, value: 1 } }\n  b: { uses: step, with: { tag: resume, input: '${{ stages.a.outputs.blob }}', fail: '${{ params.fail }}' } }\n",
    );
    s.text = s.text.replace(
        "stages:",
        "params:\n  fail: { type: string, default: 'not yet' }\nstages:",
    );
    assert!(run(&s).await.is_err());
    s.fresh = false;
    let reports = run_with(&s, &["fail=".parse().unwrap()]).await.unwrap();
    let a = reports[0].stages.iter().find(|x| x.stage == "a").unwrap();
    assert!(a.cached, "a finished before and is not redone");
    let runs_of_a = events("resume")
        .iter()
        .filter(|e| e.0 == "a" && e.1 == "start")
        .count();
    assert_eq!(runs_of_a, 1);
}

#[tokio::test(start_paused = true)]
async fn a_recorded_run_replays_to_the_same_outputs_and_a_changed_one_is_named() {
    let tape = temp("tape");
    let stages = "  a: { uses: step, with: { tag: tape, touch: true, value: '${{ params.v }}' } }\n  b: { uses: step, with: { tag: tape, input: '${{ stages.a.outputs.out }}', touch: true } }\n";
    let mut s = setup("tape", stages);
    s.text = s.text.replace(
        "stages:",
        "params:\n  v: { type: int, default: 1 }\nstages:",
    );
    let recorder = Arc::new(Recorder::create(Arc::new(Live::new()), &tape).unwrap());
    s.transport = recorder.clone();
    let recorded = run(&s).await.unwrap();
    recorder.sync().unwrap();

    tokio::time::advance(Duration::from_secs(3600)).await;
    s.transport = Arc::new(Replayer::open(&tape).unwrap());
    s.runs = temp("tape-replay");
    let replayed = run(&s).await.unwrap();
    assert_eq!(recorded[0].output_digests, replayed[0].output_digests);
    assert_eq!(
        recorded[0].window, replayed[0].window,
        "windows come from the recorded clock"
    );

    s.runs = temp("tape-live");
    s.transport = Arc::new(Live::new());
    let live_again = run(&s).await.unwrap();
    assert_ne!(
        recorded[0].output_digests, live_again[0].output_digests,
        "live randomness differs"
    );

    std::fs::write(tape.join("tape.jsonl"), "").unwrap();
    s.transport = Arc::new(Replayer::open(&tape).unwrap());
    s.runs = temp("tape-missing");
    let err = run(&s).await.unwrap_err().to_string();
    assert!(err.contains("replay: unexpected call clock.now"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn fault_rules_make_stages_retry() {
    let mut s = setup(
        "faults",
        "  a:\n    uses: step\n    with: { tag: faults, touch: true }\n    retry: { attempts: 3, backoff: 1s, jitter: false }\n",
    );
    let rule = FaultRule {
        system: "random".into(),
        op: None,
        nth: 1,
        action: FaultAction::Fail {
            retryable: true,
            message: "HTTP 503".into(),
        },
    };
    s.transport = Arc::new(Faults::new(Arc::new(Live::new()), vec![rule]));
    let reports = run(&s).await.unwrap();
    assert_eq!(reports[0].stages[0].attempts, 2);
    let delay = FaultRule {
        system: "clock".into(),
        op: None,
        nth: 0,
        action: FaultAction::Delay(Duration::from_secs(5)),
    };
    s.transport = Arc::new(Faults::new(Arc::new(Live::new()), vec![delay]));
    s.text = s.text.replace("retry:", "timeout: 2s\n    retry:");
    let err = run(&s).await.unwrap_err().to_string();
    assert!(err.contains("timed out after 2s"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_wrong_setting_type_at_run_time_points_at_the_setting() {
    let mut s = setup(
        "types",
        "  a: { uses: step, with: { tag: types, fail: '${{ params.n }}' } }\n",
    );
    s.text = s.text.replace(
        "stages:",
        "params:\n  n: { type: list, items: int, default: [1] }\nstages:",
    );
    let err = run(&s).await.unwrap_err().to_string();
    assert!(err.contains("t.yaml:7:"), "{err}");
    assert!(err.contains("does not fit"), "{err}");
}

/// A chain that makes a block every second of tokio time.
struct Blocks {
    origin: Instant,
}

impl Transport for Blocks {
    fn call<'a>(
        &'a self,
        _: &'a gradline_engine::effects::CallScope,
        request: gradline_engine::effects::Request,
    ) -> BoxFuture<
        'a,
        Result<gradline_engine::effects::Response, gradline_engine::effects::EffectError>,
    > {
        Box::pin(async move {
            assert_eq!(request.op, "block");
            let number = self.origin.elapsed().as_secs() + 100;
            Ok(gradline_engine::effects::Response::value(
                serde_json::json!({ "number": number }),
            ))
        })
    }
}

#[tokio::test(start_paused = true)]
async fn windows_follow_the_chain_height_when_a_chain_is_configured() {
    let mut s = setup(
        "chain",
        "  tick: { uses: step, with: { tag: chain, value: '${{ cycle.window }}' } }\n",
    );
    s.text = s.text.replace(
        "stages:",
        "resources:\n  chain: { url: \"ws://127.0.0.1:9944\", netuid: 3, window_blocks: 5 }\ntrigger: { every: window }\nstages:",
    );
    s.cycles = Some(3);
    s.transport = Arc::new(Live::new().with_system(
        "chain",
        Arc::new(Blocks {
            origin: Instant::now(),
        }),
    ));
    let reports = run(&s).await.unwrap();
    let windows: Vec<i64> = reports.iter().map(|r| r.window).collect();
    assert_eq!(
        windows,
        [20, 21, 22],
        "block 100 / 5 blocks per window, then each next window"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cycle_past_its_deadline_is_cancelled() {
    let mut s = setup(
        "deadline",
        "  slow: { uses: step, with: { tag: deadline, sleep_ms: 60000 } }\n",
    );
    s.text = s.text.replace("stages:", "deadline: 10s\nstages:");
    let began = Instant::now();
    let err = run(&s).await.unwrap_err();
    assert_eq!(began.elapsed(), Duration::from_secs(10));
    assert_eq!(err.to_string(), "cycle 0 passed its deadline of 10s");
}

#[tokio::test(start_paused = true)]
async fn an_interval_trigger_spaces_cycles_from_their_starts() {
    let mut s = setup(
        "interval",
        "  a: { uses: step, with: { tag: interval, sleep_ms: 300 } }\n",
    );
    s.text = s
        .text
        .replace("stages:", "trigger: { interval: 2s }\nstages:");
    s.cycles = Some(3);
    run(&s).await.unwrap();
    let times: Vec<u128> = starts("interval")
        .into_iter()
        .map(|e| e.1.as_millis())
        .collect();
    let gaps: Vec<u128> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [2000, 2000]);
}
