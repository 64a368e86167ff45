//! The chain face for a Bittensor subtensor node (`ws://`, `wss://`), through subxt: storage
//! reads (block, uids and hotkeys, validator permits, commitments) and signed extrinsics
//! (`Commitments.set_commitment`, `SubtensorModule.set_weights`) submitted and watched to
//! inclusion, with a timeout and retries.
//!
//! Calls are encoded against pinned metadata (finney's unless `resources.chain.metadata`
//! names another file). A node whose runtime spec version differs is refused at connect: an
//! extrinsic encoded for another runtime would be rejected, or worse, mean something else.
//! A commitment is read before it is written and not written again when the chain already
//! holds it, so a resumed run never pays twice.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use gradline_engine::effects::{CallScope, EffectError, Request, Response, Transport};
use serde_json::json;
use subxt::backend::LegacyBackend;
use subxt::config::RpcConfigFor;
use subxt::config::substrate::SubstrateConfig;
use subxt::dynamic::Value;
use subxt::ext::scale_value::{self, At, Composite, ValueDef};
use subxt::metadata::Metadata;
use subxt::rpcs::{LegacyRpcMethods, RpcClient};
use subxt::transactions::{DynamicPayload, TransactionStatus};
use subxt::utils::AccountId32;
use subxt::{OnlineClient, OnlineClientAtBlock};
use subxt_signer::sr25519::Keypair;

use super::args;
use crate::chain::{
    CommitArgs, Committed, Identity, NetArgs, Neuron, Registered, WeightsArgs, WeightsOf, Written,
};
use crate::subtensor::{self, CommitData};

type Client = OnlineClient<SubstrateConfig>;
type AtBlock = OnlineClientAtBlock<SubstrateConfig>;

/// How to reach and sign for a subtensor node.
pub struct SubtensorConfig {
    pub url: String,
    /// SCALE runtime metadata calls are encoded against.
    pub metadata: Vec<u8>,
    pub key: Keypair,
    /// How long one submission may take to reach a block.
    pub inclusion_timeout: Duration,
    /// Submissions tried before giving up.
    pub attempts: u32,
    /// Where registrations are recorded (see [`super::uid_file`]).
    pub uid_file: PathBuf,
}

#[derive(Clone)]
pub struct Subtensor {
    client: Client,
    key: Arc<Keypair>,
    account: AccountId32,
    shown_url: String,
    inclusion_timeout: Duration,
    attempts: u32,
    uid_file: PathBuf,
}

impl Subtensor {
    /// Connects, and checks the node runs the runtime the metadata describes.
    pub async fn connect(config: SubtensorConfig) -> Result<Self, String> {
        let shown_url = gradline_engine::plan::redact_url(&config.url);
        let metadata = Metadata::decode_from(&config.metadata)
            .map_err(|e| format!("the runtime metadata cannot be read: {e}"))?;
        let pinned = subtensor::spec_version(&metadata)
            .ok_or("the runtime metadata has no `System.Version`")?;
        let rpc = tokio::time::timeout(
            config.inclusion_timeout,
            RpcClient::from_insecure_url(&config.url),
        )
        .await
        .map_err(|_| {
            format!(
                "{shown_url}: no connection within {:?}",
                config.inclusion_timeout
            )
        })?
        .map_err(|e| format!("cannot connect to {shown_url}: {e}"))?;
        let methods = LegacyRpcMethods::<RpcConfigFor<SubstrateConfig>>::new(rpc.clone());
        let running = methods
            .state_get_runtime_version(None)
            .await
            .map_err(|e| format!("{shown_url}: cannot read the runtime version: {e}"))?;
        if running.spec_version != pinned {
            return Err(format!(
                "{shown_url} runs runtime spec version {}, but gradline encodes against metadata of spec version {pinned}: \
                 extrinsics would not match the node's runtime. Save the node's metadata \
                 (`state_getMetadata`, e.g. `subxt metadata --url URL > node.scale`) and set `resources.chain.metadata: node.scale`",
                running.spec_version
            ));
        }
        let chain_config = SubstrateConfig::builder()
            .set_metadata_for_spec_versions([(pinned, metadata.arc())])
            .build();
        let backend = LegacyBackend::builder().build(rpc);
        let client = Client::from_backend_with_config(chain_config, Arc::new(backend))
            .await
            .map_err(|e| format!("{shown_url}: {e}"))?;
        let account = super::keys::account(&config.key);
        tracing::info!(node = %shown_url, spec_version = pinned, hotkey = %account, "connected to subtensor");
        Ok(Self {
            client,
            key: Arc::new(config.key),
            account,
            shown_url,
            inclusion_timeout: config.inclusion_timeout,
            attempts: config.attempts.max(1),
            uid_file: config.uid_file,
        })
    }

