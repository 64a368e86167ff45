//! A subtensor node on loopback for the tests: a WebSocket JSON-RPC server answering the
//! legacy methods subxt uses — runtime version and `Core_version`, metadata from the `.scale`
//! file, block hashes and headers, account nonces, storage reads and paged key listings,
//! and `author_submitAndWatchExtrinsic` with ready / in-block / finalized updates. A
//! submitted extrinsic is decoded against the metadata, its sr25519 signature checked over
//! the payload a real node signs (call, extensions, spec and transaction version, genesis
//! and era birth hash), its nonce checked, and its effect applied to storage in a new
//! block. Faults are scripted per submission.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value as Json, json};
use soketto::handshake::{Server, server::Response};
use sp_crypto_hashing::{blake2_128, blake2_256, twox_64, twox_128};
use subxt::ArcMetadata;
use subxt::ext::codec::{Compact, Decode, Encode};
use subxt::ext::frame_decode::extrinsics::decode_extrinsic;
use subxt::ext::scale_value::{self, Value};
use subxt::metadata::Metadata;
use tokio::sync::mpsc;
use tokio_util::compat::TokioAsyncReadCompatExt;

/// What the node does with the next submission.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// Reports `dropped`.
    Drop,
    /// Says `ready`, then nothing.
    Stall,
}

/// One extrinsic the node included.
#[derive(Clone, Debug)]
pub struct Included {
    pub pallet: String,
    pub call: String,
    pub signer: [u8; 32],
    pub block: u32,
}

pub struct State {
    metadata: ArcMetadata,
    metadata_bytes: Vec<u8>,
    /// `Core_version`'s answer: the metadata's `System.Version`, spec version replaceable.
    version: Vec<u8>,
    spec_version: u32,
    transaction_version: u32,
    blocks: Vec<Vec<Vec<u8>>>,
    storage: BTreeMap<Vec<u8>, Vec<u8>>,
    nonces: HashMap<[u8; 32], u32>,
    pub faults: VecDeque<Fault>,
    pub included: Vec<Included>,
    pub rejected: Vec<String>,
    pub methods: Vec<String>,
}

pub type Node = Arc<Mutex<State>>;

impl State {
    pub fn new(metadata_bytes: Vec<u8>) -> Self {
        let metadata = Metadata::decode_from(&metadata_bytes).unwrap().arc();
        let version = metadata
            .pallet_by_name("System")
            .unwrap()
            .constant_by_name("Version")
            .unwrap()
            .value()
            .to_vec();
        let (spec_version, transaction_version) = versions(&version);
        Self {
            metadata,
            metadata_bytes,
            version,
            spec_version,
            transaction_version,
            blocks: vec![Vec::new(); 5],
            storage: BTreeMap::new(),
            nonces: HashMap::new(),
            faults: VecDeque::new(),
            included: Vec::new(),
            rejected: Vec::new(),
            methods: Vec::new(),
        }
    }

    /// Makes the node claim another runtime.
    pub fn set_spec_version(&mut self, spec_version: u32) {
        let (name, rest) = self.version.split_at(spec_name_len(&self.version));
        let mut version = name.to_vec();
        let mut rest = rest.to_vec();
        rest[0..4].copy_from_slice(&spec_version.to_le_bytes());
        version.extend(rest);
        self.version = version;
        self.spec_version = spec_version;
    }

    pub fn head(&self) -> u32 {
        self.blocks.len() as u32 - 1
    }

