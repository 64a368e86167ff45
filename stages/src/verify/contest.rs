//! The distillation contest, as a validator runs it: pre-checks of each committed model from
//! the hub (see [`super::precheck`]), then king of the hill by KL(teacher ‖ student): the king
//! and every new challenger are scored on the same block-seeded prompts; a challenger takes
//! the crown only with a KL lower than the king's by more than `epsilon`; a challenger's
//! score is final once evaluated; a functional copy (per-position KL vectors nearly parallel
//! to another model's) is flagged. What must outlive a cycle is carried in `history`.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gradline_engine::expr::Val;
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::precheck::{self, Candidate, Facts, History, Rules};
use super::{Judged, Verify, emit};
use crate::data::assign;
use crate::hub::{self, GetArgs, HeaderArgs};
use crate::miners::{text_of, uid_of};
use crate::model::distill::{self, Teacher};
use crate::model::{Cpu, Gpt, checkpoint};
use crate::train::{shard_index, shard_tokens};

use super::integrity::{fail, pass};

const WEIGHTS_FILE: &str = "model.safetensors";
const CONFIG_FILE: &str = "config.json";
const MAX_CONFIG_BYTES: u64 = 1 << 20;
const MAX_MODEL_BYTES: u64 = 64 << 30;

/// The contest's memory: the king, and the final KL of every challenger evaluated.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Contest {
    pub king: Option<Crowned>,
    /// `hotkey@revision` → its KL when it was evaluated.
    pub finals: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Crowned {
    pub uid: u16,
    pub hotkey: String,
    pub revision: String,
}

/// What one evaluation decided.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// The king keeps the crown.
    Kept,
    /// This challenger (index into the challengers) takes it.
    Dethroned(usize),
}

/// King of the hill: the challenger with the lowest KL takes the crown when there is no
/// king, or when its KL is below the king's by more than `epsilon` (a fraction).
pub fn crown(king: Option<f64>, challengers: &[Option<f64>], epsilon: f64) -> Decision {
    let best = challengers
        .iter()
        .enumerate()
        .filter_map(|(i, kl)| kl.map(|kl| (i, kl)))
        .min_by(|a, b| a.1.total_cmp(&b.1));
    match (king, best) {
        (_, None) => Decision::Kept,
        (None, Some((i, _))) => Decision::Dethroned(i),
        (Some(king), Some((i, kl))) if kl < king * (1.0 - epsilon) => Decision::Dethroned(i),
        (Some(_), Some(_)) => Decision::Kept,
    }
}

/// The cosine of two dense vectors (0 when either is zero).
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut aa, mut bb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    dot / (aa.sqrt() * bb.sqrt())
}

fn key(candidate: &Candidate) -> String {
    format!("{}@{}", candidate.hotkey, candidate.revision)
}

impl Verify {
    /// Pre-checks of every committed model, in commitment order.
    pub(super) async fn precheck(&self, cx: &StageRun) -> Result<Outputs, StageError> {
        let mut candidates = self.candidates(cx)?;
        candidates.sort_by_key(|(_, c)| (c.block, c.uid));
        let mut history: History = carried(cx).await;
        let rules = Rules {
            max_params: match &self.max_params {
                Some(max) => cx.get(max)?,
                None => return Err(StageError::final_("`max_params` is missing")),
            },
            vocab_size: self.vocab_size.as_ref().map(|v| cx.get(v)).transpose()?,
            dtypes: &self.dtypes,
        };
        let mut judged = Vec::new();
        for (record, candidate) in &candidates {
            let checks = match candidate.pinned() {
                Err(why) => vec![fail("pinned", why)],
                Ok(()) => {
                    let facts = facts(cx, candidate).await;
                    precheck::check(candidate, &facts, &rules, &mut history)
                }
            };
            let passed = checks.iter().all(|c| c.passed);
            cx.progress(
                judged.len() as u64 + 1,
                candidates.len() as u64,
                format!(
                    "uid {}: {}",
                    candidate.uid,
                    if passed { "ok" } else { "refused" }
                ),
            );
            judged.push(Judged {
                uid: candidate.uid,
                checks,
                score: if passed { 1.0 } else { 0.0 },
                work: Some(record.clone()),
            });
        }
        let mut out = emit(cx, judged).await?;
        out.insert("history".to_owned(), keep(cx, &history).await?);
        Ok(out)
    }

