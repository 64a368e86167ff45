//! The embedded ledger, `local://DIR`: the chain of the demo network and the tests. An
//! append-only `ledger.jsonl` (each entry fsynced; writers take turns through a file lock,
//! across processes; a line cut short by a crash is dropped before the next write), blocks
//! that advance at `block_time` from the genesis recorded in `genesis.json`, and role keys
//! generated into `keys/` on first use; a driver may hold the clock (`clock.json`) and move
//! it on by hand. A hotkey is registered (given the next uid) on its first write: the demo
//! network has no stake to spend.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use gradline_engine::effects::{CallScope, EffectError, Request, Response, Transport};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::args;
use crate::chain::{
    CommitArgs, Committed, Identity, NetArgs, Neuron, Registered, WeightsArgs, WeightsOf, Written,
};

/// The largest commitment the ledger takes.
pub const MAX_COMMITMENT_BYTES: usize = 1024;

#[derive(Clone, Debug)]
pub struct LocalChain {
    dir: PathBuf,
    genesis_ms: u64,
    block_ms: u64,
    hotkey: String,
    role: String,
}

/// One ledger line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    pub block: u64,
    pub netuid: u16,
    pub hotkey: String,
    #[serde(flatten)]
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EntryKind {
    Register {
        role: String,
    },
    Commit {
        data: String,
    },
    SetWeights {
        uids: Vec<u16>,
        weights: Vec<u16>,
        version_key: u64,
    },
}

#[derive(Serialize, Deserialize)]
struct Genesis {
    unix_ms: u64,
}

