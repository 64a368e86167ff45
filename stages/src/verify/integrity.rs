//! Integrity checks of one miner's gradient, each a named [`Check`] that says why it failed:
//! the miner committed a digest; a downloaded blob has that digest; no earlier miner
//! committed the same digest (a copy); the blob decodes within bounds and covers exactly the
//! checkpoint's parameters, every value finite (the decoders refuse others); the commitment was made in this window or
//! the one before.

use crate::codec::{self, Layout, Limits};
use crate::signed::Check;

/// What a miner claimed on chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Claim {
    pub uid: u16,
    /// The committed digest (hex, with or without `blake3:`); empty when none.
    pub digest: String,
    /// The commitment's block; negative when none.
    pub block: i64,
}

/// What the checks compare against.
pub struct Context<'a> {
    /// Every miner's claim this round, to find copies.
    pub claims: &'a [Claim],
    /// The checkpoint's layout; without it only the decoder's own limits bound a blob.
    pub layout: Option<&'a Layout>,
    pub limits: Limits,
    /// `(window, blocks per window)` when the chain keeps time.
    pub window: Option<(i64, i64)>,
}

/// The checks of one miner's claim against the blobs downloaded (`(digest, bytes)`).
pub fn check(claim: &Claim, blobs: &[(String, &[u8])], cx: &Context) -> Vec<Check> {
    let mut checks = Vec::new();
    let digest = normalize(&claim.digest);
    if digest.is_empty() {
        checks.push(fail("committed", "the miner committed no digest"));
        return checks;
    }
    checks.push(pass("committed"));
    let Some((_, bytes)) = blobs.iter().find(|(d, _)| normalize(d) == digest) else {
        checks.push(fail(
            "digest",
            "no downloaded blob has the committed digest (missing, or altered after the commitment)",
        ));
        return checks;
    };
    checks.push(pass("digest"));
    let original = cx
        .claims
        .iter()
        .filter(|c| c.uid != claim.uid && normalize(&c.digest) == digest)
        .find(|c| (c.block, c.uid) < (claim.block, claim.uid));
    checks.push(match original {
        Some(first) => fail(
            "original",
            format!(
                "uid {} committed the same blob first (block {}): a copy",
                first.uid, first.block
            ),
        ),
        None => pass("original"),
    });
    checks.push(match decodes(bytes, cx) {
        Ok(()) => pass("decodable"),
        Err(why) => fail("decodable", why),
    });
    if let Some((window, blocks)) = cx.window {
        let (start, end) = ((window - 1) * blocks, (window + 1) * blocks);
        checks.push(if (start..end).contains(&claim.block) {
            pass("timing")
        } else {
            fail(
                "timing",
                format!(
                    "committed at block {}, outside blocks {start}..{end} (this window and the one before)",
                    claim.block
                ),
            )
        });
    }
    checks
}

fn decodes(bytes: &[u8], cx: &Context) -> Result<(), String> {
    let sparse = codec::decode(bytes, cx.limits).map_err(|e| e.to_string())?;
    if let Some(layout) = cx.layout {
        sparse.check_layout(layout).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A digest as lowercase hex, without a `blake3:` prefix.
pub(crate) fn normalize(digest: &str) -> String {
    digest
        .trim()
        .strip_prefix("blake3:")
        .unwrap_or(digest.trim())
        .to_ascii_lowercase()
}

pub(crate) fn pass(name: &str) -> Check {
    Check {
        name: name.to_owned(),
        passed: true,
        reason: None,
    }
}

pub(crate) fn fail(name: &str, reason: impl Into<String>) -> Check {
    Check {
        name: name.to_owned(),
        passed: false,
        reason: Some(reason.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::topk_f16;

    fn blob(values: &[f32]) -> Vec<u8> {
        topk_f16::encode(values, 1.0, None).unwrap()
    }

    fn digest(bytes: &[u8]) -> String {
        blake3::hash(bytes).to_hex().to_string()
    }

    fn claim(uid: u16, bytes: &[u8], block: i64) -> Claim {
        Claim {
            uid,
            digest: digest(bytes),
            block,
        }
    }

    fn failed(checks: &[Check]) -> Vec<(&str, &str)> {
        checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| (c.name.as_str(), c.reason.as_deref().unwrap_or_default()))
            .collect()
    }

    #[test]
    fn an_honest_blob_passes_and_each_dishonest_one_says_why() {
        let layout = Layout::flat(4);
        let honest = blob(&[0.5, -1.0, 0.25, 2.0]);
        let copied = honest.clone();
        let short = blob(&[1.0, 2.0]);
        let stale = blob(&[9.0, 9.0, 9.0, 9.0]);
        let mut tampered = blob(&[0.1, 0.2, 0.3, 0.4]);
        let committed_before_tampering = claim(4, &tampered, 95);
        *tampered.last_mut().unwrap() ^= 1;
        let claims = vec![
            claim(1, &honest, 92),
            claim(2, &copied, 97),
            claim(3, &short, 93),
            committed_before_tampering.clone(),
            Claim {
                uid: 5,
                digest: String::new(),
                block: -1,
            },
            claim(6, &stale, 40),
        ];
        let blobs: Vec<(String, &[u8])> = [&honest, &short, &tampered, &stale]
            .iter()
            .map(|b| (digest(b), b.as_slice()))
            .collect();
        let cx = Context {
            claims: &claims,
            layout: Some(&layout),
            limits: Limits::default(),
            window: Some((10, 10)),
        };
        let verdict = |c: &Claim| check(c, &blobs, &cx);
        let honest_checks = verdict(&claims[0]);
        assert!(failed(&honest_checks).is_empty(), "{honest_checks:?}");
        assert_eq!(
            honest_checks
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["committed", "digest", "original", "decodable", "timing"]
        );
        assert!(
            failed(&verdict(&claims[1]))[0]
                .1
                .contains("uid 1 committed the same blob first")
        );
        assert!(
            failed(&verdict(&claims[2]))[0]
                .1
                .contains("covers 2 parameters")
        );
        assert_eq!(failed(&verdict(&claims[3]))[0].0, "digest");
        assert_eq!(failed(&verdict(&claims[4]))[0].0, "committed");
        let stale_checks = verdict(&claims[5]);
        let stale = failed(&stale_checks);
        assert!(stale.iter().any(|(name, _)| *name == "timing"), "{stale:?}");
    }

    #[test]
    fn non_finite_values_are_refused() {
        // n = 3, k = 2, indices 0 and 2, values 1.0 and +inf (f16 bits 0x3c00, 0x7c00).
        let mut bytes = Vec::new();
        for word in [3u32, 2, 0, 2] {
            bytes.extend_from_slice(&word.to_le_bytes());
        }
        bytes.extend_from_slice(&[0x00, 0x3c, 0x00, 0x7c]);
        let claims = vec![claim(1, &bytes, 5)];
        let cx = Context {
            claims: &claims,
            layout: None,
            limits: Limits::default(),
            window: None,
        };
        let checks = check(&claims[0], &[(digest(&bytes), &bytes)], &cx);
        assert!(
            failed(&checks)[0].1.contains("not a finite number"),
            "{checks:?}"
        );
    }
}