    /// King of the hill by KL on block-seeded prompts.
    pub(super) async fn kl(&self, cx: &StageRun) -> Result<Outputs, StageError> {
        let mut candidates = self.candidates(cx)?;
        candidates.sort_by_key(|(_, c)| (c.block, c.uid));
        let candidates: Vec<Candidate> = candidates.into_iter().map(|(_, c)| c).collect();
        let mut contest: Contest = carried(cx).await;
        let epsilon = cx.get(&self.epsilon)?;
        let threshold = cx.get(&self.copy_threshold)?;
        let king = contest.king.as_ref().and_then(|k| {
            candidates
                .iter()
                .find(|c| c.hotkey == k.hotkey && c.revision == k.revision)
        });
        let challengers: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| !contest.finals.contains_key(&key(c)))
            .filter(|c| Some(*c) != king)
            .collect();
        let mut judged = Vec::new();
        let mut kls: HashMap<String, (f64, Vec<f32>)> = HashMap::new();
        let mut unscorable: HashMap<String, String> = HashMap::new();
        if !challengers.is_empty() {
            let teacher = Arc::new(self.teacher(cx).await?);
            let evaluated = king.into_iter().chain(challengers.iter().copied());
            let total = challengers.len() + usize::from(king.is_some());
            for (n, candidate) in evaluated.enumerate() {
                match score(cx, teacher.clone(), candidate).await {
                    Ok(vector) => {
                        let mean = vector.iter().map(|&k| f64::from(k)).sum::<f64>()
                            / vector.len().max(1) as f64;
                        cx.progress(
                            n as u64 + 1,
                            total as u64,
                            format!("uid {}: KL {mean:.5}", candidate.uid),
                        );
                        kls.insert(key(candidate), (mean, vector));
                    }
                    Err(why) => {
                        unscorable.insert(key(candidate), why);
                    }
                }
            }
        }
        // Functional copies: nearly the same KL at every position as a model committed
        // earlier (the king, or a challenger before it).
        let mut copies: HashMap<String, u16> = HashMap::new();
        let mut earlier: Vec<&Candidate> = king.into_iter().collect();
        for challenger in &challengers {
            if let Some((_, vector)) = kls.get(&key(challenger)) {
                let original = earlier.iter().find(|e| {
                    kls.get(&key(e))
                        .is_some_and(|(_, other)| cosine(vector, other) > threshold)
                });
                if let Some(original) = original {
                    copies.insert(key(challenger), original.uid);
                }
                earlier.push(challenger);
            }
        }
        let king_kl = king.and_then(|k| kls.get(&key(k)).map(|(kl, _)| *kl));
        let eligible: Vec<Option<f64>> = challengers
            .iter()
            .map(|c| match copies.contains_key(&key(c)) {
                true => None,
                false => kls.get(&key(c)).map(|(kl, _)| *kl),
            })
            .collect();
        // A king that could not be scored this round cannot hold off a challenger.
        let crowned: Option<&Candidate> = match crown(king_kl, &eligible, epsilon) {
            Decision::Dethroned(i) => Some(challengers[i]),
            Decision::Kept => king,
        };
        for candidate in &candidates {
            let k = key(candidate);
            let is_king = crowned == Some(candidate);
            let mut checks = Vec::new();
            if let Some(why) = unscorable.get(&k) {
                checks.push(fail("kl", why.clone()));
            } else if let Some((kl, _)) = kls.get(&k) {
                checks.push(pass("kl"));
                if let Some(original) = copies.get(&k) {
                    checks.push(fail(
                        "original",
                        format!("a functional copy of uid {original}'s model (the same KL at every position)"),
                    ));
                } else if !is_king {
                    let reason = match king_kl
                        .or_else(|| crowned.and_then(|c| kls.get(&key(c)).map(|(kl, _)| *kl)))
                    {
                        Some(best) => format!(
                            "KL {kl:.5} is not more than {:.2}% below the king's {best:.5}",
                            epsilon * 100.0
                        ),
                        None => format!("KL {kl:.5} did not take the crown"),
                    };
                    checks.push(fail("crown", reason));
                }
            } else if let Some(kl) = contest.finals.get(&k) {
                checks.push(fail(
                    "crown",
                    format!("evaluated in an earlier round (KL {kl:.5}); scores are final"),
                ));
            }
            if is_king {
                checks.push(pass("crown"));
            }
            // A model that could not be scored (the hub down, a file unreadable) is tried
            // again next round; a scored challenger's KL is final.
            if let Some((kl, _)) = kls.get(&k)
                && Some(candidate) != king
            {
                contest.finals.insert(k.clone(), *kl);
            }
            judged.push(Judged {
                uid: candidate.uid,
                checks,
                score: if is_king { 1.0 } else { 0.0 },
                work: None,
            });
        }
        contest.king = crowned.map(|c| Crowned {
            uid: c.uid,
            hotkey: c.hotkey.clone(),
            revision: c.revision.clone(),
        });
        let mut out = emit(cx, judged).await?;
        out.insert(
            "king".to_owned(),
            Val::Int(crowned.map_or(-1, |c| i64::from(c.uid))),
        );
        out.insert("history".to_owned(), keep(cx, &contest).await?);
        Ok(out)
    }

    /// The miner records given, and the candidates they name.
    fn candidates(&self, cx: &StageRun) -> Result<Vec<(Val, Candidate)>, StageError> {
        let Some(miners) = &self.miners else {
            return Err(StageError::final_("`miners:` is missing"));
        };
        let Val::List(records) = cx.input(miners)? else {
            return Err(StageError::final_("`miners` is not a list of miners"));
        };
        let candidates = records
            .iter()
            .filter_map(|m| {
                let uid = uid_of(m).ok()?;
                let block = match m.field("block") {
                    Some(Val::Int(b)) => u64::try_from(*b).unwrap_or(0),
                    _ => 0,
                };
                Some((
                    m.clone(),
                    Candidate {
                        uid,
                        hotkey: text_of(m, "hotkey"),
                        repo: text_of(m, "repo"),
                        revision: text_of(m, "revision"),
                        block,
                    },
                ))
            })
            .collect();
        Ok(candidates)
    }

    /// The teacher, loaded, with its continuations of this round's prompts.
    async fn teacher(&self, cx: &StageRun) -> Result<Teacher<Cpu>, StageError> {
        let named = match &self.teacher {
            Some(teacher) => cx.get(teacher)?,
            None => return Err(StageError::final_("`mode: kl` needs `teacher:`")),
        };
        let (repo, revision) = named.split_once('@').unwrap_or((&named, "main"));
        let (weights, config) = fetch_model(cx, repo, revision)
            .await
            .map_err(|e| StageError::final_(format!("the teacher: {e}")))?;
        let prompt_len = cx.get(&self.prompt_tokens)?.max(1) as usize;
        let new_tokens = cx.get(&self.max_new_tokens)?.max(1) as usize;
        let count = cx.get(&self.prompts)?.max(1) as usize;
        let data = cx.get(&self.data)?;
        let (block, hash) = crate::chain::block_hash(&cx.effects).await?;
        let prompts = prompts(cx, &data, config.vocab, &hash, count, prompt_len).await?;
        tracing::info!(stage = %cx.stage().id, block, "teacher continues {count} prompts seeded by block {block}");
        tokio::task::spawn_blocking(move || {
            let device = Default::default();
            let teacher = checkpoint::load::<Cpu>(&weights, config, &device)
                .map_err(|e| StageError::final_(format!("the teacher: {e}")))?;
            distill::teach(&teacher, &prompts, new_tokens, &device)
                .map_err(|e| StageError::final_(format!("the teacher: {e}")))
        })
        .await
        .map_err(|e| StageError::final_(format!("the teacher: {e}")))?
    }
}

