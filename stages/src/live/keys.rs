//! The sr25519 key a role signs with (Bittensor extrinsics, jobs, receipts, verdicts), read
//! from outside the pipeline file: an environment variable holding a mnemonic, a `0x` seed
//! or a secret URI (`PHRASE//hard/soft///password`), a Bittensor wallet hotkey file, or a
//! key generated on first use (32 random bytes in an owner-only file).
//!
//! A wallet hotkey file is `~/.bittensor/wallets/<wallet>/hotkeys/<hotkey>`: unencrypted
//! JSON with `secretSeed` (`0x` + 32 bytes) or `secretPhrase` (a mnemonic), and
//! `publicKey` / `ss58Address`, which must match the key derived from the secret.
//! Encrypted files are refused: export the mnemonic into an environment variable instead.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use subxt::utils::AccountId32;
use subxt_signer::SecretUri;
use subxt_signer::sr25519::Keypair;

/// Reads the key held by an environment variable. The value never enters an error.
pub fn from_env(name: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Keypair, String> {
    let secret = env(name)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("the signing key variable `{name}` is not set"))?;
    from_secret(&secret).map_err(|e| format!("`{name}` holds no usable sr25519 key: {e}"))
}

/// Reads a Bittensor wallet hotkey file (`~` is the home folder).
pub fn from_wallet_file(
    path: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Keypair, String> {
    let path = expand_home(path, env);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the hotkey file {}: {e}", path.display()))?;
    wallet_key(&text).map_err(|e| format!("the hotkey file {}: {e}", path.display()))
}

/// The generated key `name` in `dir` (created with the folder on first use).
pub fn generated_in(dir: &Path, name: &str) -> Result<Keypair, String> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        return Err(format!(
            "`{name}` is not a key name (letters, digits, `-`, `_`)"
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    generated(&dir.join(format!("{name}.key")))
}

/// The key in a generated key file, created (32 random bytes, owner-only) on first use.
pub fn generated(path: &Path) -> Result<Keypair, String> {
    let secret = match std::fs::read(path) {
        Ok(secret) => secret,
        Err(_) => {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|e| format!("no randomness for a new key: {e}"))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => std::io::Write::write_all(&mut file, &secret)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
            }
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
        }
    };
    let seed = blake3::derive_key("gradline generated sr25519 key v1", &secret);
    Keypair::from_secret_key(seed).map_err(|_| format!("{} holds no usable key", path.display()))
}

/// A key's public key as bare hex: how the embedded ledger names hotkeys.
pub fn public_hex(key: &Keypair) -> String {
    crate::hex::encode(&key.public_key().0)
}

/// The account (SS58, prefix 42) of a key.
pub fn account(key: &Keypair) -> AccountId32 {
    key.public_key().to_account_id()
}

fn from_secret(secret: &str) -> Result<Keypair, String> {
    let uri = SecretUri::from_str(secret).map_err(|_| "not a mnemonic, seed or secret URI")?;
    Keypair::from_uri(&uri).map_err(|_| "not a mnemonic, seed or secret URI".to_owned())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WalletFile {
    secret_seed: Option<String>,
    secret_phrase: Option<String>,
    public_key: Option<String>,
    ss58_address: Option<String>,
}

fn wallet_key(text: &str) -> Result<Keypair, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with("$NACL") || trimmed.starts_with("$BT") || !trimmed.starts_with('{') {
        return Err("it is encrypted or not a wallet key file; put the mnemonic in an environment variable and use `signing: { env: NAME }`".into());
    }
    let file: WalletFile =
        serde_json::from_str(text).map_err(|e| format!("it is not wallet JSON: {e}"))?;
    let key = match (&file.secret_seed, &file.secret_phrase) {
        (Some(seed), _) => from_secret(seed),
        (None, Some(phrase)) => from_secret(phrase),
        (None, None) => Err("it has neither `secretSeed` nor `secretPhrase`".into()),
    }?;
    let public = crate::hex::encode_0x(&key.public_key().0);
    if let Some(expected) = &file.public_key
        && !expected.eq_ignore_ascii_case(&public)
    {
        return Err(format!(
            "its secret derives public key {public}, but the file says {expected}"
        ));
    }
    let address = account(&key).to_string();
    if let Some(expected) = &file.ss58_address
        && expected != &address
    {
        return Err(format!(
            "its secret derives address {address}, but the file says {expected}"
        ));
    }
    Ok(key)
}

fn expand_home(path: &str, env: &dyn Fn(&str) -> Option<String>) -> PathBuf {
    match (path.strip_prefix("~/"), env("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest),
        _ => PathBuf::from(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PHRASE: &str = "bottom drive obey lake curtain smoke basket hold race lonely fit walk";

    #[test]
    fn a_mnemonic_a_seed_and_a_uri_give_keys() {
        let alice = from_secret(&format!("{PHRASE}//Alice")).unwrap();
        assert_eq!(
            account(&alice).to_string(),
            "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
        );
        let root = from_secret(PHRASE).unwrap();
        let seed = format!("0x{}", "11".repeat(32));
        assert_ne!(
            from_secret(&seed).unwrap().public_key().0,
            root.public_key().0
        );
        assert!(from_secret("not a key").is_err());
    }

    #[test]
    fn a_wallet_file_is_checked_against_its_public_key() {
        let key = from_secret(PHRASE).unwrap();
        let good = serde_json::json!({
            "secretPhrase": PHRASE,
            "publicKey": crate::hex::encode_0x(&key.public_key().0),
            "ss58Address": account(&key).to_string(),
        });
        assert_eq!(
            wallet_key(&good.to_string()).unwrap().public_key().0,
            key.public_key().0
        );
        let wrong = serde_json::json!({
            "secretPhrase": PHRASE,
            "publicKey": format!("0x{}", "00".repeat(32)),
        });
        assert!(
            wallet_key(&wrong.to_string())
                .unwrap_err()
                .contains("derives public key")
        );
        assert!(wallet_key("$NACLabcdef").unwrap_err().contains("encrypted"));
    }

    #[test]
    fn the_secret_never_enters_an_error() {
        let env = |_: &str| Some("hunter2 is my password".to_owned());
        let error = from_env("HOTKEY", &env).unwrap_err();
        assert!(!error.contains("hunter2"), "{error}");
    }
}
