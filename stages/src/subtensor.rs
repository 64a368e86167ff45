//! Bittensor's extrinsics, encoded against runtime metadata with subxt: the calls of
//! `Commitments.set_commitment` and `SubtensorModule.set_weights`, and how a gradline
//! commitment is laid into the chain's commitment fields. The finney metadata is kept in
//! `fixtures/chain/finney.scale`; golden tests pin the bytes.
//!
//! A commitment holds up to three `Data` fields: a 32-byte hash is committed as `Sha256`,
//! other bytes as `Raw{N}` (up to [`MAX_RAW_BYTES`]). A gradline [`Commitment`] takes the
//! three fields by position — repo (text), revision (a 40-hex commit SHA as 20 raw bytes),
//! digest (`Sha256`) — with `None` for an absent one; a digest alone is one `Sha256` field.

use subxt::config::substrate::{SpecVersionForRange, SubstrateConfig};
use subxt::dynamic::Value;
use subxt::ext::codec::Decode;
use subxt::metadata::Metadata;
use subxt::transactions::DynamicPayload;
use subxt::utils::H256;
use subxt::{OfflineClient, transactions};

use crate::chain::Commitment;

/// The finney runtime metadata gradline encodes against unless told otherwise.
pub const FINNEY_METADATA: &[u8] = include_bytes!("../../fixtures/chain/finney.scale");

/// The longest `Raw` variant of the commitments pallet's `Data`.
pub const MAX_RAW_BYTES: usize = 128;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    #[error("the runtime metadata cannot be read: {0}")]
    Metadata(String),
    #[error("the commitment is {0} bytes; the chain takes at most {MAX_RAW_BYTES}")]
    TooLarge(usize),
    #[error("{0} uids but {1} weights")]
    Lengths(usize, usize),
    #[error("encoding the call: {0}")]
    Encode(String),
    #[error("the commitment's {0} must be {1}")]
    Field(&'static str, &'static str),
}

/// A runtime's metadata, ready to encode calls offline.
pub struct Runtime {
    client: OfflineClient<SubstrateConfig>,
}

impl Runtime {
    /// Reads SCALE-encoded metadata (`state_getMetadata`'s answer, or a `.scale` file).
    pub fn from_metadata(bytes: &[u8]) -> Result<Self, EncodeError> {
        let metadata =
            Metadata::decode_from(bytes).map_err(|e| EncodeError::Metadata(e.to_string()))?;
        let config = SubstrateConfig::builder()
            .set_genesis_hash(H256::zero())
            .set_spec_version_for_block_ranges([SpecVersionForRange {
                block_range: 0..u64::MAX,
                spec_version: 0,
                transaction_version: 0,
            }])
            .set_metadata_for_spec_versions([(0, metadata.arc())])
            .build();
        Ok(Self {
            client: OfflineClient::new_with_config(config),
        })
    }

    fn call_data(&self, call: &DynamicPayload<Vec<Value>>) -> Result<Vec<u8>, EncodeError> {
        let at = self
            .client
            .at_block(0u64)
            .map_err(|e| EncodeError::Encode(e.to_string()))?;
        at.transactions()
            .call_data(call)
            .map_err(|e| EncodeError::Encode(e.to_string()))
    }

    /// `Commitments.set_commitment(netuid, { fields })`: the call data.
    pub fn set_commitment(
        &self,
        netuid: u16,
        fields: &[CommitData],
    ) -> Result<Vec<u8>, EncodeError> {
        self.call_data(&commitment_call(netuid, fields)?)
    }

