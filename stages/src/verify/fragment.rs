//! Integrity of fragment work, each a named [`Check`] that says why it failed: the miner's
//! job is signed by the orchestrator, for this window, not past its deadline; its receipt is
//! signed by the miner's hotkey, for that job, in this window; the state the receipt names
//! was downloaded with that digest; and it holds exactly the job's tensors, in the
//! checkpoint's shapes, every value finite.

use std::collections::{BTreeMap, BTreeSet};

use crate::signed::{self, Check, Job, Receipt, Signed};
use crate::tensors::TensorSet;

use super::integrity::{fail, normalize, pass};

/// What one miner's work is checked against.
pub struct Context<'a> {
    /// The orchestrator's signer (`0x` hex public key).
    pub orchestrator: &'a str,
    pub window: u64,
    pub block: u64,
    /// The checkpoint's tensor shapes by name; without it only the job's names bound a state.
    pub shapes: Option<&'a BTreeMap<String, Vec<usize>>>,
    /// Every signed job of this window.
    pub jobs: &'a [Signed<Job>],
    /// Every receipt downloaded.
    pub receipts: &'a [Signed<Receipt>],
    /// Every state downloaded, `(digest, bytes)`.
    pub states: &'a [(String, Vec<u8>)],
}

/// The checks of one miner's fragment work, and which state (index into
/// [`Context::states`]) they passed for.
pub fn check(uid: u16, hotkey: &str, cx: &Context) -> (Vec<Check>, Option<usize>) {
    let mut checks = Vec::new();
    let Some(job) = cx.jobs.iter().find(|j| j.body.miner_uid == uid) else {
        checks.push(fail(
            "job",
            format!("no job was given to uid {uid} this window"),
        ));
        return (checks, None);
    };
    if let Err(why) = signed::check_job(job, cx.orchestrator, cx.window, cx.block) {
        checks.push(fail("job", why.to_string()));
        return (checks, None);
    }
    checks.push(pass("job"));
    let Some(receipt) = cx.receipts.iter().find(|r| r.body.miner_uid == uid) else {
        checks.push(fail("receipt", "the miner sent no receipt"));
        return (checks, None);
    };
    let Some(miner) = signed::signer_of_hotkey(hotkey) else {
        checks.push(fail("receipt", format!("hotkey `{hotkey}` is not a key")));
        return (checks, None);
    };
    let body =
        match signed::check_receipt(receipt, &miner, job, cx.orchestrator, cx.window, cx.block) {
            Ok(body) => body,
            Err(why) => {
                checks.push(fail("receipt", why.to_string()));
                return (checks, None);
            }
        };
    checks.push(pass("receipt"));
    let produced = normalize(&body.produced);
    let Some(at) = cx.states.iter().position(|(d, _)| normalize(d) == produced) else {
        checks.push(fail(
            "digest",
            "no downloaded state has the digest the receipt names (missing, or altered after signing)",
        ));
        return (checks, None);
    };
    checks.push(pass("digest"));
    match fits(&cx.states[at].1, &job.body, cx.shapes) {
        Ok(()) => {
            checks.push(pass("decodable"));
            (checks, Some(at))
        }
        Err(why) => {
            checks.push(fail("decodable", why));
            (checks, None)
        }
    }
}

