//! `gradline run` and `gradline replay`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use gradline_engine::effects::{Recorder, Replayer, Transport};
use gradline_engine::journal::{RunDir, RunInfo};
use gradline_engine::runtime::digest_of;
use gradline_engine::schedule::{CycleReport, RunError, RunOptions, Runner, StopSignal};
use gradline_engine::{Loaded, Override, Registry, load};
use gradline_stages::live;
use serde::{Deserialize, Serialize};

use crate::display::{Display, LogFormat, init_tracing, summary_table};

/// Everything `run` was asked, as recorded for `replay`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recording {
    pub file: String,
    /// The pipeline's text, so a replay does not depend on the file as it is now.
    pub text: String,
    pub overrides: Vec<String>,
    pub cycles: Option<u64>,
    pub jobs: usize,
    pub window_ms: u64,
    /// Filled in when the run ends: each cycle's output digests.
    #[serde(default)]
    pub cycles_run: Vec<CycleDigests>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CycleDigests {
    pub cycle: u64,
    pub window: i64,
    pub outputs: std::collections::BTreeMap<String, String>,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Override a parameter, with type checking (repeatable).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    pub set: Vec<Override>,
    /// Stop after this many cycles.
    #[arg(long)]
    pub cycles: Option<u64>,
    /// Stages (or fan-out items) running at once; default: the number of cores.
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Continue the newest run of this pipeline: finished stages are not redone.
    #[arg(long)]
    pub resume: bool,
    /// Record every outside call into this folder, for `gradline replay`.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// The length of a window when no chain gives windows.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub window: Duration,
    /// Where run folders go.
    #[arg(long, default_value = ".gradline/runs", value_name = "DIR")]
    pub runs_dir: PathBuf,
    /// `auto`: a live view on a terminal, text lines elsewhere; `json`: one event per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<gradline_engine::value::Duration>()
        .map(|d| d.0)
        .map_err(|e| e.to_string())
}

/// Why `run` stopped: the pipeline is invalid (already printed), or it failed running.
pub enum RunFailure {
    Invalid,
    Failed(anyhow::Error),
}

impl<E: Into<anyhow::Error>> From<E> for RunFailure {
    fn from(e: E) -> Self {
        RunFailure::Failed(e.into())
    }
}

pub fn run(args: RunArgs, loaded: Loaded) -> Result<(), RunFailure> {
    let Some(pipeline) = loaded.pipeline else {
        return Err(RunFailure::Invalid);
    };
    let pipeline = Arc::new(pipeline);
    let format = args.log_format.resolve();
    init_tracing(format);
    let options = RunOptions {
        jobs: args.jobs.unwrap_or_else(|| RunOptions::default().jobs),
        cycles: args.cycles,
        window: args.window,
    };
    let mut recording = args.record.as_ref().map(|_| Recording {
        file: loaded.file.name.clone(),
        text: loaded.file.text.clone(),
        overrides: args
            .set
            .iter()
            .map(|o| format!("{}={}", o.name, o.value))
            .collect(),
        cycles: args.cycles,
        jobs: options.jobs,
        window_ms: args.window.as_millis() as u64,
        cycles_run: Vec::new(),
    });
    let env = gradline_engine::preflight::process_env;
    ready(&pipeline, &env)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let live = runtime
        .block_on(live::connect(
            &pipeline,
            &env,
            &live::LiveOptions::from_env(&env),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let live: Arc<dyn Transport> = Arc::new(live);
    let recorder = match &args.record {
        Some(dir) => Some(Arc::new(
            Recorder::create(live.clone(), dir)
                .with_context(|| format!("cannot record into {}", dir.display()))?,
        )),
        None => None,
    };
    let transport: Arc<dyn Transport> = match &recorder {
        Some(r) => r.clone(),
        None => live,
    };
    let info = RunInfo {
        run_id: String::new(),
        pipeline: pipeline.spec.name.value.clone(),
        file: loaded.file.name.clone(),
        file_digest: digest_of(loaded.file.text.as_bytes()),
        overrides: args
            .set
            .iter()
            .map(|o| format!("{}={}", o.name, o.value))
            .collect(),
    };
    let run_dir = open_run_dir(&args.runs_dir, info, args.resume)?;
    eprintln!("run {} in {}", run_dir.info.run_id, run_dir.root.display());
    let display = Arc::new(Display::new(format));
    let stop = StopSignal::new();
    let outcome = runtime.block_on(async {
        watch_ctrl_c(stop.clone());
        let runner = Runner::new(
            pipeline,
            transport,
            display,
            Arc::new(run_dir),
            options,
            stop,
        )?;
        runner.run().await
    });
    if let Some(r) = &recorder {
        r.sync()?;
    }
    match outcome {
        Ok(reports) => {
            if let Some(last) = reports.last() {
                eprint!("\n{}", summary_table(last));
            }
            eprintln!("{} cycle(s) done", reports.len());
            if let (Some(rec), Some(dir)) = (recording.as_mut(), &args.record) {
                rec.cycles_run = digests(&reports);
                write_recording(dir, rec)?;
                eprintln!(
                    "recorded into {} (replay with `gradline replay {}`)",
                    dir.display(),
                    dir.display()
                );
            }
            Ok(())
        }
        Err(error) => {
            if let RunError::Stage { report, .. } = &error {
                eprint!("\n{}", summary_table(report));
            }
            Err(RunFailure::Failed(failure_message(error)))
        }
    }
}

/// Every stage's answer to whether it can start; an error listing those that cannot.
pub fn ready(
    pipeline: &gradline_engine::Pipeline,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    let not_ready = gradline_engine::preflight::check(pipeline, env);
    if not_ready.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = not_ready
        .iter()
        .map(|n| format!("  stage `{}`: {}", n.stage, n.message))
        .collect();
    anyhow::bail!(
        "`{}` cannot start:\n{}",
        pipeline.spec.name.value,
        lines.join("\n")
    )
}

/// Why a run stopped, for people: a failed stage with its attempt and every cause.
pub fn failure_message(error: RunError) -> anyhow::Error {
    match error {
        RunError::Stage {
            stage,
            item,
            attempt,
            error,
            ..
        } => {
            let item = item.map(|i| format!(" item {i}")).unwrap_or_default();
            let mut message = format!(
                "stage `{stage}`{item} failed on attempt {attempt}: {}",
                error.message
            );
            for cause in &error.causes {
                message.push_str(&format!("\n  caused by: {cause}"));
            }
            anyhow::anyhow!(message)
        }
        other => other.into(),
    }
}

fn open_run_dir(base: &Path, info: RunInfo, resume: bool) -> Result<RunDir> {
    if resume {
        match RunDir::latest(base, &info.pipeline)? {
            Some(dir) if dir.info.file_digest == info.file_digest => return Ok(dir),
            Some(dir) => {
                eprintln!(
                    "the pipeline changed since run {}: its finished stages are reused only where their keys match",
                    dir.info.run_id
                );
                return Ok(dir);
            }
            None => eprintln!(
                "nothing to resume for `{}`: starting a new run",
                info.pipeline
            ),
        }
    }
    RunDir::create(base, info)
        .with_context(|| format!("cannot create a run folder under {}", base.display()))
}

/// First Ctrl-C: finish this cycle, then stop. Second: cancel now.
fn watch_ctrl_c(stop: StopSignal) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\nstopping after this cycle (Ctrl-C again to cancel now)");
            stop.stop_after_cycle();
        }
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ncancelling");
            stop.stop_now();
        }
    });
}

