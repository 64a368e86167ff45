//! Signed statements between roles that do not trust each other: an orchestrator's job, a
//! miner's receipt of what it produced for that job, a validator's verdict. Each is signed
//! with sr25519 over a domain tag and its canonical JSON, so a signature for one kind of
//! statement never passes for another. Checks say why a statement is refused: a bad
//! signature (forged or altered), the wrong signer, another window (replayed), a job past
//! its deadline, a receipt for another job.

use gradline_engine::effects::{Effects, Request};
use gradline_engine::runtime::StageError;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use subxt_signer::sr25519::{self, Keypair, PublicKey, Signature};

/// A statement kind and the tag its signatures are bound to.
pub trait Statement: Serialize + DeserializeOwned {
    const DOMAIN: &'static str;
}

/// A statement with its signer's public key and signature (both `0x` hex).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signed<T> {
    pub body: T,
    pub signer: String,
    pub signature: String,
}

/// Why a statement is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("the signature does not match the statement (forged or altered)")]
    BadSignature,
    #[error("signed by {got}, not by {expected}")]
    WrongSigner { expected: String, got: String },
    #[error("made for window {made}, but this is window {current} (replayed)")]
    OtherWindow { made: u64, current: u64 },
    #[error("the job's deadline was block {deadline}; it is block {block}")]
    PastDeadline { deadline: u64, block: u64 },
    #[error("the receipt is for job {receipt}, not for job {job}")]
    OtherJob { receipt: String, job: String },
    #[error("the receipt is from uid {receipt}, but the job was given to uid {job}")]
    OtherMiner { receipt: u16, job: u16 },
    #[error("malformed: {0}")]
    Malformed(String),
}

impl<T: Statement> Signed<T> {
    pub fn sign(body: T, key: &Keypair) -> Self {
        let signature = key.sign(&message::<T>(&body));
        Self {
            body,
            signer: crate::hex::encode_0x(&key.public_key().0),
            signature: crate::hex::encode_0x(&signature.0),
        }
    }

    /// The body, when its signature holds and it is signed by `signer` (`0x` hex public key).
    pub fn verify(&self, signer: &str) -> Result<&T, Rejection> {
        if !self.signer.eq_ignore_ascii_case(signer) {
            return Err(Rejection::WrongSigner {
                expected: signer.to_owned(),
                got: self.signer.clone(),
            });
        }
        let public: [u8; 32] = crate::hex::decode(&self.signer)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Rejection::Malformed("the signer is not a 32-byte key".into()))?;
        let signature: [u8; 64] = crate::hex::decode(&self.signature)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Rejection::Malformed("the signature is not 64 bytes".into()))?;
        match sr25519::verify(
            &Signature(signature),
            message::<T>(&self.body),
            &PublicKey(public),
        ) {
            true => Ok(&self.body),
            false => Err(Rejection::BadSignature),
        }
    }

    /// What identifies this statement: blake3 of its tag, body and signature.
    pub fn digest(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&message::<T>(&self.body));
        hasher.update(self.signature.as_bytes());
        hasher.finalize().to_hex().to_string()
    }
}

/// Work an orchestrator gives a miner for one window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub window: u64,
    /// The block after which the work is no longer taken.
    pub deadline_block: u64,
    pub miner_uid: u16,
    pub fragment: u32,
    /// The fragment's tensors, by name: the only ones the miner may change.
    pub tensors: Vec<String>,
    /// The token shard (its name in the shard index) and where in it the batch starts.
    pub shard: String,
    pub offset: u64,
    /// How many tokens from `offset` the job covers.
    pub tokens: u64,
    /// The digest of the checkpoint the work starts from.
    pub checkpoint: String,
    /// The hub revision that checkpoint was published at (empty when it came from a store).
    pub revision: String,
}

impl Statement for Job {
    const DOMAIN: &'static str = "gradline.job.v1";
}

