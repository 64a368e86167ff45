//! `gradline up DIR`: a whole network in one process. Every pipeline in DIR is an ordinary
//! run with its own keys and uid, on the embedded store, hub and ledger inside a fresh
//! network folder. The ledger's clock is held and moved on one window per cycle: setup
//! pipelines (`trigger: once`) run first, then each cycle the orchestrator (if any), the
//! miners one after another in uid order, then the validator (and any other role). A table
//! per cycle shows what each miner did and earned; at the end a report (HTML with SVG plots,
//! and JSON) is written into the network folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use gradline_engine::effects::{CallScope, Effects, Transport};
use gradline_engine::expr::Val;
use gradline_engine::journal::{RunDir, RunInfo};
use gradline_engine::runtime::{ArtifactRef, digest_of};
use gradline_engine::schedule::{
    CycleReport, Event, Observer, Progress, RunError, RunOptions, Runner, StopSignal,
};
use gradline_engine::spec::{Role, Trigger};
use gradline_engine::{Override, Pipeline, Registry, load};
use gradline_stages::live::local_chain::hold_block;
use gradline_stages::{chain, live};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::display::{LogFormat, init_tracing};
use crate::report::{CycleRow, MinerRow, RoleBytes, RoleInfo, Summary};
use crate::run::RunFailure;

#[derive(clap::Args)]
pub struct UpArgs {
    /// A folder of pipelines that make one network (e.g. `pipelines/local`).
    pub dir: PathBuf,
    /// How many cycles (windows) to run.
    #[arg(long, default_value_t = 10)]
    pub cycles: u64,
    /// How many miners, the dishonest ones included (every miner pipeline other than
    /// `miner.yaml` runs once; `miner.yaml` fills the rest).
    #[arg(long, default_value_t = 3)]
    pub miners: usize,
    /// The network folder (store, hub, ledger, runs, report); default: a new folder under
    /// `.gradline/networks/`.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// `auto`: progress bars on a terminal; `text`: the tables only; `json`: one line per
    /// cycle.
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
}

/// What a role is in the network.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// `trigger: once`: runs before the first cycle.
    Setup,
    /// Orchestrators: hand out the cycle's work before the miners run.
    Lead,
    Miner,
    /// Validators and any other role: run after the miners each cycle.
    Judge,
}

/// One pipeline file of the network, as loaded.
struct Member {
    file: PathBuf,
    text: String,
    pipeline: Pipeline,
    part: Part,
}

/// One running role: a pipeline with its own keys, uid, run folder and place in its run.
struct Node {
    label: String,
    uid: Option<i64>,
    part: Part,
    pipeline: String,
    runner: Runner,
    progress: Progress,
    run_dir: Arc<RunDir>,
    transport: Arc<dyn Transport>,
    netuid: Option<u16>,
}

pub fn up(args: UpArgs, registry: &Registry) -> Result<(), RunFailure> {
    let members = load_members(&args.dir, registry)?;
    let format = args.log_format.resolve();
    init_tracing(format);
    let roster = roster(&members, args.miners)?;
    let network = network_folder(args.out.as_deref())?;
    std::env::set_current_dir(&network)
        .with_context(|| format!("cannot enter {}", network.display()))?;
    eprintln!("network folder: {}", network.display());
    let blocks = hold_ledgers(&members)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let view = Arc::new(View::new(format));
    let mut nodes = Vec::new();
    for (label, uid, member) in &roster {
        let node = runtime
            .block_on(start_node(label, *uid, member, registry, view.clone()))
            .with_context(|| format!("cannot start {label}"))?;
        nodes.push(node);
    }
    print_roster(&nodes);
    let mut summary = Summary {
        pipelines: args.dir.display().to_string(),
        network: network.display().to_string(),
        roles: nodes
            .iter()
            .map(|n| RoleInfo {
                label: n.label.clone(),
                uid: n.uid,
                pipeline: n.pipeline.clone(),
                run: n.run_dir.root.display().to_string(),
            })
            .collect(),
        cycles: Vec::new(),
    };
    let outcome = runtime.block_on(drive(&mut nodes, &mut summary, args.cycles, blocks, &view));
    view.clear();
    let (html, json) = crate::report::write(&network, &summary)?;
    println!("\nreport: {}", network.join(html).display());
    println!("summary: {}", network.join(json).display());
    outcome.map_err(RunFailure::Failed)
}