    /// Registers a hotkey as `uid` on a subnet, with or without a validator permit.
    pub fn register(&mut self, netuid: u16, uid: u16, hotkey: [u8; 32], permit: bool) {
        let net = netuid.encode();
        self.storage.insert(
            [prefix("SubtensorModule", "Keys"), net.clone(), uid.encode()].concat(),
            hotkey.to_vec(),
        );
        self.storage.insert(
            [
                prefix("SubtensorModule", "Uids"),
                net.clone(),
                blake2_128(&hotkey).to_vec(),
                hotkey.to_vec(),
            ]
            .concat(),
            uid.encode(),
        );
        let permit_key = [prefix("SubtensorModule", "ValidatorPermit"), net].concat();
        let mut permits = self
            .storage
            .get(&permit_key)
            .map(|v| Vec::<bool>::decode(&mut v.as_slice()).unwrap())
            .unwrap_or_default();
        permits.resize(permits.len().max(usize::from(uid) + 1), false);
        permits[usize::from(uid)] = permit;
        self.storage.insert(permit_key, permits.encode());
    }

    /// The raw `CommitmentOf` value of a hotkey.
    pub fn commitment(&self, netuid: u16, hotkey: [u8; 32]) -> Option<Vec<u8>> {
        self.storage.get(&commitment_key(netuid, hotkey)).cloned()
    }

    fn hash(&self, number: u32) -> String {
        hex(&blake2_256(&number.to_le_bytes()))
    }

    fn number_of(&self, hash: &Json) -> Option<u32> {
        let hash = hash.as_str()?;
        (0..=self.head()).find(|n| self.hash(*n) == hash)
    }

    fn header(&self, number: u32) -> Json {
        json!({
            "parentHash": self.hash(number.saturating_sub(1)),
            "number": format!("0x{number:x}"),
            "stateRoot": hex(&[0; 32]),
            "extrinsicsRoot": hex(&[0; 32]),
            "digest": { "logs": [] },
        })
    }

    fn runtime_version(&self) -> Json {
        json!({
            "specName": "node-subtensor",
            "implName": "node-subtensor",
            "authoringVersion": 1,
            "specVersion": self.spec_version,
            "implVersion": 1,
            "apis": [],
            "transactionVersion": self.transaction_version,
            "stateVersion": 1,
        })
    }

    fn state_call(&self, method: &str, data: &[u8]) -> Result<Vec<u8>, String> {
        Ok(match method {
            "Core_version" => self.version.clone(),
            "AccountNonceApi_account_nonce" => {
                let account: [u8; 32] = data.try_into().map_err(|_| "not an account")?;
                self.nonces.get(&account).copied().unwrap_or(0).encode()
            }
            "Metadata_metadata_versions" => vec![16u32].encode(),
            "Metadata_metadata_at_version" => Some(self.metadata_bytes.clone()).encode(),
            "Metadata_metadata" => self.metadata_bytes.encode(),
            other => return Err(format!("no runtime API `{other}`")),
        })
    }