    /// `SubtensorModule.set_weights(netuid, dests, weights, version_key)`: the call data.
    pub fn set_weights(
        &self,
        netuid: u16,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<Vec<u8>, EncodeError> {
        self.call_data(&weights_call(netuid, uids, weights, version_key)?)
    }
}

/// `Commitments.set_commitment(netuid, { fields })`.
pub fn commitment_call(
    netuid: u16,
    fields: &[CommitData],
) -> Result<DynamicPayload<Vec<Value>>, EncodeError> {
    let fields = fields
        .iter()
        .map(|field| match field {
            CommitData::None => Ok(Value::unnamed_variant("None", [])),
            CommitData::Sha256(hash) => {
                Ok(Value::unnamed_variant("Sha256", [Value::from_bytes(hash)]))
            }
            CommitData::Raw(bytes) if bytes.len() > MAX_RAW_BYTES => {
                Err(EncodeError::TooLarge(bytes.len()))
            }
            CommitData::Raw(bytes) => Ok(Value::unnamed_variant(
                format!("Raw{}", bytes.len()),
                [Value::from_bytes(bytes)],
            )),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let info = Value::named_composite([("fields", Value::unnamed_composite(fields))]);
    Ok(transactions::dynamic(
        "Commitments",
        "set_commitment",
        vec![Value::u128(u128::from(netuid)), info],
    ))
}

/// `SubtensorModule.set_weights(netuid, dests, weights, version_key)`.
pub fn weights_call(
    netuid: u16,
    uids: &[u16],
    weights: &[u16],
    version_key: u64,
) -> Result<DynamicPayload<Vec<Value>>, EncodeError> {
    if uids.len() != weights.len() {
        return Err(EncodeError::Lengths(uids.len(), weights.len()));
    }
    let list =
        |xs: &[u16]| Value::unnamed_composite(xs.iter().map(|&x| Value::u128(u128::from(x))));
    Ok(transactions::dynamic(
        "SubtensorModule",
        "set_weights",
        vec![
            Value::u128(u128::from(netuid)),
            list(uids),
            list(weights),
            Value::u128(u128::from(version_key)),
        ],
    ))
}

/// What a commitment field holds on chain.
#[derive(Clone, Debug, PartialEq)]
pub enum CommitData {
    None,
    Sha256([u8; 32]),
    Raw(Vec<u8>),
}

impl CommitData {
    /// A 32-byte hash as `Sha256`; anything else as raw bytes.
    pub fn for_bytes(bytes: &[u8]) -> Self {
        match <[u8; 32]>::try_from(bytes) {
            Ok(hash) => CommitData::Sha256(hash),
            Err(_) => CommitData::Raw(bytes.to_vec()),
        }
    }
}

/// The chain fields of a commitment text: a gradline [`Commitment`] by position (see the
/// module's doc); any other text as one `Raw` field.
pub fn fields_of(text: &str) -> Result<Vec<CommitData>, EncodeError> {
    let fields = match Commitment::decode(text) {
        Some(Commitment {
            repo: None,
            revision: None,
            digest: Some(digest),
            ..
        }) => vec![CommitData::Sha256(digest_bytes(&digest)?)],
        Some(c) => vec![
            c.repo
                .map_or(CommitData::None, |r| CommitData::Raw(r.into_bytes())),
            match c.revision {
                Some(rev) => {
                    CommitData::Raw(crate::hex::decode(&rev).filter(|b| b.len() == 20).ok_or(
                        EncodeError::Field("revision", "a pinned commit SHA (40 hex)"),
                    )?)
                }
                None => CommitData::None,
            },
            match c.digest {
                Some(digest) => CommitData::Sha256(digest_bytes(&digest)?),
                None => CommitData::None,
            },
        ],
        None => vec![CommitData::Raw(text.as_bytes().to_vec())],
    };
    for field in &fields {
        if let CommitData::Raw(bytes) = field
            && bytes.len() > MAX_RAW_BYTES
        {
            return Err(EncodeError::TooLarge(bytes.len()));
        }
    }
    Ok(fields)
}

/// The commitment text of chain fields, as [`fields_of`] laid it out; `None` when the
/// fields are not text gradline reads (another subnet's binary format).
pub fn text_of(fields: &[CommitData]) -> Option<String> {
    let text = |field: &CommitData| match field {
        CommitData::Raw(bytes) => String::from_utf8(bytes.clone()).ok(),
        _ => None,
    };
    match fields {
        [CommitData::Sha256(digest)] => Some(
            Commitment {
                v: Commitment::VERSION,
                digest: Some(crate::hex::encode(digest)),
                ..Commitment::default()
            }
            .encode(),
        ),
        [single] => text(single),
        [repo, revision, digest] => {
            let revision = match revision {
                CommitData::None => None,
                CommitData::Raw(bytes) if bytes.len() == 20 => Some(crate::hex::encode(bytes)),
                _ => return None,
            };
            let digest = match digest {
                CommitData::None => None,
                CommitData::Sha256(hash) => Some(crate::hex::encode(hash)),
                _ => return None,
            };
            let repo = match repo {
                CommitData::None => None,
                other => Some(text(other)?),
            };
            Some(
                Commitment {
                    v: Commitment::VERSION,
                    repo,
                    revision,
                    digest,
                }
                .encode(),
            )
        }
        _ => None,
    }
}

/// The spec version of a runtime's metadata (its `System.Version` constant).
pub fn spec_version(metadata: &Metadata) -> Option<u32> {
    let constant = metadata
        .pallet_by_name("System")?
        .constant_by_name("Version")?;
    let cursor = &mut constant.value();
    let _spec_name = String::decode(cursor).ok()?;
    let _impl_name = String::decode(cursor).ok()?;
    let _authoring_version = u32::decode(cursor).ok()?;
    u32::decode(cursor).ok()
}

fn digest_bytes(digest: &str) -> Result<[u8; 32], EncodeError> {
    crate::hex::decode(digest.strip_prefix("blake3:").unwrap_or(digest))
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or(EncodeError::Field("digest", "a 32-byte hash (64 hex)"))
}