/// Setup, registration, then the cycles; stops at the first failure of a non-miner role.
async fn drive(
    nodes: &mut [Node],
    summary: &mut Summary,
    cycles: u64,
    blocks: Option<(Vec<PathBuf>, u64)>,
    view: &View,
) -> Result<()> {
    let hold = |window: u64| -> Result<()> {
        if let Some((ledgers, blocks)) = &blocks {
            for ledger in ledgers {
                hold_block(ledger, window * blocks)
                    .with_context(|| format!("cannot move the clock of {}", ledger.display()))?;
            }
        }
        Ok(())
    };
    hold(0)?;
    for node in nodes.iter_mut().filter(|n| n.part == Part::Setup) {
        let report = node
            .runner
            .step(&mut node.progress)
            .await
            .map_err(|e| failure(&node.label, e))?;
        view.line(format!(
            "{} done in {:.1}s",
            node.label,
            report.duration_ms as f64 / 1000.0
        ));
    }
    register(nodes).await?;
    let started = Instant::now();
    for window in 1..=cycles {
        hold(window)?;
        let cycle_started = Instant::now();
        let mut reports: Vec<(usize, Result<CycleReport, String>)> = Vec::new();
        for part in [Part::Lead, Part::Miner, Part::Judge] {
            for (i, node) in nodes.iter_mut().enumerate().filter(|(_, n)| n.part == part) {
                let outcome = node.runner.step(&mut node.progress).await;
                match outcome {
                    Ok(report) => reports.push((i, Ok(report))),
                    Err(e) if part == Part::Miner => {
                        reports.push((i, Err(failure(&node.label, e).to_string())))
                    }
                    Err(e) => {
                        let error = failure(&node.label, e);
                        summary.cycles.push(cycle_row(
                            nodes,
                            &reports,
                            window,
                            cycle_started.elapsed(),
                        ));
                        return Err(error);
                    }
                }
            }
        }
        let row = cycle_row(nodes, &reports, window, cycle_started.elapsed());
        let previous = summary.cycles.last().and_then(|c| c.validation_loss);
        view.table(&row, previous);
        summary.cycles.push(row);
    }
    view.line(format!(
        "{cycles} cycle(s) in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn failure(label: &str, error: RunError) -> anyhow::Error {
    anyhow!("{label}: {:#}", crate::run::failure_message(error))
}

/// Registers every role in uid order — orchestrator, validator, miners (a role whose setup
/// already committed is registered by then) — and checks each got the uid it was given.
async fn register(nodes: &[Node]) -> Result<()> {
    for node in nodes.iter().filter(|n| n.part != Part::Setup) {
        let Some(netuid) = node.netuid else {
            continue;
        };
        let effects = Effects::new(node.transport.clone(), CallScope::scheduler(0));
        let registered = chain::register(&effects, netuid)
            .await
            .map_err(|e| anyhow!("{}: registration failed: {}", node.label, e.message))?;
        if let Some(uid) = node.uid
            && i64::from(registered.uid) != uid
        {
            bail!(
                "{} was meant to be uid {uid} but the ledger gave it uid {}: the network folder must start empty",
                node.label,
                registered.uid
            );
        }
    }
    Ok(())
}

/// Loads every pipeline in the folder, printing all findings; fails on any error.
fn load_members(dir: &Path, registry: &Registry) -> Result<Vec<Member>, RunFailure> {
    let files = crate::expand(&[dir.to_path_buf()]).map_err(|e| match e {
        crate::Failure::Usage(message) => RunFailure::Failed(anyhow!(message)),
        crate::Failure::Failed(error) => RunFailure::Failed(error),
        crate::Failure::Invalid => RunFailure::Invalid,
    })?;
    let mut members = Vec::new();
    let mut invalid = false;
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let loaded = load(&file.display().to_string(), &text, registry, &[]);
        if !loaded.diagnostics.is_empty() {
            eprintln!("{}", loaded.render());
        }
        let failed = loaded.has_errors();
        let Some(pipeline) = loaded.pipeline.filter(|_| !failed) else {
            invalid = true;
            continue;
        };
        let part = match (&pipeline.spec.trigger.value, pipeline.spec.role.value) {
            (Trigger::Once, _) => Part::Setup,
            (_, Role::Miner) => Part::Miner,
            (_, Role::Orchestrator) => Part::Lead,
            _ => Part::Judge,
        };
        members.push(Member {
            file: std::fs::canonicalize(&file).unwrap_or(file),
            text,
            pipeline,
            part,
        });
    }
    if invalid {
        return Err(RunFailure::Invalid);
    }
    if !members.iter().any(|m| m.part == Part::Miner) {
        return Err(RunFailure::Failed(anyhow!(
            "{} holds no miner that runs each window: `gradline up` runs training networks; run these pipelines one by one with `gradline run`",
            dir.display()
        )));
    }
    if !members
        .iter()
        .any(|m| matches!(m.part, Part::Lead | Part::Judge))
    {
        return Err(RunFailure::Failed(anyhow!(
            "{} holds no validator (a pipeline with a role other than miner, not `trigger: once`)",
            dir.display()
        )));
    }
    Ok(members)
}

/// Who runs, under which label and uid: setup first, then the orchestrator and the
/// validator (each role on a chain takes the next uid, from 0), then the honest miners
/// (`miner.yaml`, or the first miner pipeline), then every other miner pipeline once.
fn roster(members: &[Member], miners: usize) -> Result<Vec<(String, Option<i64>, &Member)>> {
    let miner_files: Vec<&Member> = members.iter().filter(|m| m.part == Part::Miner).collect();
    let honest = miner_files
        .iter()
        .position(|m| m.file.file_stem().is_some_and(|s| s == "miner"))
        .unwrap_or(0);
    let mut uid = 0i64;
    let mut out: Vec<(String, Option<i64>, &Member)> = Vec::new();
    for part in [Part::Setup, Part::Lead, Part::Judge] {
        for member in members.iter().filter(|m| m.part == part) {
            let on_chain = part != Part::Setup && member.pipeline.spec.resources.chain.is_some();
            out.push((
                member.pipeline.spec.name.value.clone(),
                on_chain.then_some(uid),
                member,
            ));
            uid += i64::from(on_chain);
        }
    }
    if miner_files.is_empty() {
        return Ok(out);
    }
    let others: Vec<&Member> = miner_files
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != honest)
        .map(|(_, m)| *m)
        .collect();
    if miners < others.len() + 1 {
        bail!(
            "--miners {miners} is too few: {} has {} miner pipeline(s), each of which runs at least once",
            members[0]
                .file
                .parent()
                .map_or_else(String::new, |p| p.display().to_string()),
            others.len() + 1
        );
    }
    for _ in 0..miners - others.len() {
        out.push((format!("miner {uid}"), Some(uid), miner_files[honest]));
        uid += 1;
    }
    for other in others {
        let name = other
            .file
            .file_stem()
            .map_or_else(|| "miner".into(), |s| s.to_string_lossy().into_owned());
        out.push((format!("{name} {uid}"), Some(uid), other));
        uid += 1;
    }
    Ok(out)
}

