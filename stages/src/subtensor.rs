//! Bittensor's extrinsics, encoded offline against runtime metadata with subxt: the call
//! data of `Commitments.set_commitment` and `SubtensorModule.set_weights`. The finney
//! metadata is kept in `fixtures/chain/finney.scale`; golden tests pin the bytes.
//!
//! Commitments hold `Data` fields: a 32-byte hash is committed as `Sha256`, other bytes as
//! `Raw{N}` (up to [`MAX_RAW_BYTES`]).

use subxt::config::substrate::{SpecVersionForRange, SubstrateConfig};
use subxt::dynamic::Value;
use subxt::metadata::Metadata;
use subxt::utils::H256;
use subxt::{OfflineClient, transactions};

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

    fn call_data(
        &self,
        pallet: &str,
        call: &str,
        fields: Vec<Value>,
    ) -> Result<Vec<u8>, EncodeError> {
        let at = self
            .client
            .at_block(0u64)
            .map_err(|e| EncodeError::Encode(e.to_string()))?;
        at.transactions()
            .call_data(&transactions::dynamic(pallet, call, fields))
            .map_err(|e| EncodeError::Encode(e.to_string()))
    }

    /// `Commitments.set_commitment(netuid, { fields: [data] })`.
    pub fn set_commitment(&self, netuid: u16, data: &CommitData) -> Result<Vec<u8>, EncodeError> {
        let field = match data {
            CommitData::Sha256(hash) => Value::unnamed_variant("Sha256", [Value::from_bytes(hash)]),
            CommitData::Raw(bytes) => {
                if bytes.len() > MAX_RAW_BYTES {
                    return Err(EncodeError::TooLarge(bytes.len()));
                }
                Value::unnamed_variant(format!("Raw{}", bytes.len()), [Value::from_bytes(bytes)])
            }
        };
        let info = Value::named_composite([("fields", Value::unnamed_composite([field]))]);
        self.call_data(
            "Commitments",
            "set_commitment",
            vec![Value::u128(u128::from(netuid)), info],
        )
    }

    /// `SubtensorModule.set_weights(netuid, dests, weights, version_key)`.
    pub fn set_weights(
        &self,
        netuid: u16,
        uids: &[u16],
        weights: &[u16],
        version_key: u64,
    ) -> Result<Vec<u8>, EncodeError> {
        if uids.len() != weights.len() {
            return Err(EncodeError::Lengths(uids.len(), weights.len()));
        }
        let list =
            |xs: &[u16]| Value::unnamed_composite(xs.iter().map(|&x| Value::u128(u128::from(x))));
        self.call_data(
            "SubtensorModule",
            "set_weights",
            vec![
                Value::u128(u128::from(netuid)),
                list(uids),
                list(weights),
                Value::u128(u128::from(version_key)),
            ],
        )
    }
}

/// What a commitment field holds on chain.
#[derive(Clone, Debug, PartialEq)]
pub enum CommitData {
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