    /// The signing hotkey, SS58.
    pub fn hotkey(&self) -> String {
        self.account.to_string()
    }

    async fn at_head(&self) -> Result<AtBlock, EffectError> {
        self.client
            .at_current_block()
            .await
            .map_err(|e| self.unreachable("reading the finalized block", e))
    }

    fn unreachable(&self, what: &str, error: impl std::fmt::Display) -> EffectError {
        EffectError::retryable(format!("{}: {what}: {error}", self.shown_url))
    }

    /// The finalized block's number and hash (`0x` hex).
    async fn block(&self) -> Result<(u64, String), EffectError> {
        let at = self.at_head().await?;
        Ok((
            at.block_number(),
            crate::hex::encode_0x(at.block_hash().as_ref()),
        ))
    }

    async fn neurons(&self, netuid: u16) -> Result<Vec<Neuron>, EffectError> {
        let at = self.at_head().await?;
        let permits: Vec<bool> = match at
            .storage()
            .try_fetch(
                ("SubtensorModule", "ValidatorPermit"),
                vec![Value::u128(u128::from(netuid))],
            )
            .await
            .map_err(|e| self.unreachable("reading validator permits", e))?
        {
            Some(v) => {
                let value = v
                    .decode_as::<scale_value::Value>()
                    .map_err(|e| self.undecodable("SubtensorModule.ValidatorPermit", e))?;
                values(&value).map(|b| b.as_bool() == Some(true)).collect()
            }
            None => Vec::new(),
        };
        let mut keys = at
            .storage()
            .iter(
                ("SubtensorModule", "Keys"),
                vec![Value::u128(u128::from(netuid))],
            )
            .await
            .map_err(|e| self.unreachable("reading the subnet's hotkeys", e))?;
        let mut neurons = Vec::new();
        while let Some(entry) = keys.next().await {
            let entry = entry.map_err(|e| self.unreachable("reading the subnet's hotkeys", e))?;
            let uid = entry
                .key()
                .ok()
                .and_then(|k| k.part(1))
                .and_then(|p| p.decode_as::<u16>().ok().flatten())
                .ok_or_else(|| self.undecodable("SubtensorModule.Keys", "a key without its uid"))?;
            let hotkey = entry
                .value()
                .decode_as::<AccountId32>()
                .map_err(|e| self.undecodable("SubtensorModule.Keys", e))?;
            neurons.push(Neuron {
                uid,
                hotkey: hotkey.to_string(),
                validator_permit: permits.get(usize::from(uid)).copied().unwrap_or(false),
            });
        }
        neurons.sort_by_key(|n| n.uid);
        Ok(neurons)
    }

