//! The live faces of the outside systems stages call, built from a pipeline's `resources:`
//! for a run: the object store, the model hub (Hugging Face or the embedded `local://` hub),
//! a validator's checkpoint endpoint, the chain (the embedded ledger or a subtensor node);
//! and the endpoint's server.
//!
//! Secrets are read here from the environment and stay inside the faces: requests, tapes,
//! plans and errors never carry them.

pub mod endpoint;
pub mod fetch;
pub mod hf;
pub mod keys;
pub mod local_chain;
pub mod local_hub;
pub mod object_store;
pub mod serve;
pub mod signer;
pub mod subtensor;
pub mod uid_file;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gradline_engine::Pipeline;
use gradline_engine::effects::{EffectError, Live, Request, Response};
use gradline_engine::preflight::resolve;
use gradline_engine::spec::KeySource;
use serde::de::DeserializeOwned;

use crate::hub::{CommitArgs, GetArgs, HeaderArgs, TagArgs};

use self::object_store::{StoreConfig, StoreSystem};

/// The public Hugging Face Hub; `HF_ENDPOINT` replaces it (a mirror, a test server).
pub const HUGGING_FACE: &str = "https://huggingface.co";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bittensor's block time, the embedded ledger's default.
const DEFAULT_BLOCK_TIME: Duration = Duration::from_secs(12);

/// Where live faces keep what outlives one call.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// Partial downloads waiting to resume (hub files resume in the HF cache instead).
    pub downloads: PathBuf,
}

impl LiveOptions {
    /// `GRADLINE_CACHE`, else `XDG_CACHE_HOME/gradline`, else `~/.cache/gradline`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Self {
        let root = env("GRADLINE_CACHE")
            .map(PathBuf::from)
            .or_else(|| env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("gradline")))
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache/gradline")))
            .unwrap_or_else(|| PathBuf::from(".gradline/cache"));
        Self {
            downloads: root.join("downloads"),
        }
    }
}

/// The live systems of a pipeline's resources, with the engine's clock and randomness.
/// Run it on the runtime the run uses: a subtensor connection lives on it.
pub async fn connect(
    pipeline: &Pipeline,
    env: &dyn Fn(&str) -> Option<String>,
    options: &LiveOptions,
) -> Result<Live, String> {
    let resources = &pipeline.spec.resources;
    let text = |value, what: &str| {
        resolve::<String>(pipeline, value, env).map_err(|e| format!("resources.{what}: {e}"))
    };
    let mut live = Live::new();
    if let Some(store) = &resources.store {
        let config = StoreConfig {
            url: text(&store.url, "store.url")?,
            endpoint: store
                .endpoint
                .as_ref()
                .map(|e| text(e, "store.endpoint"))
                .transpose()?,
            region: store
                .region
                .as_ref()
                .map(|r| text(r, "store.region"))
                .transpose()?,
            allow_http: store.allow_http,
            virtual_hosted: store.virtual_hosted,
            timeout: store.timeout.map(|d| d.0),
        };
        let system = StoreSystem::open(&config, env, options.downloads.clone())
            .map_err(|e| format!("resources.store: {e}"))?;
        live = live.with_system("store", Arc::new(system));
    }
    if let Some(hub) = &resources.hub {
        let endpoint = text(&hub.endpoint, "hub.endpoint")?;
        if endpoint.starts_with("local://") {
            let local =
                local_hub::LocalHub::open(&endpoint).map_err(|e| format!("resources.hub: {e}"))?;
            live = live.with_system("hub", Arc::new(local));
        } else {
            let endpoint = match env("HF_ENDPOINT").filter(|e| !e.is_empty()) {
                Some(mirror) if endpoint.trim_end_matches('/') == HUGGING_FACE => {
                    tracing::info!(endpoint = %mirror, "HF_ENDPOINT replaces {HUGGING_FACE}");
                    mirror
                }
                _ => endpoint,
            };
            let config = hf::HfConfig {
                endpoint,
                token: token(&hub.token_env, env).map(|(_, t)| t),
                timeout: hub.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0),
                cache_dir: hf_cache(env),
                attempts: 5,
            };
            let system = hf::HfHub::connect(&config).map_err(|e| format!("resources.hub: {e}"))?;
            live = live.with_system("hub", Arc::new(system));
        }
    }
    if let Some(http) = &resources.http {
        let url = text(&http.url, "http.url")?;
        let timeout = http.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
        let system = endpoint::Endpoint::connect(&url, timeout, options.downloads.clone())
            .map_err(|e| format!("resources.http: {e}"))?;
        live = live.with_system("http", Arc::new(system));
    }
    let signing = signing_key(pipeline, env)?;
    if let Some(key) = &signing {
        live = live.with_system("keys", Arc::new(signer::Signer::new(key.clone())));
    }
    if let Some(chain) = &resources.chain {
        let url = text(&chain.url, "chain.url")?;
        if url.starts_with("local://") {
            let role = pipeline.spec.role.value.to_string();
            let key = match resources.keys.as_ref().map(|k| &k.signing) {
                Some(KeySource::Generated(name)) => text(name, "keys.signing.generated")?,
                Some(_) => {
                    return Err("resources.keys: the embedded ledger signs with a generated key (`signing: { generated: NAME }`)".into());
                }
                None => role.clone(),
            };
            let block_time = chain.block_time.map_or(DEFAULT_BLOCK_TIME, |d| d.0);
            let ledger = local_chain::LocalChain::open(&url, block_time, &key, &role)
                .map_err(|e| format!("resources.chain: {e}"))?;
            live = live.with_system("chain", Arc::new(ledger));
        } else if url.starts_with("ws://") || url.starts_with("wss://") {
            let key = signing.ok_or("resources.keys: a subtensor node needs a signing key: `resources.keys.signing: { env: NAME }` (a mnemonic or seed) or `{ file: ~/.bittensor/wallets/W/hotkeys/H }`")?;
            let metadata = match &chain.metadata {
                Some(path) => {
                    let path = text(path, "chain.metadata")?;
                    std::fs::read(&path)
                        .map_err(|e| format!("resources.chain.metadata: cannot read {path}: {e}"))?
                }
                None => crate::subtensor::FINNEY_METADATA.to_vec(),
            };
            let config = subtensor::SubtensorConfig {
                url,
                metadata,
                key,
                inclusion_timeout: chain.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0),
                attempts: 3,
                uid_file: PathBuf::from(match &chain.uid_file {
                    Some(path) => text(path, "chain.uid_file")?,
                    None => uid_file::DEFAULT_PATH.to_owned(),
                }),
            };
            let node = subtensor::Subtensor::connect(config)
                .await
                .map_err(|e| format!("resources.chain: {e}"))?;
            live = live.with_system("chain", Arc::new(node));
        } else {
            return Err(format!(
                "resources.chain: `{}` is neither `local://DIR` (the embedded ledger) nor `ws://` / `wss://` (a subtensor node)",
                gradline_engine::plan::redact_url(&url)
            ));
        }
    }
    Ok(live)
}