fn digests(reports: &[CycleReport]) -> Vec<CycleDigests> {
    reports
        .iter()
        .map(|r| CycleDigests {
            cycle: r.cycle,
            window: r.window,
            outputs: r.output_digests.clone(),
        })
        .collect()
}

const RECORDING_FILE: &str = "run.json";

fn write_recording(dir: &Path, recording: &Recording) -> Result<()> {
    let text = serde_json::to_string_pretty(recording)?;
    std::fs::write(dir.join(RECORDING_FILE), text)
        .with_context(|| format!("cannot write {}", dir.join(RECORDING_FILE).display()))
}

/// Re-runs a recording offline and checks every output digest.
pub fn replay(dir: &Path, registry: &Registry, log_format: LogFormat) -> Result<(), RunFailure> {
    let path = dir.join(RECORDING_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let recording: Recording = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a recording", path.display()))?;
    let overrides: Vec<Override> = recording
        .overrides
        .iter()
        .map(|o| o.parse())
        .collect::<Result<_, String>>()
        .map_err(anyhow::Error::msg)?;
    let loaded = load(&recording.file, &recording.text, registry, &overrides);
    if loaded.has_errors() {
        eprintln!("{}", loaded.render());
        return Err(RunFailure::Invalid);
    }
    let Some(pipeline) = loaded.pipeline else {
        return Err(RunFailure::Invalid);
    };
    let format = log_format.resolve();
    init_tracing(format);
    let transport: Arc<dyn Transport> =
        Arc::new(Replayer::open(dir).context("cannot open the tape")?);
    let runs = std::env::temp_dir().join(format!("gradline-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runs);
    let info = RunInfo {
        run_id: String::new(),
        pipeline: pipeline.spec.name.value.clone(),
        file: recording.file.clone(),
        file_digest: digest_of(recording.text.as_bytes()),
        overrides: recording.overrides.clone(),
    };
    let run_dir = RunDir::create(&runs, info)?;
    let options = RunOptions {
        jobs: recording.jobs,
        cycles: Some(recording.cycles_run.len() as u64),
        window: Duration::from_millis(recording.window_ms),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let display = Arc::new(Display::new(format));
    let reports = runtime.block_on(async {
        let runner = Runner::new(
            Arc::new(pipeline),
            transport,
            display,
            Arc::new(run_dir),
            options,
            StopSignal::new(),
        )?;
        runner.run().await
    });
    let _ = std::fs::remove_dir_all(&runs);
    let replayed = digests(&reports?);
    let mut mismatches = Vec::new();
    for (want, got) in recording.cycles_run.iter().zip(&replayed) {
        for (stage, digest) in &want.outputs {
            match got.outputs.get(stage) {
                Some(d) if d == digest => {}
                Some(d) => mismatches.push(format!(
                    "cycle {} stage `{stage}`: recorded {digest}, replayed {d}",
                    want.cycle
                )),
                None => mismatches.push(format!(
                    "cycle {} stage `{stage}`: recorded {digest}, not produced",
                    want.cycle
                )),
            }
        }
    }
    if replayed.len() != recording.cycles_run.len() {
        mismatches.push(format!(
            "recorded {} cycles, replayed {}",
            recording.cycles_run.len(),
            replayed.len()
        ));
    }
    if !mismatches.is_empty() {
        let message = format!(
            "replay differs from the recording:\n  {}",
            mismatches.join("\n  ")
        );
        return Err(RunFailure::Failed(anyhow::anyhow!(message)));
    }
    let outputs: usize = replayed.iter().map(|c| c.outputs.len()).sum();
    println!(
        "replay matches: {} cycle(s), {outputs} stage output digests identical",
        replayed.len()
    );
    Ok(())
}
