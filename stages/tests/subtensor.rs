//! Golden call data of Bittensor's extrinsics, encoded offline against the finney runtime
//! metadata (`fixtures/chain/finney.scale`). A change in these bytes is a change in what
//! gradline would submit to the chain.

use gradline_stages::subtensor::{CommitData, EncodeError, Runtime};

fn runtime() -> Runtime {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/chain/finney.scale"
    ))
    .unwrap();
    Runtime::from_metadata(&bytes).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SCALE's compact length prefix for small lengths.
fn compact(n: u8) -> u8 {
    n << 2
}

#[test]
fn set_weights_call_data() {
    let call = runtime()
        .set_weights(3, &[0, 1, 7], &[65535, 7282, 1], 42)
        .unwrap();
    let (pallet, index) = (call[0], call[1]);
    let mut args = vec![3, 0, compact(3)];
    for uid in [0u16, 1, 7] {
        args.extend(uid.to_le_bytes());
    }
    args.push(compact(3));
    for w in [65535u16, 7282, 1] {
        args.extend(w.to_le_bytes());
    }
    args.extend(42u64.to_le_bytes());
    assert_eq!(
        &call[2..],
        &args[..],
        "netuid u16, dests Vec<u16>, weights Vec<u16>, version_key u64"
    );
    assert_eq!(
        (pallet, index),
        (7, 0),
        "SubtensorModule is pallet 7, set_weights its call 0"
    );
    assert_eq!(hex(&call), GOLDEN_SET_WEIGHTS);
}

#[test]
fn set_commitment_call_data_for_a_hash_and_for_raw_bytes() {
    let runtime = runtime();
    let hash = *blake3::hash(b"checkpoint").as_bytes();
    let call = runtime
        .set_commitment(3, &[CommitData::for_bytes(&hash)])
        .unwrap();
    assert_eq!(&call[2..4], &[3, 0], "netuid");
    assert_eq!(
        (call[0], call[1]),
        (18, 0),
        "Commitments is pallet 18, set_commitment its call 0"
    );
    assert_eq!(call[4], compact(1), "one field");
    assert_eq!(
        call[5], 131,
        "Data::Sha256 (after None and Raw0..Raw128, BlakeTwo256)"
    );
    assert_eq!(
        &call[call.len() - 32..],
        &hash,
        "the hash itself ends the call"
    );
    assert_eq!(hex(&call), GOLDEN_COMMIT_HASH);

    let raw = b"{\"v\":1,\"revision\":\"0123456789abcdef0123456789abcdef01234567\"}";
    let call = runtime
        .set_commitment(3, &[CommitData::for_bytes(raw)])
        .unwrap();
    assert_eq!(
        call[5],
        raw.len() as u8 + 1,
        "Data::Raw{{N}} is variant N + 1"
    );
    assert_eq!(&call[call.len() - raw.len()..], raw);
    assert_eq!(hex(&call), GOLDEN_COMMIT_RAW);

    let too_long = vec![b'x'; 129];
    assert_eq!(
        runtime.set_commitment(3, &[CommitData::for_bytes(&too_long)]),
        Err(EncodeError::TooLarge(129))
    );
}

#[test]
fn mismatched_weights_are_refused() {
    assert_eq!(
        runtime().set_weights(1, &[0, 1], &[1], 0),
        Err(EncodeError::Lengths(2, 1))
    );
}

const GOLDEN_SET_WEIGHTS: &str = "070003000c0000010007000cffff721c01002a00000000000000";
const GOLDEN_COMMIT_HASH: &str =
    "12000300048363741c69a919dad18d61f2f5a91477ac370eb1b3c70ee6bb45d842185eb6e5b3";
const GOLDEN_COMMIT_RAW: &str = "12000300043e7b2276223a312c227265766973696f6e223a2230313233343536373839616263646566303132333435363738396162636465663031323334353637227d";