/// The role's signing key, when the pipeline has one: `resources.keys.signing`, or on the
/// embedded ledger the key generated for the role. Generated keys live in the ledger's
/// `keys/` folder (`.gradline/keys/` without a ledger).
fn signing_key(
    pipeline: &Pipeline,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<subxt_signer::sr25519::Keypair>, String> {
    let resources = &pipeline.spec.resources;
    let chain_url = resources
        .chain
        .as_ref()
        .and_then(|c| resolve::<String>(pipeline, &c.url, env).ok());
    let ledger = chain_url
        .as_deref()
        .and_then(|url| url.strip_prefix("local://").map(PathBuf::from));
    let subtensor = chain_url
        .as_deref()
        .is_some_and(|url| url.starts_with("ws://") || url.starts_with("wss://"));
    let local = ledger.is_some();
    let keys_dir = ledger
        .unwrap_or_else(|| PathBuf::from(".gradline"))
        .join("keys");
    let generated = |name: &str| keys::generated_in(&keys_dir, name);
    let key = match resources.keys.as_ref().map(|k| &k.signing) {
        Some(KeySource::Env(name)) => keys::from_env(name, env),
        Some(KeySource::File(path)) => keys::from_wallet_file(path, env),
        Some(KeySource::Generated(_)) if subtensor => Err("a generated key signs only on the embedded ledger; a subtensor node needs `signing: { env: NAME }` or `signing: { file: HOTKEY_FILE }`".into()),
        Some(KeySource::Generated(name)) => resolve::<String>(pipeline, name, env)
            .and_then(|name| generated(&name)),
        None if local => generated(&pipeline.spec.role.value.to_string()),
        None => return Ok(None),
    };
    key.map(Some).map_err(|e| format!("resources.keys: {e}"))
}

/// The first of the variables that holds a token: its name and value.
pub fn token(names: &[String], env: &dyn Fn(&str) -> Option<String>) -> Option<(String, String)> {
    names.iter().find_map(|name| {
        env(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|v| (name.clone(), v))
    })
}

/// The HF cache folder as the Python client finds it.
pub fn hf_cache(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HF_HUB_CACHE")
        .map(PathBuf::from)
        .or_else(|| env("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
}

/// A request's arguments as its operation's type; anything else is a final error.
pub(crate) fn args<T: DeserializeOwned>(request: &Request) -> Result<T, EffectError> {
    serde_json::from_value(request.args.clone())
        .map_err(|e| EffectError::final_(format!("{} {}: {e}", request.system, request.op)))
}

/// What every hub face answers (the operations of [`crate::hub`]).
pub(crate) trait HubFace: Send + Sync {
    fn get(&self, args: GetArgs) -> impl Future<Output = Result<Response, EffectError>> + Send;
    fn commit(
        &self,
        args: CommitArgs,
        body: &[u8],
    ) -> impl Future<Output = Result<Response, EffectError>> + Send;
    fn tag(&self, args: TagArgs) -> impl Future<Output = Result<Response, EffectError>> + Send;
    fn header(
        &self,
        args: HeaderArgs,
    ) -> impl Future<Output = Result<Response, EffectError>> + Send;
}

/// Routes a `hub` request to a face.
pub(crate) async fn answer_hub<H: HubFace>(
    face: &H,
    request: Request,
) -> Result<Response, EffectError> {
    match request.op.as_str() {
        "get" => face.get(args(&request)?).await,
        "commit" => {
            let body = request.body.as_deref().unwrap_or_default();
            face.commit(args(&request)?, body).await
        }
        "tag" => face.tag(args(&request)?).await,
        "header" => face.header(args(&request)?).await,
        op => Err(EffectError::final_(format!(
            "the hub has no operation `{op}`"
        ))),
    }
}