    async fn commitments(&self, netuid: u16) -> Result<Vec<Committed>, EffectError> {
        let at = self.at_head().await?;
        let mut entries = at
            .storage()
            .iter(
                ("Commitments", "CommitmentOf"),
                vec![Value::u128(u128::from(netuid))],
            )
            .await
            .map_err(|e| self.unreachable("reading commitments", e))?;
        let mut committed = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| self.unreachable("reading commitments", e))?;
            let Some(hotkey) = entry
                .key()
                .ok()
                .and_then(|k| k.part(1))
                .and_then(|p| p.decode_as::<AccountId32>().ok().flatten())
            else {
                continue;
            };
            let value = entry
                .value()
                .decode_as::<scale_value::Value>()
                .map_err(|e| self.undecodable("Commitments.CommitmentOf", e))?;
            if let Some((block, text)) = registration(&value) {
                committed.push(Committed {
                    hotkey: hotkey.to_string(),
                    block,
                    data: text,
                });
            }
        }
        committed.sort_by(|a, b| b.block.cmp(&a.block).then(a.hotkey.cmp(&b.hotkey)));
        Ok(committed)
    }

    async fn weights(&self, netuid: u16) -> Result<Vec<WeightsOf>, EffectError> {
        let at = self.at_head().await?;
        let mut entries = at
            .storage()
            .iter(
                ("SubtensorModule", "Weights"),
                vec![Value::u128(u128::from(netuid))],
            )
            .await
            .map_err(|e| self.unreachable("reading weights", e))?;
        let mut all = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| self.unreachable("reading weights", e))?;
            let uid = entry
                .key()
                .ok()
                .and_then(|k| k.part(1))
                .and_then(|p| p.decode_as::<u16>().ok().flatten())
                .ok_or_else(|| {
                    self.undecodable("SubtensorModule.Weights", "a key without its uid")
                })?;
            let weights = entry
                .value()
                .decode_as::<Vec<(u16, u16)>>()
                .map_err(|e| self.undecodable("SubtensorModule.Weights", e))?;
            all.push(WeightsOf { uid, weights });
        }
        all.sort_by_key(|w| w.uid);
        Ok(all)
    }

    /// This hotkey's commitment on a subnet, as text.
    async fn own_commitment(&self, netuid: u16) -> Result<Option<(u64, String)>, EffectError> {
        let at = self.at_head().await?;
        let value = at
            .storage()
            .try_fetch(
                ("Commitments", "CommitmentOf"),
                vec![
                    Value::u128(u128::from(netuid)),
                    Value::from_bytes(self.account.0),
                ],
            )
            .await
            .map_err(|e| self.unreachable("reading this hotkey's commitment", e))?;
        match value {
            Some(v) => {
                let value = v
                    .decode_as::<scale_value::Value>()
                    .map_err(|e| self.undecodable("Commitments.CommitmentOf", e))?;
                Ok(registration(&value))
            }
            None => Ok(None),
        }
    }

    async fn commit(&self, args: CommitArgs) -> Result<Written, EffectError> {
        let fields =
            subtensor::fields_of(&args.data).map_err(|e| EffectError::final_(e.to_string()))?;
        let wanted = subtensor::text_of(&fields);
        let call = subtensor::commitment_call(args.netuid, &fields)
            .map_err(|e| EffectError::final_(e.to_string()))?;
        let mut last = None;
        for attempt in 1..=self.attempts {
            if let Some((block, current)) = self.own_commitment(args.netuid).await?
                && Some(&current) == wanted.as_ref()
            {
                return Ok(Written {
                    block,
                    extrinsic: String::new(),
                    skipped: attempt == 1,
                });
            }
            match self.submit(&call).await {
                Ok(written) => return Ok(written),
                Err(e) if e.retryable && attempt < self.attempts => {
                    tracing::warn!(attempt, error = %e, "commitment not included; trying again");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| EffectError::final_("no attempt was made")))
    }

    /// This hotkey's uid: from the uid file, else from `SubtensorModule.Uids`.
    async fn identity(&self, netuid: u16) -> Result<Identity, EffectError> {
        let hotkey = self.hotkey();
        if let Some(uid) = super::uid_file::read(&self.uid_file, netuid, &hotkey) {
            return Ok(Identity {
                hotkey,
                uid: Some(uid),
                source: "file".into(),
            });
        }
        Ok(Identity {
            hotkey,
            uid: self.uid_on_chain(netuid).await?,
            source: "chain".into(),
        })
    }

    async fn uid_on_chain(&self, netuid: u16) -> Result<Option<u16>, EffectError> {
        let at = self.at_head().await?;
        at.storage()
            .try_fetch(
                ("SubtensorModule", "Uids"),
                vec![
                    Value::u128(u128::from(netuid)),
                    Value::from_bytes(self.account.0),
                ],
            )
            .await
            .map_err(|e| self.unreachable("looking up this hotkey's uid", e))?
            .map(|v| {
                v.decode_as::<u16>()
                    .map_err(|e| self.undecodable("SubtensorModule.Uids", e))
            })
            .transpose()
    }

    /// `SubtensorModule.burned_register(netuid, hotkey)`, signed and paid by the signing key;
    /// the uid given is recorded in the uid file.
    async fn register(&self, netuid: u16) -> Result<Registered, EffectError> {
        let registered = match self.uid_on_chain(netuid).await? {
            Some(uid) => Registered {
                uid,
                block: self.block().await?.0,
                skipped: true,
            },
            None => {
                let call = subxt::transactions::dynamic(
                    "SubtensorModule",
                    "burned_register",
                    vec![
                        Value::u128(u128::from(netuid)),
                        Value::from_bytes(self.account.0),
                    ],
                );
                let written = self.submit(&call).await?;
                let uid = self.uid_on_chain(netuid).await?.ok_or_else(|| {
                    EffectError::final_(format!(
                        "the registration was included in block {} but no uid is recorded for {}",
                        written.block,
                        self.hotkey()
                    ))
                })?;
                Registered {
                    uid,
                    block: written.block,
                    skipped: false,
                }
            }
        };
        super::uid_file::write(&self.uid_file, netuid, &self.hotkey(), registered.uid)
            .map_err(|e| super::fetch::io_error("writing the uid file", &e))?;
        Ok(registered)
    }

    async fn set_weights(&self, args: WeightsArgs) -> Result<Written, EffectError> {
        let call =
            subtensor::weights_call(args.netuid, &args.uids, &args.weights, args.version_key)
                .map_err(|e| EffectError::final_(e.to_string()))?;
        let mut attempt = 1;
        loop {
            match self.submit(&call).await {
                Err(e) if e.retryable && attempt < self.attempts => {
                    tracing::warn!(attempt, error = %e, "weights not included; trying again");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Signs, submits and watches one extrinsic until it is in a block and succeeded.
    async fn submit(&self, call: &DynamicPayload<Vec<Value>>) -> Result<Written, EffectError> {
        let what = format!("{}.{}", call.pallet_name(), call.call_name());
        let at = self.at_head().await?;
        let mut transactions = at.transactions();
        let mut progress = transactions
            .sign_and_submit_then_watch_default(call, &*self.key)
            .await
            .map_err(|e| self.unreachable(&format!("submitting {what}"), e))?;
        let extrinsic = format!("{:?}", progress.extrinsic_hash());
        let included = tokio::time::timeout(self.inclusion_timeout, async {
            while let Some(status) = progress.next().await {
                match status.map_err(|e| self.unreachable(&format!("watching {what}"), e))? {
                    TransactionStatus::InBestBlock(block)
                    | TransactionStatus::InFinalizedBlock(block) => return Ok(block),
                    TransactionStatus::Invalid { message }
                    | TransactionStatus::Dropped { message }
                    | TransactionStatus::Error { message } => {
                        return Err(EffectError::retryable(format!(
                            "{}: {what} was not included: {message}",
                            self.shown_url
                        )));
                    }
                    _ => continue,
                }
            }
            Err(EffectError::retryable(format!(
                "{}: the node stopped reporting on {what}",
                self.shown_url
            )))
        })
        .await
        .map_err(|_| {
            EffectError::retryable(format!(
                "{}: {what} {extrinsic} was not in a block within {:?}",
                self.shown_url, self.inclusion_timeout
            ))
        })??;
        included.wait_for_success().await.map_err(|e| {
            EffectError::final_(format!("{}: {what} failed on chain: {e}", self.shown_url))
        })?;
        let block = included
            .at()
            .await
            .map(|at| at.block_number())
            .map_err(|e| self.unreachable("reading the inclusion block", e))?;
        tracing::info!(call = %what, block, extrinsic = %extrinsic, "included");
        Ok(Written {
            block,
            extrinsic,
            skipped: false,
        })
    }

    fn undecodable(&self, entry: &str, error: impl std::fmt::Display) -> EffectError {
        EffectError::final_(format!(
            "{}: {entry} does not decode as the metadata says: {error}",
            self.shown_url
        ))
    }
}

/// A `Registration { deposit, block, info: { fields } }` as (block, commitment text).
fn registration(value: &scale_value::Value) -> Option<(u64, String)> {
    let block = value.at("block")?.as_u128()? as u64;
    let fields = values(value.at("info")?.at("fields")?)
        .map(commit_data)
        .collect::<Option<Vec<_>>>()?;
    Some((block, subtensor::text_of(&fields)?))
}

/// One `Data` variant of a commitment.
fn commit_data(value: &scale_value::Value) -> Option<CommitData> {
    let ValueDef::Variant(variant) = &value.value else {
        return None;
    };
    let inner = || variant.values.values().next().and_then(bytes);
    match variant.name.as_str() {
        "None" => Some(CommitData::None),
        "Sha256" => Some(CommitData::Sha256(inner()?.try_into().ok()?)),
        name if name.starts_with("Raw") => Some(CommitData::Raw(inner()?)),
        _ => None,
    }
}

/// The items of a sequence or composite value, through newtypes (`BoundedVec(Vec<_>)`).
fn values<'a>(
    value: &'a scale_value::Value,
) -> Box<dyn Iterator<Item = &'a scale_value::Value> + 'a> {
    if let ValueDef::Composite(Composite::Unnamed(items)) = &value.value
        && let [inner] = items.as_slice()
        && matches!(inner.value, ValueDef::Composite(_))
    {
        return values(inner);
    }
    match &value.value {
        ValueDef::Composite(Composite::Unnamed(items)) => Box::new(items.iter()),
        ValueDef::Composite(Composite::Named(items)) => Box::new(items.iter().map(|(_, v)| v)),
        _ => Box::new(std::iter::empty()),
    }
}

fn bytes(value: &scale_value::Value) -> Option<Vec<u8>> {
    values(value)
        .map(|v| v.as_u128().and_then(|b| u8::try_from(b).ok()))
        .collect()
}

impl Transport for Subtensor {
    fn call<'a>(
        &'a self,
        _scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            let value = match request.op.as_str() {
                "block" => {
                    let (number, hash) = self.block().await?;
                    json!({ "number": number, "hash": hash })
                }
                "neurons" => json!(self.neurons(args::<NetArgs>(&request)?.netuid).await?),
                "commitments" => {
                    json!(self.commitments(args::<NetArgs>(&request)?.netuid).await?)
                }
                "commit" => json!(self.commit(args(&request)?).await?),
                "set_weights" => json!(self.set_weights(args(&request)?).await?),
                "weights" => json!(self.weights(args::<NetArgs>(&request)?.netuid).await?),
                "uid" => json!(self.identity(args::<NetArgs>(&request)?.netuid).await?),
                "register" => json!(self.register(args::<NetArgs>(&request)?.netuid).await?),
                op => {
                    return Err(EffectError::final_(format!(
                        "the subtensor face has no operation `{op}`"
                    )));
                }
            };
            Ok(Response::value(value))
        })
    }
}