/// A fresh folder for the network's store, hub, ledger, runs and report.
fn network_folder(out: Option<&Path>) -> Result<PathBuf> {
    let folder = match out {
        Some(dir) => dir.to_path_buf(),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            PathBuf::from(".gradline/networks").join(format!("up-{stamp}"))
        }
    };
    if folder.join(".gradline").exists() {
        bail!(
            "{} already holds a network: give `--out` a new folder",
            folder.display()
        );
    }
    std::fs::create_dir_all(&folder)
        .with_context(|| format!("cannot create {}", folder.display()))?;
    std::fs::canonicalize(&folder).with_context(|| format!("cannot resolve {}", folder.display()))
}

/// Holds the clock of every embedded ledger the network uses, and says how many blocks a
/// window has (the validator's `window_blocks`, default 10).
fn hold_ledgers(members: &[Member]) -> Result<Option<(Vec<PathBuf>, u64)>> {
    let env = gradline_engine::preflight::process_env;
    let mut ledgers = Vec::new();
    let mut blocks = gradline_engine::preflight::DEFAULT_WINDOW_BLOCKS;
    for member in members {
        let Some(chain) = &member.pipeline.spec.resources.chain else {
            continue;
        };
        let url: String =
            gradline_engine::preflight::resolve(&member.pipeline, &chain.url, &env)
                .map_err(|e| anyhow!("{}: resources.chain.url: {e}", member.file.display()))?;
        let Some(dir) = url.strip_prefix("local://") else {
            bail!(
                "{}: `gradline up` runs on the embedded ledger (`local://DIR`); run each role with `gradline run` to use {url}",
                member.file.display()
            );
        };
        if matches!(member.part, Part::Lead | Part::Judge)
            && let Some(n) = gradline_engine::preflight::window_blocks(&member.pipeline, &env)
                .map_err(|e| anyhow!("{}: {e}", member.file.display()))?
        {
            blocks = n;
        }
        let dir = PathBuf::from(dir);
        if !ledgers.contains(&dir) {
            ledgers.push(dir);
        }
    }
    Ok((!ledgers.is_empty()).then_some((ledgers, blocks)))
}