    /// Checks and applies one extrinsic in a new block; the block number, or why not.
    fn apply(&mut self, bytes: &[u8]) -> Result<u32, String> {
        let metadata = self.metadata.clone();
        let ext = decode_extrinsic(&mut &bytes[..], &*metadata, metadata.types())
            .map_err(|e| format!("undecodable: {e}"))?;
        let signature = ext.signature_payload().ok_or("unsigned")?;
        let address = &bytes[signature.address_range()];
        let signer: [u8; 32] = address
            .strip_prefix(&[0])
            .and_then(|a| a.try_into().ok())
            .ok_or("not a MultiAddress::Id")?;
        let extensions = ext.transaction_extension_payload().ok_or("no extensions")?;
        let mut birth = 0;
        let mut nonce = None;
        for extension in extensions.iter() {
            let mut field = &bytes[extension.range()];
            match extension.name() {
                "CheckNonce" => nonce = Some(Compact::<u32>::decode(&mut field).unwrap().0),
                "CheckMortality" => birth = era_birth(field, self.head()),
                _ => {}
            }
        }
        let expected = self.nonces.get(&signer).copied().unwrap_or(0);
        if nonce != Some(expected) {
            return Err(format!("nonce {nonce:?}, expected {expected}"));
        }
        let mut payload = bytes[ext.call_data_range()].to_vec();
        payload.extend_from_slice(&bytes[extensions.range()]);
        payload.extend(self.spec_version.encode());
        payload.extend(self.transaction_version.encode());
        payload.extend(blake2_256(&0u32.to_le_bytes()));
        payload.extend(blake2_256(&birth.to_le_bytes()));
        payload.push(0); // CheckMetadataHash: no hash
        if payload.len() > 256 {
            payload = blake2_256(&payload).to_vec();
        }
        let raw_signature = &bytes[signature.signature_range()];
        let sr25519: [u8; 64] = raw_signature
            .strip_prefix(&[1])
            .and_then(|s| s.try_into().ok())
            .ok_or("not an sr25519 MultiSignature")?;
        if !subxt_signer::sr25519::verify(
            &subxt_signer::sr25519::Signature(sr25519),
            &payload,
            &subxt_signer::sr25519::PublicKey(signer),
        ) {
            return Err("bad signature".into());
        }
        let block = self.head() + 1;
        let args: HashMap<&str, &[u8]> = ext
            .call_data()
            .map(|a| (a.name(), &bytes[a.range()]))
            .collect();
        match (ext.pallet_name(), ext.call_name()) {
            ("Commitments", "set_commitment") => {
                let netuid = u16::decode(&mut &args["netuid"][..]).unwrap();
                let entry = metadata
                    .pallet_by_name("Commitments")
                    .unwrap()
                    .storage()
                    .unwrap()
                    .entry_by_name("CommitmentOf")
                    .unwrap();
                let info_ty = ext.call_data().find(|a| a.name() == "info").unwrap().ty();
                let info = scale_value::scale::decode_as_type(
                    &mut &args["info"][..],
                    *info_ty,
                    metadata.types(),
                )
                .map_err(|e| format!("info: {e}"))?;
                let registration = Value::named_composite([
                    ("deposit", Value::u128(0)),
                    ("block", Value::u128(u128::from(block))),
                    ("info", info.remove_context()),
                ]);
                let mut value = Vec::new();
                scale_value::scale::encode_as_type(
                    &registration,
                    entry.value_ty(),
                    metadata.types(),
                    &mut value,
                )
                .map_err(|e| format!("registration: {e}"))?;
                self.storage.insert(commitment_key(netuid, signer), value);
            }
            ("SubtensorModule", "set_weights") => {
                let netuid = u16::decode(&mut &args["netuid"][..]).unwrap();
                let uid_key = [
                    prefix("SubtensorModule", "Uids"),
                    netuid.encode(),
                    blake2_128(&signer).to_vec(),
                    signer.to_vec(),
                ]
                .concat();
                let Some(uid) = self.storage.get(&uid_key).cloned() else {
                    return Err("HotKeyNotRegisteredInSubNet".into());
                };
                let dests = Vec::<u16>::decode(&mut &args["dests"][..]).unwrap();
                let weights = Vec::<u16>::decode(&mut &args["weights"][..]).unwrap();
                let pairs: Vec<(u16, u16)> = dests.into_iter().zip(weights).collect();
                self.storage.insert(
                    [prefix("SubtensorModule", "Weights"), netuid.encode(), uid].concat(),
                    pairs.encode(),
                );
            }
            ("SubtensorModule", "burned_register") => {
                let netuid = u16::decode(&mut &args["netuid"][..]).unwrap();
                let hotkey = <[u8; 32]>::decode(&mut &args["hotkey"][..]).unwrap();
                let keys = [prefix("SubtensorModule", "Keys"), netuid.encode()].concat();
                let uid = self.storage.keys().filter(|k| k.starts_with(&keys)).count() as u16;
                self.register(netuid, uid, hotkey, false);
            }
            (pallet, call) => return Err(format!("{pallet}.{call} is not scripted")),
        }
        self.nonces.insert(signer, expected + 1);
        self.blocks.push(vec![bytes.to_vec()]);
        self.included.push(Included {
            pallet: ext.pallet_name().to_owned(),
            call: ext.call_name().to_owned(),
            signer,
            block,
        });
        Ok(block)
    }
}

