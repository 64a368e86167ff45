//! The chain as stages (and the scheduler's windows) use it: `chain` requests through the
//! effects, answered by the embedded ledger ([`crate::live::local_chain`]) or a subtensor
//! node. Every write is signed by the role's hotkey, which the live face holds.
//!
//! | op | args | answer |
//! |---|---|---|
//! | `block` | — | `{"number": N, "hash": "0x…"}` |
//! | `neurons` | [`NetArgs`] | `[Neuron]` |
//! | `commitments` | [`NetArgs`] | `[Committed]`, the latest per hotkey |
//! | `commit` | [`CommitArgs`] | [`Written`] (`skipped` when the value is already there) |
//! | `set_weights` | [`WeightsArgs`] | [`Written`] |
//! | `weights` | [`NetArgs`] | `[WeightsOf]`, the latest each neuron set |
//! | `uid` | [`NetArgs`] | [`Identity`]: the signing hotkey and its uid, if registered |
//! | `register` | [`NetArgs`] | [`Registered`] (`skipped` when already registered) |

use std::collections::BTreeMap;

use gradline_engine::effects::{Effects, Request};
use gradline_engine::expr::Val;
use gradline_engine::runtime::StageError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetArgs {
    pub netuid: u16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Neuron {
    pub uid: u16,
    pub hotkey: String,
    #[serde(default)]
    pub validator_permit: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    pub hotkey: String,
    pub block: u64,
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitArgs {
    pub netuid: u16,
    /// The commitment's text (see [`Commitment`]).
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsArgs {
    pub netuid: u16,
    pub uids: Vec<u16>,
    pub weights: Vec<u16>,
    pub version_key: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Written {
    pub block: u64,
    /// The extrinsic's hash (the ledger entry's id); empty when skipped.
    pub extrinsic: String,
    #[serde(default)]
    pub skipped: bool,
}

/// The weights one neuron last set: `(dest uid, u16 weight)` pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightsOf {
    pub uid: u16,
    pub weights: Vec<(u16, u16)>,
}

/// The signing hotkey on a subnet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub hotkey: String,
    pub uid: Option<u16>,
    /// Where the uid came from: `file` (the uid file) or `chain`.
    #[serde(default)]
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub uid: u16,
    pub block: u64,
    #[serde(default)]
    pub skipped: bool,
}

/// What a role commits: typed and versioned, written as compact JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Commitment {
    /// The format's version: 1.
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl Commitment {
    pub const VERSION: u32 = 1;

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a commitment; text that is not one (another subnet's format) gives `None`.
    pub fn decode(text: &str) -> Option<Self> {
        serde_json::from_str::<Self>(text)
            .ok()
            .filter(|c| c.v == Self::VERSION)
    }
}

/// Each neuron with its latest commitment (decoded when it is ours), as `miner` records.
pub async fn miners(
    effects: &Effects,
    netuid: u16,
    with_commitments: bool,
) -> Result<Vec<(Neuron, Option<(Committed, Option<Commitment>)>)>, StageError> {
    let neurons = neurons(effects, netuid).await?;
    let committed = match with_commitments {
        true => commitments(effects, netuid).await?,
        false => Vec::new(),
    };
    Ok(neurons
        .into_iter()
        .map(|n| {
            let latest = committed
                .iter()
                .find(|c| c.hotkey == n.hotkey)
                .map(|c| (c.clone(), Commitment::decode(&c.data)));
            (n, latest)
        })
        .collect())
}

/// A neuron as a `miner` record: uid, hotkey, and its commitment's fields (empty if none).
pub fn miner_record(neuron: &Neuron, latest: Option<&(Committed, Option<Commitment>)>) -> Val {
    let field = |f: fn(&Commitment) -> &Option<String>| {
        Val::Str(
            latest
                .and_then(|(_, c)| c.as_ref())
                .and_then(|c| f(c).clone())
                .unwrap_or_default(),
        )
    };
    Val::Map(BTreeMap::from([
        ("uid".to_owned(), Val::Int(i64::from(neuron.uid))),
        ("hotkey".to_owned(), Val::Str(neuron.hotkey.clone())),
        ("repo".to_owned(), field(|c| &c.repo)),
        ("revision".to_owned(), field(|c| &c.revision)),
        ("digest".to_owned(), field(|c| &c.digest)),
        (
            "block".to_owned(),
            Val::Int(latest.map_or(-1, |(c, _)| c.block as i64)),
        ),
    ]))
}

async fn call<T: DeserializeOwned>(
    effects: &Effects,
    op: &str,
    args: serde_json::Value,
    what: &str,
) -> Result<T, StageError> {
    let response = effects
        .call(Request::new("chain", op, args))
        .await
        .map_err(|e| StageError::from(e).context(what.to_owned()))?;
    serde_json::from_value(response.value)
        .map_err(|e| StageError::final_(format!("{what}: the chain's answer: {e}")))
}

/// The current block's answer: `number` and `hash`.
async fn current(effects: &Effects) -> Result<serde_json::Value, StageError> {
    call(
        effects,
        "block",
        serde_json::Value::Null,
        "reading the block",
    )
    .await
}

/// The current block.
pub async fn block(effects: &Effects) -> Result<u64, StageError> {
    current(effects).await?["number"]
        .as_u64()
        .ok_or_else(|| StageError::final_("the chain gave no block number"))
}

/// The current block's number and hash (`0x` hex): a seed nobody knows before the block.
pub async fn block_hash(effects: &Effects) -> Result<(u64, String), StageError> {
    let answer = current(effects).await?;
    match (answer["number"].as_u64(), answer["hash"].as_str()) {
        (Some(number), Some(hash)) => Ok((number, hash.to_owned())),
        _ => Err(StageError::final_(
            "the chain gave no block number and hash",
        )),
    }
}

pub async fn neurons(effects: &Effects, netuid: u16) -> Result<Vec<Neuron>, StageError> {
    call(
        effects,
        "neurons",
        json!(NetArgs { netuid }),
        "reading the neurons",
    )
    .await
}

pub async fn commitments(effects: &Effects, netuid: u16) -> Result<Vec<Committed>, StageError> {
    let what = "reading the commitments";
    call(effects, "commitments", json!(NetArgs { netuid }), what).await
}

pub async fn commit(effects: &Effects, args: CommitArgs) -> Result<Written, StageError> {
    call(effects, "commit", json!(args), "committing").await
}

pub async fn set_weights(effects: &Effects, args: WeightsArgs) -> Result<Written, StageError> {
    call(effects, "set_weights", json!(args), "setting weights").await
}

pub async fn identity(effects: &Effects, netuid: u16) -> Result<Identity, StageError> {
    call(
        effects,
        "uid",
        json!(NetArgs { netuid }),
        "looking up this hotkey's uid",
    )
    .await
}

pub async fn register(effects: &Effects, netuid: u16) -> Result<Registered, StageError> {
    call(
        effects,
        "register",
        json!(NetArgs { netuid }),
        "registering",
    )
    .await
}

pub async fn weights(effects: &Effects, netuid: u16) -> Result<Vec<WeightsOf>, StageError> {
    call(
        effects,
        "weights",
        json!(NetArgs { netuid }),
        "reading weights",
    )
    .await
}
