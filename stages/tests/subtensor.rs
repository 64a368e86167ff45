//! Golden call data of Bittensor's extrinsics, encoded offline against the finney runtime
//! metadata (`fixtures/chain/finney.scale`). A change in these bytes is a change in what
//! gradline would submit to the chain.

use gradline_stages::subtensor::{
    CommitData, EncodeError, FINNEY_METADATA, Runtime, fields_of, spec_version, text_of,
};

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

#[test]
fn a_gradline_commitment_takes_three_fields_by_position() {
    let text = r#"{"v":1,"repo":"demo/ckpt","revision":"0123456789abcdef0123456789abcdef01234567","digest":"blake3:abababababababababababababababababababababababababababababababab"}"#;
    let fields = fields_of(text).unwrap();
    assert_eq!(fields.len(), 3);
    assert_eq!(fields[0], CommitData::Raw(b"demo/ckpt".to_vec()));
    assert!(
        matches!(&fields[1], CommitData::Raw(b) if b.len() == 20),
        "the SHA as 20 bytes"
    );
    assert_eq!(fields[2], CommitData::Sha256([0xab; 32]));
    let call = runtime().set_commitment(3, &fields).unwrap();
    assert_eq!(call[4], compact(3), "three fields");
    assert_eq!(
        call.len(),
        4 + 1 + (1 + 9) + (1 + 20) + (1 + 32),
        "{}",
        hex(&call)
    );

    let back = text_of(&fields).unwrap();
    assert_eq!(
        back,
        text.replace("blake3:", ""),
        "read back as written, digest as hex"
    );

    let repo_only = r#"{"v":1,"repo":"demo/ckpt"}"#;
    let fields = fields_of(repo_only).unwrap();
    assert_eq!(fields[1..], [CommitData::None, CommitData::None]);
    assert_eq!(text_of(&fields).unwrap(), repo_only);
}

#[test]
fn a_digest_alone_is_one_sha256_field_and_other_text_is_raw() {
    let digest_only = format!(r#"{{"v":1,"digest":"{}"}}"#, "cd".repeat(32));
    let fields = fields_of(&digest_only).unwrap();
    assert_eq!(fields, [CommitData::Sha256([0xcd; 32])]);
    assert_eq!(text_of(&fields).unwrap(), digest_only);

    assert_eq!(
        fields_of("bucket-key").unwrap(),
        [CommitData::Raw(b"bucket-key".to_vec())]
    );
    assert_eq!(
        text_of(&[CommitData::Raw(b"bucket-key".to_vec())]).unwrap(),
        "bucket-key"
    );
    assert_eq!(
        text_of(&[CommitData::Raw(vec![0xff, 0xfe])]),
        None,
        "not text"
    );
    assert_eq!(fields_of(&"x".repeat(129)), Err(EncodeError::TooLarge(129)));
    let branch = r#"{"v":1,"repo":"demo/ckpt","revision":"main"}"#;
    assert!(
        fields_of(branch)
            .unwrap_err()
            .to_string()
            .contains("pinned commit SHA"),
        "a branch name is not a pinned revision"
    );
}

#[test]
fn the_pinned_metadata_knows_its_spec_version() {
    let metadata = subxt::metadata::Metadata::decode_from(FINNEY_METADATA).unwrap();
    let spec = spec_version(&metadata).unwrap();
    assert!(spec > 200, "finney's runtime is past spec 200: {spec}");
}
