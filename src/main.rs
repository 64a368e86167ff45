//! The `gradline` command line: wires the engine to the stage kinds.

mod display;
mod inspect;
mod register;
mod report;
mod run;
mod serve;
mod up;

use clap::{Parser, Subcommand, ValueEnum};
use gradline_engine::{Loaded, Override, Registry, load, schema};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::display::LogFormat;
use crate::run::{RunArgs, RunFailure};

/// A declarative pipeline engine for decentralized training networks.
#[derive(Parser)]
#[command(name = "gradline", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check pipeline files; print every error at file:line:col.
    Validate {
        /// Pipeline files, or folders of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override a parameter, with type checking (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<Override>,
        /// `text` for people, `json` for editors and CI (one object per finding).
        #[arg(long, value_enum, default_value_t = DiagFormat::Text)]
        format: DiagFormat,
    },
    /// Dry run: resolved params, stage order and levels, every outside effect. Touches nothing.
    Plan {
        /// A pipeline file, or a folder (every pipeline in it: a whole network).
        file: PathBuf,
        /// Override a parameter, with type checking (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<Override>,
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
        /// Where run folders are: stages finished in the newest run's interrupted cycle are
        /// marked cached.
        #[arg(long, default_value = ".gradline/runs", value_name = "DIR")]
        runs_dir: PathBuf,
    },
    /// The stage graph, as Graphviz DOT or Mermaid.
    Graph {
        file: PathBuf,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<Override>,
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
    },
    /// Run a pipeline, cycle after cycle, as its trigger says.
    Run {
        file: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Register the pipeline's signing hotkey on its subnet and record its uid (on
    /// subtensor this is `burned_register`, which costs stake).
    Register {
        file: PathBuf,
        /// Override a parameter, with type checking (repeatable).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<Override>,
    },
    /// Run a whole network in one process: every pipeline in DIR (setup, miners, validator),
    /// each with its own keys and uid, on the embedded store, hub and ledger; a table per
    /// cycle, and an HTML report at the end.
    Up {
        #[command(flatten)]
        args: up::UpArgs,
    },
    /// Re-run a recorded run offline and check every output digest.
    Replay {
        /// The folder given to `run --record`.
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
        log_format: LogFormat,
    },
    /// Serve a validator's latest checkpoint over HTTP: `/get-checkpoint` (revision and
    /// digest in headers, byte ranges) and `/health`.
    Serve {
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// Training data: tokenize text into shards, or write the demo corpus.
    #[command(subcommand)]
    Data(DataCommand),
    /// Say what an artifact is (a gradient blob: codec, n, k, layout, values, checksum), or
    /// why it is not valid.
    Inspect { file: PathBuf },
    /// Print the JSON Schema of pipeline files (or of `plan --format json` with --plan).
    Schema {
        /// The schema of the JSON plan instead.
        #[arg(long)]
        plan: bool,
        /// Write `pipeline.schema.json` and `plan.schema.json` into this folder.
        #[arg(long, value_name = "DIR")]
        write: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Tokenize text files (one document each) into llm.c-format token shards with an index.
    Tokenize {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The folder the shards and `index.json` go to.
        #[arg(long)]
        out: PathBuf,
        /// `bytes` (the tiny model's) or `cl100k` (nanogpt-10m's).
        #[arg(long, default_value = "bytes")]
        tokenizer: gradline_stages::data::Tokenizer,
        /// Tokens per shard.
        #[arg(long, default_value_t = 1 << 20)]
        shard_tokens: usize,
    },
    /// Write the generated demo corpus (deterministic for a seed).
    Corpus {
        #[arg(long)]
        out: PathBuf,
        /// About how many bytes.
        #[arg(long, default_value_t = 100_000)]
        bytes: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DiagFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlanFormat {
    Text,
    Json,
    Dot,
    Mermaid,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Mermaid,
}

/// Why a command stopped: bad input or a failed run (exit 1), or bad usage (exit 2).
enum Failure {
    Invalid,
    Usage(String),
    Failed(anyhow::Error),
}

impl From<RunFailure> for Failure {
    fn from(f: RunFailure) -> Self {
        match f {
            RunFailure::Invalid => Failure::Invalid,
            RunFailure::Failed(e) => Failure::Failed(e),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let registry = gradline_stages::registry();
    match run(cli.command, &registry) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid) => ExitCode::from(1),
        Err(Failure::Failed(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command, registry: &Registry) -> Result<(), Failure> {
    match command {
        Command::Validate { files, set, format } => {
            let paths = expand(&files)?;
            let mut failed = false;
            for path in &paths {
                let loaded = load_file(path, registry, &set)?;
                failed |= loaded.has_errors();
                match format {
                    DiagFormat::Text => {
                        if !loaded.diagnostics.is_empty() {
                            eprintln!("{}", loaded.render());
                        }
                        if !loaded.has_errors() {
                            println!("ok  {}", loaded.file.name);
                        }
                    }
                    DiagFormat::Json => {
                        for d in &loaded.diagnostics {
                            println!("{}", d.to_json(&loaded.file));
                        }
                    }
                }
            }
            if failed {
                return Err(Failure::Invalid);
            }
            Ok(())
        }
        Command::Plan {
            file,
            set,
            format,
            runs_dir,
        } => {
            let paths = expand(std::slice::from_ref(&file))?;
            let mut plans = Vec::new();
            for path in &paths {
                let mut loaded = checked(load_file(path, registry, &set)?)?;
                let (Some(mut plan), Some(pipeline)) = (
                    loaded.plan(&gradline_engine::plan::process_env),
                    loaded.pipeline.take().map(std::sync::Arc::new),
                ) else {
                    return Err(Failure::Invalid);
                };
                plan.mark_cached(&cached_in_newest_run(&runs_dir, &pipeline));
                let text = match format {
                    PlanFormat::Text => plan.to_text(),
                    PlanFormat::Dot => plan.to_dot(&pipeline),
                    PlanFormat::Mermaid => plan.to_mermaid(&pipeline),
                    PlanFormat::Json => String::new(),
                };
                plans.push((plan, text));
            }
            match format {
                PlanFormat::Json if file.is_dir() => {
                    let all: Vec<_> = plans.iter().map(|(p, _)| p).collect();
                    println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
                }
                PlanFormat::Json => {
                    for (plan, _) in &plans {
                        println!("{}", serde_json::to_string_pretty(plan).unwrap_or_default());
                    }
                }
                _ => {
                    let texts: Vec<&str> = plans.iter().map(|(_, t)| t.as_str()).collect();
                    print!("{}", texts.join("\n"));
                }
            }
            Ok(())
        }
        Command::Graph { file, set, format } => {
            let loaded = checked(load_file(&file, registry, &set)?)?;
            let (Some(plan), Some(pipeline)) = (
                loaded.plan(&gradline_engine::plan::process_env),
                loaded.pipeline.as_ref(),
            ) else {
                return Err(Failure::Invalid);
            };
            match format {
                GraphFormat::Dot => print!("{}", plan.to_dot(pipeline)),
                GraphFormat::Mermaid => print!("{}", plan.to_mermaid(pipeline)),
            }
            Ok(())
        }
        Command::Run { file, args } => {
            let loaded = checked(load_file(&file, registry, &args.set)?)?;
            run::run(args, loaded).map_err(Failure::from)
        }
        Command::Up { args } => up::up(args, registry).map_err(Failure::from),
        Command::Register { file, set } => {
            let loaded = checked(load_file(&file, registry, &set)?)?;
            register::register(loaded).map_err(Failure::Failed)
        }
        Command::Replay { dir, log_format } => {
            run::replay(&dir, registry, log_format).map_err(Failure::from)
        }
        Command::Serve { args } => {
            let name = match &args.pipeline {
                Some(path) => checked(load_file(path, registry, &[])?)?
                    .pipeline
                    .map(|p| p.spec.name.value),
                None => None,
            };
            serve::serve(args, name).map_err(Failure::Failed)
        }
        Command::Data(DataCommand::Tokenize {
            files,
            out,
            tokenizer,
            shard_tokens,
        }) => {
            let index =
                gradline_stages::data::tokenize_files(&files, tokenizer, shard_tokens, &out)
                    .map_err(|e| Failure::Failed(e.into()))?;
            let tokens: u64 = index.shards.iter().map(|s| s.tokens).sum();
            println!(
                "{} shard(s), {tokens} tokens ({tokenizer}, vocabulary {}) in {}",
                index.shards.len(),
                index.vocab_size,
                out.display()
            );
            Ok(())
        }
        Command::Data(DataCommand::Corpus { out, bytes, seed }) => {
            let text = gradline_stages::data::demo_corpus(seed, bytes);
            std::fs::write(&out, &text)
                .map_err(|e| Failure::Usage(format!("cannot write {}: {e}", out.display())))?;
            println!("wrote {} bytes to {}", text.len(), out.display());
            Ok(())
        }
        Command::Inspect { file } => match inspect::inspect(&file) {
            Ok(text) => {
                print!("{text}");
                Ok(())
            }
            Err(why) => {
                eprintln!("error: {why}");
                Err(Failure::Invalid)
            }
        },
        Command::Schema { plan, write } => {
            let pipeline_schema = schema::pipeline_schema(registry);
            let plan_schema = schema::plan_schema();
            match write {
                Some(dir) => {
                    for (name, text) in [
                        ("pipeline.schema.json", &pipeline_schema),
                        ("plan.schema.json", &plan_schema),
                    ] {
                        let path = dir.join(name);
                        std::fs::write(&path, text).map_err(|e| {
                            Failure::Usage(format!("cannot write {}: {e}", path.display()))
                        })?;
                        println!("wrote {}", path.display());
                    }
                }
                None if plan => print!("{plan_schema}"),
                None => print!("{pipeline_schema}"),
            }
            Ok(())
        }
    }
}

/// Stages finished in the newest run's interrupted cycle, read without writing anything.
fn cached_in_newest_run(
    runs_dir: &Path,
    pipeline: &std::sync::Arc<gradline_engine::Pipeline>,
) -> std::collections::BTreeSet<String> {
    use gradline_engine::journal::{latest_folder, read_journal};
    let Some(folder) = latest_folder(runs_dir, &pipeline.spec.name) else {
        return Default::default();
    };
    let entries = read_journal(&folder).unwrap_or_default();
    gradline_engine::schedule::cached_stages(pipeline, &entries)
}

/// Prints the findings of a loaded file; fails when there are errors.
fn checked(loaded: Loaded) -> Result<Loaded, Failure> {
    if loaded.has_errors() {
        eprintln!("{}", loaded.render());
        return Err(Failure::Invalid);
    }
    Ok(loaded)
}

fn load_file(path: &Path, registry: &Registry, set: &[Override]) -> Result<Loaded, Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    let name = path.display().to_string();
    match String::from_utf8(bytes) {
        Ok(text) => Ok(load(&name, &text, registry, set)),
        Err(e) => {
            eprintln!(
                "error[encoding]: {name} is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            );
            Err(Failure::Invalid)
        }
    }
}

/// Files as given; folders expand to their `.yaml`/`.yml` files, sorted.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Failure> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(Failure::Usage(format!(
                    "{} holds no .yaml pipeline",
                    path.display()
                )));
            }
            out.extend(files);
        } else {
            out.push(path.clone());
        }
    }
    Ok(out)
}