async fn start_node(
    label: &str,
    uid: Option<i64>,
    member: &Member,
    registry: &Registry,
    view: Arc<View>,
) -> Result<Node> {
    let overrides: Vec<Override> = match uid.filter(|_| member.part == Part::Miner) {
        Some(uid) if member.pipeline.param("uid").is_some() => vec![Override {
            name: "uid".into(),
            value: uid.to_string(),
        }],
        Some(_) => bail!(
            "{} has no `uid` param: every miner of a network needs its own uid",
            member.file.display()
        ),
        None => Vec::new(),
    };
    let name = member.file.display().to_string();
    let loaded = load(&name, &member.text, registry, &overrides);
    if loaded.has_errors() {
        bail!("{}", loaded.render());
    }
    let pipeline = Arc::new(
        loaded
            .pipeline
            .ok_or_else(|| anyhow!("{name} did not load"))?,
    );
    let env = gradline_engine::preflight::process_env;
    crate::run::ready(&pipeline, &env)?;
    let live = live::connect(&pipeline, &env, &live::LiveOptions::from_env(&env))
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let transport: Arc<dyn Transport> = Arc::new(live);
    let info = RunInfo {
        run_id: String::new(),
        pipeline: pipeline.spec.name.value.clone(),
        file: name.clone(),
        file_digest: digest_of(member.text.as_bytes()),
        overrides: overrides
            .iter()
            .map(|o| format!("{}={}", o.name, o.value))
            .collect(),
    };
    let run_dir = Arc::new(
        RunDir::create(Path::new(".gradline/runs"), info).context("cannot create a run folder")?,
    );
    let netuid = match &pipeline.spec.resources.chain {
        Some(chain) => Some(
            gradline_engine::preflight::resolve::<u16>(&pipeline, &chain.netuid, &env)
                .map_err(|e| anyhow!("resources.chain.netuid: {e}"))?,
        ),
        None => None,
    };
    let observer = Arc::new(NodeView {
        label: label.to_owned(),
        view,
        running: Mutex::new(BTreeMap::new()),
    });
    let runner = Runner::new(
        pipeline.clone(),
        transport.clone(),
        observer,
        run_dir.clone(),
        RunOptions::default(),
        StopSignal::new(),
    )?;
    let progress = runner
        .start()?
        .ok_or_else(|| anyhow!("{label}: its run already finished"))?;
    Ok(Node {
        label: label.to_owned(),
        uid,
        part: member.part,
        pipeline: pipeline.spec.name.value.clone(),
        runner,
        progress,
        run_dir,
        transport,
        netuid,
    })
}