/// The state holds exactly the job's tensors, in the checkpoint's shapes, all finite.
fn fits(
    bytes: &[u8],
    job: &Job,
    shapes: Option<&BTreeMap<String, Vec<usize>>>,
) -> Result<(), String> {
    let state = TensorSet::from_safetensors(bytes).map_err(|e| e.to_string())?;
    let names: BTreeSet<&str> = state
        .layout
        .tensors
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    let wanted: BTreeSet<&str> = job.tensors.iter().map(String::as_str).collect();
    if names != wanted {
        let extra: Vec<&str> = names.difference(&wanted).copied().collect();
        let missing: Vec<&str> = wanted.difference(&names).copied().collect();
        return Err(format!(
            "the state's tensors are not fragment {}'s: extra {extra:?}, missing {missing:?}",
            job.fragment
        ));
    }
    if let Some(shapes) = shapes {
        for ((name, _), shape) in state.layout.tensors.iter().zip(&state.shapes) {
            match shapes.get(name) {
                Some(want) if want == shape => {}
                Some(want) => {
                    return Err(format!(
                        "tensor `{name}` has shape {shape:?}, the checkpoint's is {want:?}"
                    ));
                }
                None => return Err(format!("tensor `{name}` is not in the checkpoint")),
            }
        }
    }
    match state.values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(format!("value {i} is not finite")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use subxt_signer::sr25519::Keypair;

    use super::*;
    use crate::signed::signer_of;

    fn key(seed: u8) -> Keypair {
        Keypair::from_secret_key([seed; 32]).unwrap()
    }

    fn state(names: &[&str], value: f32) -> Vec<u8> {
        let mut set = TensorSet::flat(Vec::new());
        set.layout.tensors.clear();
        set.shapes.clear();
        for name in names {
            set.layout.tensors.push(((*name).to_owned(), 2));
            set.shapes.push(vec![2]);
            set.values.extend([value, value]);
        }
        set.to_safetensors("fragment-state").unwrap()
    }

    fn job(window: u64, uid: u16) -> Job {
        Job {
            window,
            deadline_block: 100,
            miner_uid: uid,
            fragment: 1,
            tensors: vec!["a".into(), "b".into()],
            shard: "shard_000000.bin".into(),
            offset: 0,
            tokens: 257,
            checkpoint: "00".repeat(32),
            revision: String::new(),
        }
    }

    fn receipt(job: &Signed<Job>, produced: &[u8], miner: &Keypair) -> Signed<Receipt> {
        Signed::sign(
            Receipt {
                window: job.body.window,
                job: job.digest(),
                miner_uid: job.body.miner_uid,
                produced: blake3::hash(produced).to_hex().to_string(),
                bytes: produced.len() as u64,
            },
            miner,
        )
    }

    struct Case {
        jobs: Vec<Signed<Job>>,
        receipts: Vec<Signed<Receipt>>,
        states: Vec<(String, Vec<u8>)>,
    }

    impl Case {
        fn failures(&self, uid: u16, miner: &Keypair, window: u64) -> Vec<(String, String)> {
            let orchestrator = signer_of(&key(1));
            let shapes = BTreeMap::from([("a".to_owned(), vec![2]), ("b".to_owned(), vec![2])]);
            let cx = Context {
                orchestrator: &orchestrator,
                window,
                block: 50,
                shapes: Some(&shapes),
                jobs: &self.jobs,
                receipts: &self.receipts,
                states: &self.states,
            };
            let hotkey = crate::hex::encode(&miner.public_key().0);
            let (checks, accepted) = check(uid, &hotkey, &cx);
            let failed: Vec<(String, String)> = checks
                .into_iter()
                .filter(|c| !c.passed)
                .map(|c| (c.name, c.reason.unwrap_or_default()))
                .collect();
            assert_eq!(accepted.is_some(), failed.is_empty(), "{failed:?}");
            failed
        }
    }

    fn honest(window: u64, miner: &Keypair, bytes: Vec<u8>) -> Case {
        let job = Signed::sign(job(window, 4), &key(1));
        let receipt = receipt(&job, &bytes, miner);
        let digest = blake3::hash(&bytes).to_hex().to_string();
        Case {
            jobs: vec![job],
            receipts: vec![receipt],
            states: vec![(digest, bytes)],
        }
    }

    #[test]
    fn honest_work_passes() {
        let miner = key(2);
        let case = honest(7, &miner, state(&["a", "b"], 0.5));
        assert!(case.failures(4, &miner, 7).is_empty());
    }

    #[test]
    fn a_replayed_receipt_is_refused() {
        let miner = key(2);
        // Last window's job and receipt, presented again in window 8.
        let old = honest(7, &miner, state(&["a", "b"], 0.5));
        let failed = old.failures(4, &miner, 8);
        assert_eq!(failed[0].0, "job");
        assert!(failed[0].1.contains("replayed"), "{failed:?}");
        // Last window's receipt beside this window's job.
        let mut mixed = honest(8, &miner, state(&["a", "b"], 0.5));
        mixed.receipts = old.receipts;
        let failed = mixed.failures(4, &miner, 8);
        assert_eq!(failed[0].0, "receipt");
        assert!(failed[0].1.contains("replayed"), "{failed:?}");
    }

    #[test]
    fn an_altered_receipt_or_state_and_a_stranger_are_refused() {
        let miner = key(2);
        let mut altered = honest(7, &miner, state(&["a", "b"], 0.5));
        altered.receipts[0].body.bytes += 1;
        let failed = altered.failures(4, &miner, 7);
        assert_eq!(failed[0].0, "receipt");
        assert!(failed[0].1.contains("forged or altered"), "{failed:?}");

        let mut swapped = honest(7, &miner, state(&["a", "b"], 0.5));
        let other = state(&["a", "b"], 9.0);
        swapped.states = vec![(blake3::hash(&other).to_hex().to_string(), other)];
        assert_eq!(swapped.failures(4, &miner, 7)[0].0, "digest");

        let case = honest(7, &key(3), state(&["a", "b"], 0.5));
        let failed = case.failures(4, &miner, 7);
        assert!(failed[0].1.contains("signed by"), "{failed:?}");

        let mut forged = honest(7, &miner, state(&["a", "b"], 0.5));
        forged.jobs = vec![Signed::sign(job(7, 4), &key(9))];
        assert_eq!(forged.failures(4, &miner, 7)[0].0, "job");
    }

    #[test]
    fn a_state_outside_the_fragment_or_its_shapes_is_refused() {
        let miner = key(2);
        let case = honest(7, &miner, state(&["a", "c"], 0.5));
        let failed = case.failures(4, &miner, 7);
        assert_eq!(failed[0].0, "decodable");
        assert!(failed[0].1.contains("extra [\"c\"]"), "{failed:?}");
        let case = honest(7, &miner, state(&["a", "b"], f32::NAN));
        assert!(case.failures(4, &miner, 7)[0].1.contains("not finite"));
        let lazy = Case {
            receipts: Vec::new(),
            states: Vec::new(),
            ..honest(7, &miner, state(&["a", "b"], 0.5))
        };
        assert_eq!(
            lazy.failures(4, &miner, 7),
            [("receipt".to_owned(), "the miner sent no receipt".to_owned())]
        );
    }
}