/// `count` prompts of `length` tokens from the shards, at places drawn from the block hash.
async fn prompts(
    cx: &StageRun,
    data: &str,
    vocab: usize,
    seed: &str,
    count: usize,
    length: usize,
) -> Result<Vec<Vec<u32>>, StageError> {
    let index = shard_index(cx, data, vocab).await?;
    let counts: Vec<u64> = index.shards.iter().map(|s| s.tokens).collect();
    let mut shards: HashMap<usize, Vec<u32>> = HashMap::new();
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let at = assign(seed, i as i64, 0, &counts, length as u64)
            .map_err(|e| StageError::final_(e.to_string()))?;
        let tokens = match shards.entry(at.shard) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                let info = &index.shards[at.shard];
                let whole = shard_tokens(cx, data, &index, &info.name, 0, info.tokens).await?;
                entry.insert(whole.tokens)
            }
        };
        out.push(tokens[at.offset as usize..at.offset as usize + length].to_vec());
    }
    Ok(out)
}

/// The per-position KL of one candidate's model, or why it cannot be scored.
async fn score(
    cx: &StageRun,
    teacher: Arc<Teacher<Cpu>>,
    candidate: &Candidate,
) -> Result<Vec<f32>, String> {
    let (weights, config) = fetch_model(cx, &candidate.repo, &candidate.revision).await?;
    tokio::task::spawn_blocking(move || {
        let device = Default::default();
        let student: Gpt<Cpu> =
            checkpoint::load(&weights, config, &device).map_err(|e| e.to_string())?;
        distill::kl_per_position(&teacher, &student)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A model's weights and shape from the hub at a revision.
async fn fetch_model(
    cx: &StageRun,
    repo: &str,
    revision: &str,
) -> Result<(Vec<u8>, crate::model::GptConfig), String> {
    let get = |path: &str, max_bytes| GetArgs {
        repo: repo.to_owned(),
        revision: revision.to_owned(),
        path: path.to_owned(),
        max_bytes,
    };
    let (config, _) = hub::get(&cx.effects, get(CONFIG_FILE, MAX_CONFIG_BYTES))
        .await
        .map_err(|e| e.to_string())?;
    let config: serde_json::Value =
        serde_json::from_slice(&config).map_err(|e| format!("config.json: {e}"))?;
    let config = distill::config_from_json(&config)?;
    let (weights, _) = hub::get(&cx.effects, get(WEIGHTS_FILE, MAX_MODEL_BYTES))
        .await
        .map_err(|e| e.to_string())?;
    Ok((weights, config))
}

/// What the hub says of a candidate's model, without its weights.
async fn facts(cx: &StageRun, candidate: &Candidate) -> Facts {
    let header = hub::header(
        &cx.effects,
        HeaderArgs {
            repo: candidate.repo.clone(),
            revision: candidate.revision.clone(),
            path: WEIGHTS_FILE.to_owned(),
        },
    )
    .await
    .map_err(|e| format!("not available at the committed revision: {e}"))
    .and_then(|(bytes, header)| precheck::summarize(&bytes).map(|summary| (summary, header.hash)));
    let config = hub::get(
        &cx.effects,
        GetArgs {
            repo: candidate.repo.clone(),
            revision: candidate.revision.clone(),
            path: CONFIG_FILE.to_owned(),
            max_bytes: MAX_CONFIG_BYTES,
        },
    )
    .await
    .map_err(|e| format!("config.json: {e}"))
    .and_then(|(bytes, _)| {
        serde_json::from_slice(&bytes).map_err(|e| format!("config.json is not JSON: {e}"))
    });
    Facts { header, config }
}

/// Last cycle's `history`, or a fresh one.
async fn carried<T: DeserializeOwned + Default>(cx: &StageRun) -> T {
    let Some(Val::Artifact(previous)) = cx.previous().and_then(|p| p.get("history").cloned())
    else {
        return T::default();
    };
    match cx
        .read_artifact(&previous)
        .await
        .map(|b| serde_json::from_slice(&b))
    {
        Ok(Ok(history)) => history,
        _ => {
            tracing::warn!(stage = %cx.stage().id, "last cycle's history is unreadable: starting afresh");
            T::default()
        }
    }
}

async fn keep<T: Serialize>(cx: &StageRun, history: &T) -> Result<Val, StageError> {
    let bytes =
        serde_json::to_vec_pretty(history).map_err(|e| StageError::final_(e.to_string()))?;
    Ok(Val::Artifact(cx.write_artifact("blob", bytes).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_challenger_within_epsilon_does_not_dethrone_the_king() {
        assert_eq!(crown(Some(1.0), &[Some(0.995)], 0.01), Decision::Kept);
        assert_eq!(crown(Some(1.0), &[Some(0.99)], 0.01), Decision::Kept);
        assert_eq!(
            crown(Some(1.0), &[Some(0.995), Some(0.98)], 0.01),
            Decision::Dethroned(1)
        );
        assert_eq!(
            crown(None, &[Some(3.0), Some(2.0)], 0.01),
            Decision::Dethroned(1)
        );
        assert_eq!(crown(Some(1.0), &[None, None], 0.01), Decision::Kept);
        assert_eq!(crown(None, &[], 0.01), Decision::Kept);
    }
}