/// Starts a node on loopback; its `ws://` URL.
pub async fn start(node: Node) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, node.clone()));
        }
    });
    format!("ws://{address}")
}

async fn serve(socket: tokio::net::TcpStream, node: Node) {
    let mut server = Server::new(socket.compat());
    let Ok(request) = server.receive_request().await else {
        return;
    };
    let key = request.key();
    if server
        .send_response(&Response::Accept {
            key,
            protocol: None,
        })
        .await
        .is_err()
    {
        return;
    }
    let (mut sender, mut receiver) = server.into_builder().finish();
    let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(text) = outgoing.recv().await {
            if sender.send_text(&text).await.is_err() || sender.flush().await.is_err() {
                return;
            }
        }
    });
    let mut subscriptions = 0u64;
    loop {
        let mut message = Vec::new();
        if receiver.receive_data(&mut message).await.is_err() {
            return;
        }
        let Ok(request) = serde_json::from_slice::<Json>(&message) else {
            continue;
        };
        let id = request["id"].clone();
        let method = request["method"].as_str().unwrap_or_default().to_owned();
        let params = request["params"].as_array().cloned().unwrap_or_default();
        node.lock().unwrap().methods.push(method.clone());
        if method == "author_submitAndWatchExtrinsic" {
            subscriptions += 1;
            let subscription = format!("sub{subscriptions}");
            let _ =
                out.send(json!({"jsonrpc": "2.0", "id": id, "result": subscription}).to_string());
            let bytes = unhex(params.first().and_then(Json::as_str).unwrap_or_default());
            tokio::spawn(watch(node.clone(), out.clone(), subscription, bytes));
            continue;
        }
        let answer = answer(&node.lock().unwrap(), &method, &params);
        let reply = match answer {
            Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Err(message) => {
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": message}})
            }
        };
        let _ = out.send(reply.to_string());
    }
}

fn answer(state: &State, method: &str, params: &[Json]) -> Result<Json, String> {
    let at = |i: usize| {
        params
            .get(i)
            .filter(|p| !p.is_null())
            .map_or(Some(state.head()), |h| state.number_of(h))
    };
    Ok(match method {
        "rpc_methods" => json!({ "methods": [] }),
        "chain_getBlockHash" => match params.first().and_then(Json::as_u64) {
            Some(n) if n <= u64::from(state.head()) => json!(state.hash(n as u32)),
            Some(_) => Json::Null,
            None => json!(state.hash(state.head())),
        },
        "chain_getFinalizedHead" => json!(state.hash(state.head())),
        "chain_getHeader" => at(0).map_or(Json::Null, |n| state.header(n)),
        "chain_getBlock" => at(0).map_or(Json::Null, |n| {
            json!({
                "block": {
                    "header": state.header(n),
                    "extrinsics": state.blocks[n as usize].iter().map(|e| hex(e)).collect::<Vec<_>>(),
                },
                "justifications": null,
            })
        }),
        "state_getRuntimeVersion" => state.runtime_version(),
        "state_getMetadata" => json!(hex(&state.metadata_bytes)),
        "state_call" => {
            let method = params.first().and_then(Json::as_str).unwrap_or_default();
            let data = unhex(params.get(1).and_then(Json::as_str).unwrap_or("0x"));
            json!(hex(&state.state_call(method, &data)?))
        }
        "system_accountNextIndex" => json!(0),
        "state_getStorage" => {
            let key = unhex(params.first().and_then(Json::as_str).unwrap_or_default());
            state.storage.get(&key).map_or(Json::Null, |v| json!(hex(v)))
        }
        "state_getKeysPaged" => {
            let prefix = unhex(params.first().and_then(Json::as_str).unwrap_or_default());
            let count = params.get(1).and_then(Json::as_u64).unwrap_or(1000) as usize;
            let start = params.get(2).and_then(Json::as_str).map(unhex);
            let keys: Vec<String> = state
                .storage
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .filter(|k| start.as_ref().is_none_or(|s| *k > s))
                .take(count)
                .map(|k| hex(k))
                .collect();
            json!(keys)
        }
        "state_queryStorageAt" => {
            let keys = params.first().and_then(Json::as_array).cloned().unwrap_or_default();
            let changes: Vec<Json> = keys
                .iter()
                .map(|k| {
                    let key = unhex(k.as_str().unwrap_or_default());
                    json!([k, state.storage.get(&key).map(|v| hex(v))])
                })
                .collect();
            json!([{ "block": state.hash(state.head()), "changes": changes }])
        }
        "author_unwatchExtrinsic" => json!(true),
        other => return Err(format!("Method not found: {other}")),
    })
}

