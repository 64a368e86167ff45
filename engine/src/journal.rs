//! The run folder: a journal of finished stages and a content-addressed object store, so a
//! killed run resumes without redoing finished work and never sees a half-written file.
//!
//! ```text
//! .gradline/runs/<run-id>/
//!   run.json        what was run (pipeline name and digest, parameters)
//!   journal.jsonl   one line per finished stage (or fan-out item), appended as it finishes
//!   objects/ab/cd…  artifacts by blake3 digest, written to a temporary file and renamed
//! ```
//!
//! Each journal line is written as soon as its stage finishes, so it survives the process
//! being killed; the file is fsynced at the end of every cycle (a machine crash can cost at
//! most the current cycle's entries, which are then redone). A torn last line is ignored.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::runtime::{ArtifactRef, Digest, Outputs, digest_of};

/// Artifacts stored by digest.
#[derive(Debug, Clone)]
pub struct ObjectStore {
    root: PathBuf,
}

impl ObjectStore {
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join("tmp"))?;
        Ok(Self { root })
    }

    pub fn path(&self, digest: &str) -> PathBuf {
        let (head, tail) = digest.split_at(2.min(digest.len()));
        self.root.join(head).join(tail)
    }

    /// Stores bytes; the object appears whole or not at all.
    pub fn put(&self, ty: &str, bytes: &[u8]) -> io::Result<ArtifactRef> {
        let digest = digest_of(bytes);
        let path = self.path(&digest);
        if !path.exists() {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = self
                .root
                .join("tmp")
                .join(format!("{digest}.{}.{n}", std::process::id()));
            let located =
                |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", tmp.display()));
            let mut file = File::create(&tmp).map_err(located)?;
            file.write_all(bytes).map_err(located)?;
            file.sync_all().map_err(located)?;
            fs::rename(&tmp, &path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        }
        Ok(ArtifactRef {
            ty: ty.to_owned(),
            digest,
            size: bytes.len() as u64,
        })
    }

    /// Reads an artifact back, checking its size and digest.
    pub fn get(&self, artifact: &ArtifactRef) -> io::Result<Vec<u8>> {
        let bytes = fs::read(self.path(&artifact.digest))?;
        if bytes.len() as u64 != artifact.size || digest_of(&bytes) != artifact.digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "object {} is corrupt (size or digest differs)",
                    artifact.digest
                ),
            ));
        }
        Ok(bytes)
    }

    pub fn contains(&self, artifact: &ArtifactRef) -> bool {
        fs::metadata(self.path(&artifact.digest)).is_ok_and(|m| m.len() == artifact.size)
    }
}

/// How a journalled unit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryStatus {
    Done,
    Skipped,
}

/// One finished stage, or one item of a fanned-out stage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub cycle: u64,
    pub window: i64,
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    /// blake3 of kind, kind version, resolved settings, input digests, window and item.
    pub key: Digest,
    pub status: EntryStatus,
    #[serde(default)]
    pub outputs: Outputs,
    pub attempts: u32,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What a run folder says about the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunInfo {
    pub run_id: String,
    pub pipeline: String,
    pub file: String,
    /// blake3 of the pipeline file's text.
    pub file_digest: Digest,
    pub overrides: Vec<String>,
}

/// An open run folder.
pub struct RunDir {
    pub root: PathBuf,
    pub info: RunInfo,
    pub objects: ObjectStore,
    journal: Mutex<File>,
}

impl RunDir {
    /// Starts a new run folder under `base` (usually `.gradline/runs`).
    pub fn create(base: &Path, info_without_id: RunInfo) -> io::Result<RunDir> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        fs::create_dir_all(base)?;
        // Claim a folder atomically: a run started in the same millisecond takes the next.
        let mut stamp = stamp;
        let (run_id, root) = loop {
            let run_id = format!("{}-{stamp}", sanitize(&info_without_id.pipeline));
            let root = base.join(&run_id);
            match fs::create_dir(&root) {
                Ok(()) => break (run_id, root),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => stamp += 1,
                Err(e) => return Err(e),
            }
        };
        let info = RunInfo {
            run_id,
            ..info_without_id
        };
        let text = serde_json::to_string_pretty(&info).map_err(io::Error::other)?;
        fs::write(root.join("run.json"), text)?;
        Self::open_at(root, info)
    }

    /// The newest run folder of a pipeline under `base`, to resume.
    pub fn latest(base: &Path, pipeline: &str) -> io::Result<Option<RunDir>> {
        match latest_folder(base, pipeline) {
            Some(root) => {
                let text = fs::read_to_string(root.join("run.json"))?;
                let info: RunInfo = serde_json::from_str(&text).map_err(io::Error::other)?;
                Self::open_at(root, info).map(Some)
            }
            None => Ok(None),
        }
    }

    fn open_at(root: PathBuf, info: RunInfo) -> io::Result<RunDir> {
        let objects = ObjectStore::open(root.join("objects"))?;
        let path = root.join("journal.jsonl");
        let mut journal = OpenOptions::new().create(true).append(true).open(&path)?;
        let text = fs::read(&path)?;
        if text.last().is_some_and(|&b| b != b'\n') {
            journal.write_all(b"\n")?;
        }
        Ok(RunDir {
            root,
            info,
            objects,
            journal: Mutex::new(journal),
        })
    }

    /// Appends one entry; it is on disk (in the OS's cache) when this returns.
    pub fn append(&self, entry: &JournalEntry) -> io::Result<()> {
        let mut line = serde_json::to_string(entry).map_err(io::Error::other)?;
        line.push('\n');
        let mut file = self
            .journal
            .lock()
            .map_err(|_| io::Error::other("journal lock poisoned"))?;
        file.write_all(line.as_bytes())
    }

    /// Flushes the journal to the disk.
    pub fn sync(&self) -> io::Result<()> {
        let file = self
            .journal
            .lock()
            .map_err(|_| io::Error::other("journal lock poisoned"))?;
        file.sync_data()
    }

    /// Every complete entry; a torn last line (a kill mid-write) is ignored.
    pub fn entries(&self) -> io::Result<Vec<JournalEntry>> {
        read_journal(&self.root)
    }
}