fn print_roster(nodes: &[Node]) {
    let role = nodes
        .iter()
        .map(|n| n.label.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let pipeline = nodes.iter().map(|n| n.pipeline.len()).max().unwrap_or(0);
    println!(
        "{:role$} {:>4}  {:pipeline$}  run folder",
        "role", "uid", "pipeline"
    );
    for node in nodes {
        let uid = node.uid.map_or_else(|| "-".into(), |uid| uid.to_string());
        println!(
            "{:role$} {:>4}  {:pipeline$}  {}",
            node.label,
            uid,
            node.pipeline,
            node.run_dir.root.display()
        );
    }
    println!();
}

/// One cycle's row: what each miner did and what the validator made of it.
fn cycle_row(
    nodes: &[Node],
    reports: &[(usize, Result<CycleReport, String>)],
    window: u64,
    took: Duration,
) -> CycleRow {
    let judged = reports
        .iter()
        .filter(|(i, _)| nodes[*i].part == Part::Judge)
        .find_map(|(i, r)| r.as_ref().ok().map(|r| (&nodes[*i], r)));
    let verdicts = judged
        .map(|(node, report)| verdicts_of(node, report))
        .unwrap_or_default();
    let weights = judged
        .map(|(node, report)| weights_of(node, report))
        .unwrap_or_default();
    let validation_loss = judged.and_then(|(_, report)| {
        stage_of_kind(report, "evaluate").and_then(|outputs| float(outputs, "loss"))
    });
    let merged = judged.and_then(|(_, report)| {
        stage_of_kind(report, "merge").and_then(|o| match o.get("merged") {
            Some(Val::Int(n)) => Some(*n),
            _ => None,
        })
    });
    let mut miners = Vec::new();
    let mut roles = Vec::new();
    for (i, outcome) in reports {
        let node = &nodes[*i];
        let (up, down) = match outcome {
            Ok(report) => bytes_moved(report),
            Err(_) => (0, 0),
        };
        roles.push(RoleBytes {
            label: node.label.clone(),
            up,
            down,
        });
        if node.part != Part::Miner {
            continue;
        }
        let uid = node.uid.unwrap_or(-1);
        let trained = outcome
            .as_ref()
            .ok()
            .and_then(|r| stage_of_kind(r, "train"));
        let verdict = match (outcome, verdicts.get(&uid)) {
            (Err(e), _) => format!("failed: {}", e.lines().next().unwrap_or_default()),
            (Ok(_), Some((_, v))) => v.clone(),
            (Ok(_), None) => "not judged".into(),
        };
        miners.push(MinerRow {
            uid,
            label: node.label.clone(),
            loss_before: trained.and_then(|o| float(o, "loss_before")),
            loss_after: trained.and_then(|o| float(o, "loss_after")),
            score: verdicts.get(&uid).map(|(score, _)| *score),
            // A judged miner left out of the weights set has none.
            weight: weights
                .get(&uid)
                .copied()
                .or_else(|| (!weights.is_empty()).then_some(0.0)),
            bytes_up: up,
            bytes_down: down,
            accepted: verdict == "accepted",
            verdict,
        });
    }
    CycleRow {
        cycle: window,
        window: window as i64,
        duration_ms: took.as_millis() as u64,
        validation_loss,
        merged,
        miners,
        roles,
    }
}

/// The outputs of the pipeline's last stage of a kind that finished this cycle.
fn stage_of_kind<'a>(report: &'a CycleReport, kind: &str) -> Option<&'a BTreeMap<String, Val>> {
    report
        .stages
        .iter()
        .rev()
        .filter(|s| s.kind == kind)
        .find_map(|s| match report.outputs.get(&s.stage) {
            Some(Val::Map(outputs)) => Some(outputs),
            _ => None,
        })
}

fn float(outputs: &BTreeMap<String, Val>, port: &str) -> Option<f64> {
    match outputs.get(port) {
        Some(Val::Float(f)) => Some(*f),
        Some(Val::Int(i)) => Some(*i as f64),
        _ => None,
    }
}