impl LocalChain {
    /// The ledger of a `local://DIR` URL, signing as the key `key_name` (generated on first
    /// use) for a role.
    pub fn open(
        url: &str,
        block_time: Duration,
        key_name: &str,
        role: &str,
    ) -> Result<Self, String> {
        let dir = PathBuf::from(
            url.strip_prefix("local://")
                .filter(|d| !d.is_empty())
                .ok_or_else(|| format!("`{url}` is not a `local://DIR` ledger"))?,
        );
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys)
            .map_err(|e| format!("cannot create the ledger folder {}: {e}", dir.display()))?;
        let genesis = dir.join("genesis.json");
        let fresh = Genesis { unix_ms: now_ms() };
        let text = serde_json::to_string(&fresh).unwrap_or_default();
        if let Ok(mut file) = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&genesis)
        {
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", genesis.display()))?;
        }
        let recorded: Genesis = std::fs::read_to_string(&genesis)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| format!("{} is unreadable", genesis.display()))?;
        let key = super::keys::generated_in(&keys, key_name)?;
        let hotkey = super::keys::public_hex(&key);
        Ok(Self {
            dir,
            genesis_ms: recorded.unix_ms,
            block_ms: block_time.as_millis().max(1) as u64,
            hotkey,
            role: role.to_owned(),
        })
    }

    pub fn hotkey(&self) -> &str {
        &self.hotkey
    }

    /// The current block: the held one when `clock.json` holds it, else the wall clock's.
    pub fn block(&self) -> u64 {
        held_block(&self.dir)
            .unwrap_or_else(|| now_ms().saturating_sub(self.genesis_ms) / self.block_ms)
    }

    /// A block's hash on the ledger: blake3 of the genesis time and the number, so every
    /// process sharing the ledger sees the same one.
    pub fn block_hash(&self, number: u64) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"gradline.ledger.block");
        hasher.update(&self.genesis_ms.to_le_bytes());
        hasher.update(&number.to_le_bytes());
        crate::hex::encode_0x(hasher.finalize().as_bytes())
    }

    /// Every whole entry of the ledger.
    pub fn entries(&self) -> Result<Vec<Entry>, EffectError> {
        let text = match std::fs::read(self.dir.join("ledger.jsonl")) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(super::fetch::io_error("reading the ledger", &e)),
        };
        Ok(text
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect())
    }

    /// Appends entries for this hotkey (registering it first when needed) under the ledger
    /// lock; `decide` sees the ledger as it is and says what to write.
    fn write(
        &self,
        netuid: u16,
        decide: impl FnOnce(&[Entry], u64) -> Result<Option<EntryKind>, EffectError>,
    ) -> Result<Written, EffectError> {
        fn io(what: &'static str) -> impl Fn(std::io::Error) -> EffectError {
            move |e| super::fetch::io_error(what, &e)
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("ledger.lock"))
            .map_err(io("opening the ledger lock"))?;
        lock.lock().map_err(io("locking the ledger"))?;
        let mut ledger = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .append(true)
            .open(self.dir.join("ledger.jsonl"))
            .map_err(io("opening the ledger"))?;
        let mut text = Vec::new();
        ledger
            .read_to_end(&mut text)
            .map_err(io("reading the ledger"))?;
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole < text.len() {
            // A line cut short by a crash was never acknowledged: drop it.
            ledger
                .set_len(whole as u64)
                .map_err(io("repairing the ledger"))?;
            ledger
                .seek(SeekFrom::End(0))
                .map_err(io("repairing the ledger"))?;
        }
        let entries: Vec<Entry> = text[..whole]
            .split(|b| *b == b'\n')
            .filter_map(|line| serde_json::from_slice(line).ok())
            .collect();
        let block = self.block();
        let Some(kind) = decide(&entries, block)? else {
            let at = entries
                .iter()
                .rev()
                .find(|e| e.hotkey == self.hotkey && e.netuid == netuid)
                .map_or(block, |e| e.block);
            return Ok(Written {
                block: at,
                extrinsic: String::new(),
                skipped: true,
            });
        };
        let registered = entries.iter().any(|e| {
            e.netuid == netuid
                && e.hotkey == self.hotkey
                && matches!(e.kind, EntryKind::Register { .. })
        });
        let mut seq = entries.len() as u64;
        let mut lines = Vec::new();
        if !registered && !matches!(kind, EntryKind::Register { .. }) {
            lines.push(self.entry(
                seq,
                block,
                netuid,
                EntryKind::Register {
                    role: self.role.clone(),
                },
            ));
            seq += 1;
        }
        lines.push(self.entry(seq, block, netuid, kind));
        let mut out = String::new();
        for entry in &lines {
            out.push_str(
                &serde_json::to_string(entry).map_err(|e| EffectError::final_(e.to_string()))?,
            );
            out.push('\n');
        }
        ledger
            .write_all(out.as_bytes())
            .map_err(io("writing the ledger"))?;
        ledger.sync_data().map_err(io("syncing the ledger"))?;
        let last = out.lines().last().unwrap_or_default();
        Ok(Written {
            block,
            extrinsic: format!("0x{}", blake3::hash(last.as_bytes()).to_hex()),
            skipped: false,
        })
    }

    fn entry(&self, seq: u64, block: u64, netuid: u16, kind: EntryKind) -> Entry {
        Entry {
            seq,
            block,
            netuid,
            hotkey: self.hotkey.clone(),
            kind,
        }
    }

    fn neurons(&self, netuid: u16) -> Result<Vec<Neuron>, EffectError> {
        Ok(neurons_of(&self.entries()?, netuid))
    }

    fn commitments(&self, netuid: u16) -> Result<Vec<Committed>, EffectError> {
        let mut latest: Vec<Committed> = Vec::new();
        for entry in self.entries()?.into_iter().filter(|e| e.netuid == netuid) {
            if let EntryKind::Commit { data } = entry.kind {
                latest.retain(|c| c.hotkey != entry.hotkey);
                latest.push(Committed {
                    hotkey: entry.hotkey,
                    block: entry.block,
                    data,
                });
            }
        }
        Ok(latest)
    }

    fn weights(&self, netuid: u16) -> Result<Vec<WeightsOf>, EffectError> {
        let entries = self.entries()?;
        let neurons = neurons_of(&entries, netuid);
        let mut latest: Vec<WeightsOf> = Vec::new();
        for entry in entries.iter().filter(|e| e.netuid == netuid) {
            if let EntryKind::SetWeights { uids, weights, .. } = &entry.kind
                && let Some(neuron) = neurons.iter().find(|n| n.hotkey == entry.hotkey)
            {
                latest.retain(|w| w.uid != neuron.uid);
                latest.push(WeightsOf {
                    uid: neuron.uid,
                    weights: uids.iter().copied().zip(weights.iter().copied()).collect(),
                });
            }
        }
        latest.sort_by_key(|w| w.uid);
        Ok(latest)
    }

    fn identity(&self, netuid: u16) -> Result<Identity, EffectError> {
        Ok(Identity {
            hotkey: self.hotkey.clone(),
            uid: self
                .neurons(netuid)?
                .iter()
                .find(|n| n.hotkey == self.hotkey)
                .map(|n| n.uid),
            source: "chain".into(),
        })
    }

    fn register(&self, netuid: u16) -> Result<Registered, EffectError> {
        let hotkey = self.hotkey.clone();
        let written = self.write(netuid, |entries, _| {
            let known = neurons_of(entries, netuid)
                .iter()
                .any(|n| n.hotkey == hotkey);
            Ok((!known).then(|| EntryKind::Register {
                role: self.role.clone(),
            }))
        })?;
        let uid = self
            .identity(netuid)?
            .uid
            .ok_or_else(|| EffectError::final_("the registration is not in the ledger"))?;
        Ok(Registered {
            uid,
            block: written.block,
            skipped: written.skipped,
        })
    }

    fn commit(&self, args: CommitArgs) -> Result<Written, EffectError> {
        if args.data.len() > MAX_COMMITMENT_BYTES {
            return Err(EffectError::final_(format!(
                "the commitment is {} bytes, over the ledger's limit of {MAX_COMMITMENT_BYTES}",
                args.data.len()
            )));
        }
        let hotkey = self.hotkey.clone();
        self.write(args.netuid, |entries, _| {
            let current = entries.iter().rev().find_map(|e| match &e.kind {
                EntryKind::Commit { data } if e.hotkey == hotkey && e.netuid == args.netuid => {
                    Some(data)
                }
                _ => None,
            });
            Ok((current != Some(&args.data)).then(|| EntryKind::Commit {
                data: args.data.clone(),
            }))
        })
    }

    fn set_weights(&self, args: WeightsArgs) -> Result<Written, EffectError> {
        if args.uids.len() != args.weights.len() {
            return Err(EffectError::final_(format!(
                "{} uids but {} weights",
                args.uids.len(),
                args.weights.len()
            )));
        }
        self.write(args.netuid, |entries, _| {
            let known = neurons_of(entries, args.netuid);
            if let Some(uid) = args
                .uids
                .iter()
                .find(|u| !known.iter().any(|n| n.uid == **u))
            {
                return Err(EffectError::final_(format!(
                    "uid {uid} is not registered on netuid {}",
                    args.netuid
                )));
            }
            Ok(Some(EntryKind::SetWeights {
                uids: args.uids.clone(),
                weights: args.weights.clone(),
                version_key: args.version_key,
            }))
        })
    }
}