/// The newest run folder of a pipeline under `base`.
pub fn latest_folder(base: &Path, pipeline: &str) -> Option<PathBuf> {
    let prefix = format!("{}-", sanitize(pipeline));
    let entries = fs::read_dir(base).ok()?;
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let stamp: u128 = p
                .file_name()?
                .to_str()?
                .strip_prefix(&prefix)?
                .parse()
                .ok()?;
            Some((stamp, p))
        })
        .max()
        .map(|(_, p)| p)
}

/// Every complete entry of a run folder's journal, read without opening it for writing.
pub fn read_journal(root: &Path) -> io::Result<Vec<JournalEntry>> {
    let file = File::open(root.join("journal.jsonl"))?;
    let mut out = Vec::new();
    for line in io::BufReader::new(file).lines() {
        let line = line?;
        if let Ok(entry) = serde_json::from_str::<JournalEntry>(&line) {
            out.push(entry);
        }
    }
    Ok(out)
}

/// The stage name of the marker written when a cycle completes.
pub const CYCLE_DONE: &str = "$cycle";

impl RunDir {
    /// Marks a cycle complete (and flushes the journal to disk).
    pub fn cycle_done(&self, cycle: u64, window: i64) -> io::Result<()> {
        self.append(&JournalEntry {
            cycle,
            window,
            stage: CYCLE_DONE.into(),
            item: None,
            key: format!("cycle-{cycle}"),
            status: EntryStatus::Done,
            outputs: Outputs::new(),
            attempts: 0,
            duration_ms: 0,
            reason: None,
        })?;
        self.sync()
    }

    /// Where a resumed run picks up: the interrupted cycle and its window, or the cycle
    /// after the last complete one.
    pub fn resume_point(&self) -> io::Result<Option<ResumePoint>> {
        Ok(resume_point(&self.entries()?))
    }
}

/// Where a run with these journal entries would resume.
pub fn resume_point(entries: &[JournalEntry]) -> Option<ResumePoint> {
    let last = entries.iter().max_by_key(|e| e.cycle)?;
    let complete = entries
        .iter()
        .any(|e| e.cycle == last.cycle && e.stage == CYCLE_DONE);
    Some(match complete {
        true => ResumePoint {
            cycle: last.cycle + 1,
            window: None,
        },
        false => ResumePoint {
            cycle: last.cycle,
            window: Some(last.window),
        },
    })
}

/// Where a resumed run continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumePoint {
    pub cycle: u64,
    /// The interrupted cycle's window, reused so its finished stages keep their keys.
    pub window: Option<i64>,
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("gradline-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn objects_round_trip_and_detect_corruption() {
        let dir = temp("objects");
        let store = ObjectStore::open(&dir).unwrap();
        let a = store.put("blob", b"hello").unwrap();
        assert_eq!(store.get(&a).unwrap(), b"hello");
        assert!(store.contains(&a));
        fs::write(store.path(&a.digest), b"jello").unwrap();
        assert_eq!(
            store.get(&a).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn torn_last_line_is_ignored_and_latest_run_is_found() {
        let base = temp("runs");
        let info = RunInfo {
            run_id: String::new(),
            pipeline: "p".into(),
            file: "p.yaml".into(),
            file_digest: "d".into(),
            overrides: vec![],
        };
        let run = RunDir::create(&base, info).unwrap();
        let entry = JournalEntry {
            cycle: 0,
            window: 5,
            stage: "a".into(),
            item: None,
            key: "k".into(),
            status: EntryStatus::Done,
            outputs: Outputs::new(),
            attempts: 1,
            duration_ms: 3,
            reason: None,
        };
        run.append(&entry).unwrap();
        let mut file = OpenOptions::new()
            .append(true)
            .open(run.root.join("journal.jsonl"))
            .unwrap();
        file.write_all(b"{\"cycle\": 0, \"stag").unwrap();
        let again = RunDir::latest(&base, "p").unwrap().unwrap();
        assert_eq!(again.entries().unwrap(), vec![entry.clone()]);
        again.append(&entry).unwrap();
        assert_eq!(
            again.entries().unwrap().len(),
            2,
            "an append after a torn line stays readable"
        );
        fs::remove_dir_all(&base).ok();
    }
}
#[cfg(test)]
mod race {
    #[test]
    fn concurrent_puts_of_the_same_bytes_all_succeed() {
        let dir = std::env::temp_dir().join(format!("gradline-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = super::ObjectStore::open(&dir).unwrap();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let s = store.clone();
                std::thread::spawn(move || s.put("blob", b"null").map(|_| ()))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
    }
}