/// What a miner produced for a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub window: u64,
    /// The [`Signed::digest`] of the job.
    pub job: String,
    pub miner_uid: u16,
    /// The digest of the uploaded result.
    pub produced: String,
    pub bytes: u64,
}

impl Statement for Receipt {
    const DOMAIN: &'static str = "gradline.receipt.v1";
}

/// A validator's judgement of one miner's work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub window: u64,
    pub miner_uid: u16,
    pub checks: Vec<Check>,
    pub score: f64,
    /// The digest of the work judged (a gradient, a fragment state), when there was one: what
    /// an orchestrator releasing accepted work matches its downloads against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub work: Option<String>,
}

impl Verdict {
    pub fn accepted(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

impl Statement for Verdict {
    const DOMAIN: &'static str = "gradline.verdict.v1";
}

/// One check of a verdict; a failed one says why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A job a miner may work on: signed by the orchestrator, for this window, not yet due.
pub fn check_job<'a>(
    job: &'a Signed<Job>,
    orchestrator: &str,
    window: u64,
    block: u64,
) -> Result<&'a Job, Rejection> {
    let body = job.verify(orchestrator)?;
    if body.window != window {
        return Err(Rejection::OtherWindow {
            made: body.window,
            current: window,
        });
    }
    if block > body.deadline_block {
        return Err(Rejection::PastDeadline {
            deadline: body.deadline_block,
            block,
        });
    }
    Ok(body)
}

/// A receipt a validator may credit: the job holds (as [`check_job`] at the receipt's
/// block), and the receipt is signed by the miner, for that job, in that window.
pub fn check_receipt<'a>(
    receipt: &'a Signed<Receipt>,
    miner: &str,
    job: &Signed<Job>,
    orchestrator: &str,
    window: u64,
    block: u64,
) -> Result<&'a Receipt, Rejection> {
    let job_body = check_job(job, orchestrator, window, block)?;
    let body = receipt.verify(miner)?;
    if body.window != window {
        return Err(Rejection::OtherWindow {
            made: body.window,
            current: window,
        });
    }
    if body.job != job.digest() {
        return Err(Rejection::OtherJob {
            receipt: body.job.clone(),
            job: job.digest(),
        });
    }
    if body.miner_uid != job_body.miner_uid {
        return Err(Rejection::OtherMiner {
            receipt: body.miner_uid,
            job: job_body.miner_uid,
        });
    }
    Ok(body)
}

/// Signs a statement with the role's key, which the `keys` system holds
/// ([`crate::live::signer`]).
pub async fn sign_with<T: Statement>(effects: &Effects, body: T) -> Result<Signed<T>, StageError> {
    let request = Request::new(
        "keys",
        "sign",
        serde_json::json!({ "message": crate::hex::encode_0x(&message::<T>(&body)) }),
    );
    let answer = effects
        .call(request)
        .await
        .map_err(|e| StageError::from(e).context(format!("signing a {}", T::DOMAIN)))?;
    let field = |name: &str| {
        answer.value[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| StageError::final_(format!("the keys system gave no {name}")))
    };
    let signed = Signed {
        body,
        signer: field("signer")?,
        signature: field("signature")?,
    };
    let signer = signed.signer.clone();
    signed
        .verify(&signer)
        .map_err(|e| StageError::final_(format!("the key's own signature fails: {e}")))?;
    Ok(signed)
}

/// A hotkey as statements name signers (`0x` hex public key), from the hex the ledger uses
/// or the SS58 address subtensor uses.
pub fn signer_of_hotkey(hotkey: &str) -> Option<String> {
    let text = hotkey.trim();
    if let Some(bytes) = crate::hex::decode(text)
        && bytes.len() == 32
    {
        return Some(crate::hex::encode_0x(&bytes));
    }
    let account: subxt::utils::AccountId32 = text.parse().ok()?;
    Some(crate::hex::encode_0x(&account.0))
}