fn neurons_of(entries: &[Entry], netuid: u16) -> Vec<Neuron> {
    entries
        .iter()
        .filter(|e| e.netuid == netuid)
        .filter_map(|e| match &e.kind {
            // The subnet's own roles (validator, orchestrator) hold a permit; miners do not.
            EntryKind::Register { role } => Some((e.hotkey.clone(), role != "miner")),
            _ => None,
        })
        .enumerate()
        .map(|(uid, (hotkey, validator_permit))| Neuron {
            uid: uid as u16,
            hotkey,
            validator_permit,
        })
        .collect()
}

impl Transport for LocalChain {
    fn call<'a>(
        &'a self,
        _scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            let chain = self.clone();
            tokio::task::spawn_blocking(move || {
                let value = match request.op.as_str() {
                    "block" => {
                        let number = chain.block();
                        json!({ "number": number, "hash": chain.block_hash(number) })
                    }
                    "neurons" => json!(chain.neurons(args::<NetArgs>(&request)?.netuid)?),
                    "commitments" => json!(chain.commitments(args::<NetArgs>(&request)?.netuid)?),
                    "commit" => json!(chain.commit(args(&request)?)?),
                    "set_weights" => json!(chain.set_weights(args(&request)?)?),
                    "weights" => json!(chain.weights(args::<NetArgs>(&request)?.netuid)?),
                    "uid" => json!(chain.identity(args::<NetArgs>(&request)?.netuid)?),
                    "register" => json!(chain.register(args::<NetArgs>(&request)?.netuid)?),
                    op => {
                        return Err(EffectError::final_(format!(
                            "the ledger has no operation `{op}`"
                        )));
                    }
                };
                Ok(Response::value(value))
            })
            .await
            .map_err(|e| EffectError::final_(format!("the ledger: {e}")))?
        })
    }
}

/// The file that holds a ledger's clock: `{"block": N}`. While it exists the ledger's
/// current block is N for every process sharing the folder, and a driver (`gradline up`, a
/// test) moves time on by rewriting it.
pub const CLOCK_FILE: &str = "clock.json";

#[derive(Serialize, Deserialize)]
struct HeldClock {
    block: u64,
}

/// Holds the ledger in `dir` at `block` (written whole, then renamed into place).
pub fn hold_block(dir: &std::path::Path, block: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let text = serde_json::to_string(&HeldClock { block }).map_err(std::io::Error::other)?;
    let partial = dir.join(format!("{CLOCK_FILE}.partial"));
    std::fs::write(&partial, text)?;
    std::fs::rename(partial, dir.join(CLOCK_FILE))
}

fn held_block(dir: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join(CLOCK_FILE)).ok()?;
    serde_json::from_str::<HeldClock>(&text)
        .ok()
        .map(|c| c.block)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