/// Reports a submission's progress as a node does.
async fn watch(
    node: Node,
    out: mpsc::UnboundedSender<String>,
    subscription: String,
    bytes: Vec<u8>,
) {
    let update = |result: Json| {
        json!({
            "jsonrpc": "2.0",
            "method": "author_extrinsicUpdate",
            "params": { "subscription": subscription, "result": result },
        })
        .to_string()
    };
    let _ = out.send(update(json!("ready")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let fault = node.lock().unwrap().faults.pop_front();
    let outcome = match fault {
        Some(Fault::Drop) => {
            let _ = out.send(update(json!("dropped")));
            return;
        }
        Some(Fault::Stall) => return,
        None => node.lock().unwrap().apply(&bytes),
    };
    match outcome {
        Ok(block) => {
            let hash = node.lock().unwrap().hash(block);
            let _ = out.send(update(json!({ "inBlock": hash })));
            let _ = out.send(update(json!({ "finalized": hash })));
        }
        Err(reason) => {
            node.lock().unwrap().rejected.push(reason);
            let _ = out.send(update(json!("invalid")));
        }
    }
}

/// A storage map's prefix: `twox128(pallet) ++ twox128(entry)`.
fn prefix(pallet: &str, entry: &str) -> Vec<u8> {
    [twox_128(pallet.as_bytes()), twox_128(entry.as_bytes())].concat()
}

fn commitment_key(netuid: u16, hotkey: [u8; 32]) -> Vec<u8> {
    [
        prefix("Commitments", "CommitmentOf"),
        netuid.encode(),
        twox_64(&hotkey).to_vec(),
        hotkey.to_vec(),
    ]
    .concat()
}

/// The block a mortal era was born at, seen from `head`; 0 (genesis) when immortal.
fn era_birth(era: &[u8], head: u32) -> u32 {
    if era.first() == Some(&0) {
        return 0;
    }
    let encoded = u16::from_le_bytes([era[0], era[1]]);
    let period = 2u32 << (encoded % 16);
    let quantize = (period >> 12).max(1);
    let phase = u32::from(encoded >> 4) * quantize;
    (head.max(phase) - phase) / period * period + phase
}

fn spec_name_len(version: &[u8]) -> usize {
    let cursor = &mut &version[..];
    String::decode(cursor).unwrap();
    String::decode(cursor).unwrap();
    u32::decode(cursor).unwrap();
    version.len() - cursor.len()
}

fn versions(version: &[u8]) -> (u32, u32) {
    let cursor = &mut &version[..];
    String::decode(cursor).unwrap();
    String::decode(cursor).unwrap();
    let _authoring = u32::decode(cursor).unwrap();
    let spec = u32::decode(cursor).unwrap();
    let _impl = u32::decode(cursor).unwrap();
    Vec::<([u8; 8], u32)>::decode(cursor).unwrap();
    (spec, u32::decode(cursor).unwrap())
}

pub fn hex(bytes: &[u8]) -> String {
    format!(
        "0x{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn unhex(text: &str) -> Vec<u8> {
    let text = text.trim_start_matches("0x");
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect()
}