fn read_json(node: &Node, value: Option<&Val>) -> Option<serde_json::Value> {
    let Some(Val::Artifact(artifact)) = value else {
        return None;
    };
    let bytes = node.run_dir.objects.get(artifact as &ArtifactRef).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Per uid: the score and the verdict (`accepted`, or the first failed check and why), from
/// the last verify stage that judged miners.
fn verdicts_of(node: &Node, report: &CycleReport) -> BTreeMap<i64, (f64, String)> {
    let verdicts = report
        .stages
        .iter()
        .rev()
        .filter(|s| s.kind == "verify")
        .find_map(|s| match report.outputs.get(&s.stage) {
            Some(Val::Map(outputs)) => read_json(node, outputs.get("verdicts")),
            _ => None,
        });
    let Some(serde_json::Value::Array(list)) = verdicts else {
        return BTreeMap::new();
    };
    list.iter()
        .filter_map(|signed| {
            let body = &signed["body"];
            let uid = body["miner_uid"].as_i64()?;
            let score = body["score"].as_f64().unwrap_or(0.0);
            let failed = body["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["passed"] == serde_json::Value::Bool(false));
            let verdict = match failed {
                None => "accepted".to_owned(),
                Some(check) => format!(
                    "{}: {}",
                    check["name"].as_str().unwrap_or("check"),
                    check["reason"].as_str().unwrap_or("failed")
                ),
            };
            Some((uid, (score, verdict)))
        })
        .collect()
}

/// Per uid: the share of weight the validator set this cycle.
fn weights_of(node: &Node, report: &CycleReport) -> BTreeMap<i64, f64> {
    let set = report
        .stages
        .iter()
        .filter(|s| s.kind == "commit")
        .find_map(|s| match report.outputs.get(&s.stage) {
            Some(Val::Map(outputs)) => read_json(node, outputs.get("weights")),
            _ => None,
        });
    let Some(set) = set else {
        return BTreeMap::new();
    };
    let uids: Vec<i64> = serde_json::from_value(set["uids"].clone()).unwrap_or_default();
    let values: Vec<f64> = serde_json::from_value(set["weights"].clone()).unwrap_or_default();
    let total: f64 = values.iter().sum();
    uids.into_iter()
        .zip(values)
        .map(|(uid, w)| (uid, if total > 0.0 { w / total } else { 0.0 }))
        .collect()
}

/// Bytes a role sent out (publish) and fetched (download) this cycle.
fn bytes_moved(report: &CycleReport) -> (u64, u64) {
    report
        .stages
        .iter()
        .fold((0, 0), |(up, down), s| match s.kind.as_str() {
            "publish" => (up + s.bytes_out, down),
            "download" => (up, down + s.bytes_in),
            _ => (up, down),
        })
}

/// What the user sees: progress bars for running stages on a terminal, and a table per
/// cycle.
struct View {
    format: LogFormat,
    bars: MultiProgress,
}

impl View {
    fn new(format: LogFormat) -> Self {
        Self {
            format,
            bars: MultiProgress::new(),
        }
    }

    fn line(&self, text: String) {
        match self.format {
            LogFormat::Json => {}
            LogFormat::Auto => {
                let _ = self.bars.println(text);
            }
            LogFormat::Text => println!("{text}"),
        }
    }

    fn clear(&self) {
        let _ = self.bars.clear();
    }

    fn table(&self, row: &CycleRow, previous_loss: Option<f64>) {
        if self.format == LogFormat::Json {
            if let Ok(line) = serde_json::to_string(row) {
                println!("{line}");
            }
            return;
        }
        self.line(crate::report::cycle_table(row, previous_loss));
    }
}

/// One role's events, shown as a progress bar per running stage.
struct NodeView {
    label: String,
    view: Arc<View>,
    running: Mutex<BTreeMap<(String, Option<usize>), ProgressBar>>,
}

impl Observer for NodeView {
    fn event(&self, event: &Event) {
        match event {
            Event::UnitRetrying {
                stage,
                attempt,
                error,
                delay_ms,
                ..
            } => self.view.line(format!(
                "  ! {} {stage}: attempt {attempt} failed: {error}; retrying in {:.1}s",
                self.label,
                *delay_ms as f64 / 1000.0
            )),
            _ if self.view.format != LogFormat::Auto => {}
            Event::UnitStarted { stage, item, .. } => {
                let Ok(mut running) = self.running.lock() else {
                    return;
                };
                running.entry((stage.clone(), *item)).or_insert_with(|| {
                    let bar = self.view.bars.add(ProgressBar::new(0));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "  {spinner} {prefix:28} {elapsed:>4} {wide_bar} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.enable_steady_tick(Duration::from_millis(120));
                    bar.set_prefix(format!(
                        "{} · {}",
                        self.label,
                        crate::display::Display::unit(stage, *item)
                    ));
                    bar
                });
            }
            Event::Progress {
                stage,
                item,
                done,
                total,
                message,
            } => {
                let Ok(running) = self.running.lock() else {
                    return;
                };
                if let Some(bar) = running.get(&(stage.clone(), *item)) {
                    bar.set_length(*total);
                    bar.set_position(*done);
                    bar.set_message(message.clone());
                }
            }
            Event::UnitFinished { stage, item, .. } => {
                let Ok(mut running) = self.running.lock() else {
                    return;
                };
                if let Some(bar) = running.remove(&(stage.clone(), *item)) {
                    bar.finish_and_clear();
                    self.view.bars.remove(&bar);
                }
            }
            _ => {}
        }
    }
}
