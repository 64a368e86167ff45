//! What a run shows: a live view on a terminal, log lines elsewhere (text or JSON), and a
//! summary table at the end.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use gradline_engine::schedule::{CycleReport, Event, Observer, UnitStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// A live view on a terminal, text lines otherwise.
    Auto,
    Text,
    Json,
}

impl LogFormat {
    pub fn resolve(self) -> LogFormat {
        match self {
            LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Auto,
            LogFormat::Auto => LogFormat::Text,
            other => other,
        }
    }
}

/// Sends tracing output (warnings, retries) to stderr in the chosen format.
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GRADLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        _ => builder.compact().without_time().try_init(),
    };
}

/// Turns engine events into what the user sees.
pub struct Display {
    format: LogFormat,
    bars: MultiProgress,
    running: Mutex<BTreeMap<(String, Option<usize>), ProgressBar>>,
}

impl Display {
    pub fn new(format: LogFormat) -> Self {
        Self {
            format,
            bars: MultiProgress::new(),
            running: Mutex::new(BTreeMap::new()),
        }
    }

    /// A unit's name: the stage, with the item of a fan-out.
    pub fn unit(stage: &str, item: Option<usize>) -> String {
        match item {
            Some(i) => format!("{stage}[{i}]"),
            None => stage.to_owned(),
        }
    }

    fn live(&self, event: &Event) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        match event {
            Event::CycleStarted { cycle, window } => {
                let _ = self
                    .bars
                    .println(format!("cycle {cycle} (window {window})"));
            }
            Event::UnitStarted {
                stage,
                item,
                attempt,
            } => {
                let bar = running.entry((stage.clone(), *item)).or_insert_with(|| {
                    let bar = self.bars.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("  {spinner} {prefix:24} {elapsed:>4} {msg}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar.set_prefix(Self::unit(stage, *item));
                    bar
                });
                if *attempt > 1 {
                    bar.set_message(format!("attempt {attempt}"));
                }
            }
            Event::Progress {
                stage,
                item,
                done,
                total,
                message,
            } => {
                if let Some(bar) = running.get(&(stage.clone(), *item)) {
                    let pct = if *total > 0 { done * 100 / total } else { 0 };
                    bar.set_message(format!("{message} {pct}%"));
                }
            }
            Event::UnitRetrying {
                stage,
                item,
                attempt,
                error,
                delay_ms,
            } => {
                let _ = self.bars.println(format!(
                    "  ! {} attempt {attempt} failed: {error}; retrying in {:.1}s",
                    Self::unit(stage, *item),
                    *delay_ms as f64 / 1000.0
                ));
            }
            Event::UnitFinished {
                stage,
                item,
                status,
                duration_ms,
                cached,
                ..
            } => {
                if let Some(bar) = running.remove(&(stage.clone(), *item)) {
                    bar.finish_and_clear();
                    self.bars.remove(&bar);
                }
                let mark = match (status, cached) {
                    (_, true) => "=",
                    (UnitStatus::Done, _) => "✓",
                    (UnitStatus::Skipped, _) => "-",
                    (UnitStatus::Failed, _) => "✗",
                };
                let _ = self.bars.println(format!(
                    "  {mark} {:24} {:>6} ms",
                    Self::unit(stage, *item),
                    duration_ms
                ));
            }
            Event::ItemDropped {
                stage,
                item,
                reason,
            } => {
                let _ = self.bars.println(format!(
                    "  - {} dropped: {reason}",
                    Self::unit(stage, Some(*item))
                ));
            }
            Event::CycleFinished {
                cycle, duration_ms, ..
            } => {
                let _ = self.bars.println(format!(
                    "cycle {cycle} finished in {:.1}s",
                    *duration_ms as f64 / 1000.0
                ));
            }
        }
    }

    fn text(&self, event: &Event) {
        let line = match event {
            Event::CycleStarted { cycle, window } => {
                format!("cycle {cycle} started (window {window})")
            }
            Event::UnitStarted {
                stage,
                item,
                attempt,
            } => format!("{} started (attempt {attempt})", Self::unit(stage, *item)),
            Event::UnitRetrying {
                stage,
                item,
                attempt,
                error,
                delay_ms,
            } => {
                format!(
                    "{} attempt {attempt} failed: {error}; retrying in {delay_ms} ms",
                    Self::unit(stage, *item)
                )
            }
            Event::UnitFinished {
                stage,
                item,
                status,
                attempts,
                duration_ms,
                cached,
            } => format!(
                "{} {:?} after {attempts} attempt(s), {duration_ms} ms{}",
                Self::unit(stage, *item),
                status,
                if *cached { " (cached)" } else { "" }
            )
            .to_lowercase(),
            Event::ItemDropped {
                stage,
                item,
                reason,
            } => format!("{} dropped: {reason}", Self::unit(stage, Some(*item))),
            Event::Progress { .. } => return,
            Event::CycleFinished {
                cycle, duration_ms, ..
            } => format!("cycle {cycle} finished in {duration_ms} ms"),
        };
        eprintln!("{line}");
    }
}

impl Observer for Display {
    fn event(&self, event: &Event) {
        match self.format {
            LogFormat::Auto => self.live(event),
            LogFormat::Text => self.text(event),
            LogFormat::Json => {
                if let Ok(line) = serde_json::to_string(event) {
                    println!("{line}");
                }
            }
        }
    }
}

/// The end-of-run table for one cycle.
pub fn summary_table(report: &CycleReport) -> String {
    let mut out = format!(
        "cycle {} (window {}), {:.1}s\n{:24} {:8} {:>8} {:>10} {:>10} {:>10} {:>6}\n",
        report.cycle,
        report.window,
        report.duration_ms as f64 / 1000.0,
        "stage",
        "status",
        "attempts",
        "duration",
        "bytes in",
        "bytes out",
        "cached"
    );
    for s in &report.stages {
        out.push_str(&format!(
            "{:24} {:8} {:>8} {:>8}ms {:>10} {:>10} {:>6}\n",
            s.stage,
            if s.status.is_empty() {
                "not run"
            } else {
                &s.status
            },
            s.attempts,
            s.duration_ms,
            human_bytes(s.bytes_in),
            human_bytes(s.bytes_out),
            if s.cached { "yes" } else { "" }
        ));
        for (item, reason) in &s.dropped {
            out.push_str(&format!("  dropped item {item}: {reason}\n"));
        }
        if let Some(reason) = &s.reason {
            out.push_str(&format!("  {reason}\n"));
        }
    }
    out
}

/// A byte count for people: B, KiB, MiB, GiB.
pub fn human_bytes(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n < 1 << 10 => format!("{n} B"),
        n if n < 1 << 20 => format!("{:.1} KiB", n as f64 / 1024.0),
        n if n < 1 << 30 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n => format!("{:.2} GiB", n as f64 / (1 << 30) as f64),
    }
}