/// The signer a hotkey setting names, or an error naming the setting.
pub fn signer_setting(setting: &str, hotkey: &str) -> Result<String, StageError> {
    signer_of_hotkey(hotkey).ok_or_else(|| {
        StageError::final_(format!(
            "`{setting}` is not a hotkey (hex or SS58): `{hotkey}`"
        ))
    })
}

/// The `0x` hex public key of a keypair, as statements name their signers.
pub fn signer_of(key: &Keypair) -> String {
    crate::hex::encode_0x(&key.public_key().0)
}

/// The bytes a signature covers: the domain tag, a zero byte, the body's JSON. Floats in a
/// body survive a JSON round trip exactly (serde_json's `float_roundtrip`), so a statement
/// read back from a file verifies.
fn message<T: Statement>(body: &T) -> Vec<u8> {
    let mut message = T::DOMAIN.as_bytes().to_vec();
    message.push(0);
    message.extend(serde_json::to_vec(body).unwrap_or_default());
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> Keypair {
        Keypair::from_secret_key([seed; 32]).unwrap()
    }

    fn job(window: u64) -> Job {
        Job {
            window,
            deadline_block: 100,
            miner_uid: 4,
            fragment: 7,
            tensors: vec!["h.0.mlp.c_fc.weight".into()],
            shard: "shard-0003".into(),
            offset: 128,
            tokens: 513,
            checkpoint: "ab".repeat(32),
            revision: "cd".repeat(20),
        }
    }

    fn receipt_for(job: &Signed<Job>, miner: &Keypair) -> Signed<Receipt> {
        Signed::sign(
            Receipt {
                window: job.body.window,
                job: job.digest(),
                miner_uid: 4,
                produced: "cd".repeat(32),
                bytes: 1024,
            },
            miner,
        )
    }

    #[test]
    fn an_honest_job_and_receipt_pass() {
        let (orchestrator, miner) = (key(1), key(2));
        let signed = Signed::sign(job(9), &orchestrator);
        assert_eq!(
            check_job(&signed, &signer_of(&orchestrator), 9, 50),
            Ok(&signed.body)
        );
        let receipt = receipt_for(&signed, &miner);
        let credited = check_receipt(
            &receipt,
            &signer_of(&miner),
            &signed,
            &signer_of(&orchestrator),
            9,
            60,
        );
        assert_eq!(credited, Ok(&receipt.body));
        let text = serde_json::to_string(&receipt).unwrap();
        let back: Signed<Receipt> = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verify(&signer_of(&miner)), Ok(&receipt.body));
    }

    #[test]
    fn forged_altered_and_replayed_jobs_are_refused_with_a_reason() {
        let (orchestrator, stranger) = (key(1), key(3));
        let boss = signer_of(&orchestrator);
        let forged = Signed::sign(job(9), &stranger);
        assert!(matches!(
            check_job(&forged, &boss, 9, 50),
            Err(Rejection::WrongSigner { .. })
        ));
        let mut posing = forged.clone();
        posing.signer = boss.clone();
        assert_eq!(
            check_job(&posing, &boss, 9, 50),
            Err(Rejection::BadSignature)
        );
        let mut altered = Signed::sign(job(9), &orchestrator);
        altered.body.fragment = 8;
        assert_eq!(
            check_job(&altered, &boss, 9, 50),
            Err(Rejection::BadSignature)
        );
        let old = Signed::sign(job(8), &orchestrator);
        assert_eq!(
            check_job(&old, &boss, 9, 50),
            Err(Rejection::OtherWindow {
                made: 8,
                current: 9
            })
        );
        let due = Signed::sign(job(9), &orchestrator);
        assert_eq!(
            check_job(&due, &boss, 9, 101),
            Err(Rejection::PastDeadline {
                deadline: 100,
                block: 101
            })
        );
        let mut garbled = due.clone();
        garbled.signature = "0x12".into();
        assert!(matches!(
            check_job(&garbled, &boss, 9, 50),
            Err(Rejection::Malformed(_))
        ));
    }

    #[test]
    fn receipts_for_another_job_window_or_miner_are_refused() {
        let (orchestrator, miner, other) = (key(1), key(2), key(5));
        let (boss, me) = (signer_of(&orchestrator), signer_of(&miner));
        let signed = Signed::sign(job(9), &orchestrator);
        let mut another = job(9);
        another.fragment = 1;
        let another = Signed::sign(another, &orchestrator);
        let receipt = receipt_for(&another, &miner);
        assert!(matches!(
            check_receipt(&receipt, &me, &signed, &boss, 9, 60),
            Err(Rejection::OtherJob { .. })
        ));
        let stolen = receipt_for(&signed, &other);
        assert!(matches!(
            check_receipt(&stolen, &me, &signed, &boss, 9, 60),
            Err(Rejection::WrongSigner { .. })
        ));
        let mut body = receipt_for(&signed, &miner).body;
        body.miner_uid = 5;
        let posing = Signed::sign(body, &miner);
        assert_eq!(
            check_receipt(&posing, &me, &signed, &boss, 9, 60),
            Err(Rejection::OtherMiner { receipt: 5, job: 4 })
        );
        let replayed = receipt_for(&signed, &miner);
        assert!(matches!(
            check_receipt(&replayed, &me, &signed, &boss, 10, 60),
            Err(Rejection::OtherWindow { .. })
        ));
    }

    #[test]
    fn hotkeys_in_hex_or_ss58_name_the_same_signer() {
        let miner = key(2);
        let hex = crate::hex::encode(&miner.public_key().0);
        let ss58 = miner.public_key().to_account_id().to_string();
        assert_eq!(signer_of_hotkey(&hex), Some(signer_of(&miner)));
        assert_eq!(signer_of_hotkey(&ss58), Some(signer_of(&miner)));
        assert_eq!(signer_of_hotkey("not a key"), None);
    }

    #[test]
    fn a_verdict_with_any_score_verifies_after_a_trip_through_json() {
        let validator = key(7);
        for score in [0.1071157580657912, 1.0 / 3.0, 2.0e-9, 0.0] {
            let signed = Signed::sign(
                Verdict {
                    window: 1,
                    miner_uid: 2,
                    checks: Vec::new(),
                    score,
                    work: None,
                },
                &validator,
            );
            let text = serde_json::to_string(&signed).unwrap();
            let back: Signed<Verdict> = serde_json::from_str(&text).unwrap();
            assert!(back.verify(&signer_of(&validator)).is_ok(), "{score}");
        }
    }

    #[test]
    fn a_signature_binds_its_statement_kind() {
        let validator = key(7);
        let verdict = Signed::sign(
            Verdict {
                window: 9,
                miner_uid: 4,
                checks: vec![
                    Check {
                        name: "digest".into(),
                        passed: true,
                        reason: None,
                    },
                    Check {
                        name: "signature".into(),
                        passed: false,
                        reason: Some("bad signature".into()),
                    },
                ],
                score: 0.0,
                work: None,
            },
            &validator,
        );
        let checked = verdict.verify(&signer_of(&validator)).unwrap();
        assert!(!checked.accepted());
        // The same fields and signature presented as another kind of statement fail.
        #[derive(Serialize, Deserialize)]
        struct Twin(Job);
        impl Statement for Twin {
            const DOMAIN: &'static str = "gradline.other.v1";
        }
        let signed = Signed::sign(job(9), &validator);
        let twin = Signed {
            body: Twin(signed.body.clone()),
            signer: signed.signer.clone(),
            signature: signed.signature.clone(),
        };
        assert!(matches!(
            twin.verify(&signer_of(&validator)),
            Err(Rejection::BadSignature)
        ));
    }
}
