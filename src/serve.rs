//! `gradline serve`: a validator's checkpoint endpoint. It serves one file, or the newest
//! checkpoint a pipeline's runs have produced (looked up again on each request, so a new
//! cycle's checkpoint is served as soon as its stage finishes).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use gradline_engine::expr::Val;
use gradline_engine::journal::{ObjectStore, latest_folder, read_journal};
use gradline_stages::live::serve::{CheckpointSource, FixedFile, Served, router};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Serve the newest checkpoint of this pipeline's runs.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    pub pipeline: Option<PathBuf>,
    /// Serve this file instead.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The revision announced with `--file` (default: its blake3 digest).
    #[arg(long, requires = "file")]
    pub revision: Option<String>,
    /// Which output to serve, `STAGE.PORT` (default: the newest checkpoint any stage produced).
    #[arg(long, value_name = "STAGE.PORT")]
    pub output: Option<String>,
    /// Where run folders are.
    #[arg(long, default_value = ".gradline/runs", value_name = "DIR")]
    pub runs_dir: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

/// The newest checkpoint in a pipeline's newest run folder.
struct RunCheckpoints {
    runs_dir: PathBuf,
    pipeline: String,
    output: Option<(String, String)>,
    /// The journal's length when last read, and what it gave.
    cache: Mutex<Option<(PathBuf, u64, Option<Served>)>>,
}

impl CheckpointSource for RunCheckpoints {
    fn current(&self) -> Result<Option<Served>, String> {
        let Some(folder) = latest_folder(&self.runs_dir, &self.pipeline) else {
            return Ok(None);
        };
        let journal = folder.join("journal.jsonl");
        let length = std::fs::metadata(&journal).map_or(0, |m| m.len());
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| "cache lock poisoned".to_owned())?;
        if let Some((cached_folder, cached_length, served)) = cache.as_ref()
            && *cached_folder == folder
            && *cached_length == length
        {
            return Ok(served.clone());
        }
        let entries =
            read_journal(&folder).map_err(|e| format!("reading {}: {e}", journal.display()))?;
        let objects = ObjectStore::open(folder.join("objects")).map_err(|e| e.to_string())?;
        let newest = entries.iter().enumerate().rev().find_map(|(i, entry)| {
            let (port, artifact) = entry.outputs.iter().find_map(|(port, value)| match value {
                Val::Artifact(a) if a.ty == "checkpoint" => Some((port, a)),
                _ => None,
            })?;
            if let Some((stage, wanted)) = &self.output
                && (stage != &entry.stage || wanted != port)
            {
                return None;
            }
            Some((i, entry, artifact.clone()))
        });
        let served = newest.map(|(i, entry, artifact)| {
            let revision = entries[i..]
                .iter()
                .filter(|e| e.cycle == entry.cycle)
                .find_map(|e| {
                    let same = matches!(e.outputs.get("digest"), Some(Val::Str(d)) if *d == artifact.digest);
                    match (same, e.outputs.get("revision")) {
                        (true, Some(Val::Str(r))) => Some(r.clone()),
                        _ => None,
                    }
                })
                .unwrap_or_else(|| artifact.digest.clone());
            Served {
                path: objects.path(&artifact.digest),
                revision,
                digest: artifact.digest,
                size: artifact.size,
            }
        });
        *cache = Some((folder, length, served.clone()));
        Ok(served)
    }
}

pub fn serve(args: ServeArgs, pipeline_name: Option<String>) -> Result<()> {
    let source: Arc<dyn CheckpointSource> = match (&args.file, pipeline_name) {
        (Some(file), _) => Arc::new(
            FixedFile::open(file.clone(), args.revision.clone())
                .with_context(|| format!("cannot serve {}", file.display()))?,
        ),
        (None, Some(pipeline)) => {
            let output = match &args.output {
                Some(text) => Some(
                    text.split_once('.')
                        .map(|(s, p)| (s.to_owned(), p.to_owned()))
                        .with_context(|| format!("`--output {text}`: expected STAGE.PORT"))?,
                ),
                None => None,
            };
            Arc::new(RunCheckpoints {
                runs_dir: args.runs_dir.clone(),
                pipeline,
                output,
                cache: Mutex::new(None),
            })
        }
        (None, None) => anyhow::bail!("give a pipeline or `--file`"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        match source.current() {
            Ok(Some(served)) => eprintln!(
                "serving {} (revision {}, {} bytes)",
                served.digest, served.revision, served.size
            ),
            Ok(None) => {
                eprintln!("no checkpoint yet: /get-checkpoint answers 404 until a run produces one")
            }
            Err(e) => eprintln!("warning: {e}"),
        }
        println!("listening on http://{address}");
        axum::serve(listener, router(source))
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
            .context("the server stopped")
    })
}
