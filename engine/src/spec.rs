//! The pipeline file: serde types with spans, read from the spanned YAML tree.
//!
//! Each section of the file is read on its own so that one file reports all its errors at
//! once. Every map denies unknown keys; a typo gets "did you mean".

use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::diag::{Diagnostic, suggestion};
use crate::node::{Node, NodeKind, Spanned};
use crate::value::{Duration, Value};

/// A gradline pipeline: one role's cycle in a decentralized training network.
#[derive(Debug, Clone, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct PipelineSpec {
    /// Version of the file format; `1`.
    pub version: Spanned<u32>,
    /// A short name for the pipeline, shown in plans and logs.
    pub name: Spanned<String>,
    /// Which role of the network this cycle is.
    pub role: Spanned<Role>,
    /// What the pipeline does, in a sentence or two.
    #[serde(default)]
    pub description: Option<String>,
    /// Typed parameters, read as `${{ params.NAME }}`; override with `--set NAME=VALUE`.
    #[serde(default)]
    #[schemars(with = "std::collections::BTreeMap<String, ParamSpec>")]
    pub params: Vec<(Spanned<String>, ParamSpec)>,
    /// The outside systems the stages use.
    #[serde(default)]
    pub resources: Resources,
    /// The `resources:` section as written, to check its expressions.
    #[schemars(skip)]
    pub resources_node: Option<Node>,
    /// When a cycle starts: `once`, `{ every: window }` or `{ interval: 30s }`.
    #[schemars(default = "Trigger::default")]
    pub trigger: Spanned<Trigger>,
    /// The most one cycle may take before its unfinished stages are cancelled.
    #[serde(default)]
    pub deadline: Option<Spanned<Duration>>,
    /// The stages, by id. Order in the file does not matter: references make the graph.
    #[schemars(with = "std::collections::BTreeMap<String, StageSpec>")]
    pub stages: Vec<(Spanned<String>, StageSpec)>,
}

/// The keys a pipeline file may have at its top level.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "version",
    "name",
    "role",
    "description",
    "params",
    "resources",
    "trigger",
    "deadline",
    "stages",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Miner,
    Validator,
    Orchestrator,
    Publisher,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Role::Miner => "miner",
            Role::Validator => "validator",
            Role::Orchestrator => "orchestrator",
            Role::Publisher => "publisher",
        })
    }
}

/// A typed parameter.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// The parameter's type.
    #[serde(rename = "type")]
    pub ty: Spanned<ParamType>,
    /// For `type: list`, the type of each item.
    #[serde(default)]
    pub items: Option<Spanned<ParamType>>,
    /// The value used when `--set` does not give one. A parameter without a default must be set.
    #[serde(default)]
    pub default: Option<Node>,
    /// What the parameter means.
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    Int,
    Float,
    String,
    Bool,
    Duration,
    List,
}

/// The outside systems a pipeline talks to. Each has an embedded default that needs no setup.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// The object store: `file://DIR`, `memory://`, `s3://BUCKET/PREFIX`, `r2://ACCOUNT/BUCKET`, `gs://BUCKET`, `az://CONTAINER`.
    #[serde(default)]
    pub store: Option<StoreSpec>,
    /// The model hub: `local://DIR` (embedded) or `https://huggingface.co`.
    #[serde(default)]
    pub hub: Option<HubSpec>,
    /// A validator's HTTP checkpoint endpoint (serves `/get-checkpoint`), used as a fallback source.
    #[serde(default)]
    pub http: Option<HttpSpec>,
    /// The chain: `local://DIR` (an embedded ledger) or a subtensor node at `ws://` / `wss://`.
    #[serde(default)]
    pub chain: Option<ChainSpec>,
    /// Where training and scoring run: `auto`, `cpu`, `wgpu`, `metal` or `cuda:N`.
    #[serde(default)]
    pub device: Option<Spanned<Device>>,
    /// The keys this role signs with.
    #[serde(default)]
    pub keys: Option<KeysSpec>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    /// The store's URL: `file://DIR`, `memory://`, `s3://BUCKET[/PREFIX]`,
    /// `r2://ACCOUNT/BUCKET[/PREFIX]`, `gs://BUCKET[/PREFIX]`, `az://CONTAINER[/PREFIX]`.
    /// Credentials come from the usual environment variables (`AWS_ACCESS_KEY_ID`,
    /// `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`, ...), never from here; with
    /// none set, S3 and R2 reads are anonymous (public buckets).
    pub url: Value<String>,
    /// An S3-compatible endpoint instead of AWS (MinIO, Ceph, a local server), e.g.
    /// `https://minio.internal:9000`.
    #[serde(default)]
    pub endpoint: Option<Value<String>>,
    /// The S3 region; `AWS_REGION` or `us-east-1` when unset (`auto` for R2).
    #[serde(default)]
    pub region: Option<Value<String>>,
    /// Allow a plain `http://` endpoint. Off unless asked: credentials and data would cross
    /// the network unencrypted.
    #[serde(default)]
    pub allow_http: bool,
    /// Address buckets as `BUCKET.ENDPOINT` instead of the default path style
    /// `ENDPOINT/BUCKET`.
    #[serde(default)]
    pub virtual_hosted: bool,
    /// Give up on a request that makes no progress for this long (default 60s).
    #[serde(default)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubSpec {
    /// `local://DIR` for the embedded hub, or the hub's base URL (`https://huggingface.co`).
    pub endpoint: Value<String>,
    /// The repository this role reads and writes checkpoints in, `owner/name`.
    #[serde(default)]
    pub repo: Option<Value<String>>,
    /// Environment variables tried in order for the access token.
    #[serde(default = "default_token_env")]
    pub token_env: Vec<String>,
    /// Give up on a request that makes no progress for this long (default 60s).
    #[serde(default)]
    pub timeout: Option<Duration>,
}

/// Where a Hugging Face token is looked for, in order.
pub fn default_token_env() -> Vec<String> {
    ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_API_KEY"]
        .map(String::from)
        .to_vec()
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// The endpoint's base URL, e.g. `http://validator.example:8080`.
    pub url: Value<String>,
    /// Give up on a request that makes no progress for this long (default 60s).
    #[serde(default)]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    /// `local://DIR` for the embedded ledger, or `ws://` / `wss://` for a subtensor node.
    pub url: Value<String>,
    /// The subnet.
    pub netuid: Value<u16>,
    /// Blocks per window (Bittensor's tempo is 360; the embedded ledger defaults to 10).
    #[serde(default)]
    pub window_blocks: Option<Value<u32>>,
    /// The embedded ledger: how often a block is made (default 12s, Bittensor's).
    #[serde(default)]
    pub block_time: Option<Duration>,
    /// Subtensor: a SCALE runtime metadata file to encode extrinsics against (default: the
    /// finney metadata built in). The node's runtime must be the one it describes.
    #[serde(default)]
    pub metadata: Option<Value<String>>,
    /// Subtensor: how long an extrinsic may take to reach a block before it is tried again
    /// (default 60s; three tries).
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// Where `gradline register` records this machine's uids (default `.gradline-uid`);
    /// the `uid` stage reads it before asking the chain.
    #[serde(default)]
    pub uid_file: Option<Value<String>>,
}

/// A signing key, always read from outside the file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeysSpec {
    /// The key this role signs jobs, receipts, verdicts and extrinsics with.
    pub signing: KeySource,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeySource {
    /// The name of an environment variable holding a mnemonic or seed.
    Env(String),
    /// A key file (a Bittensor wallet hotkey file, or a gradline key file).
    File(String),
    /// A key generated on first use into the embedded chain's folder, by name; the name may
    /// use params (`miner-${{ params.uid }}`), so one file serves several miners.
    Generated(Value<String>),
}

/// Where compute runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Auto,
    Cpu,
    Wgpu,
    Metal,
    Cuda(u32),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Wgpu => f.write_str("wgpu"),
            Device::Metal => f.write_str("metal"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.as_str() {
            "auto" => Device::Auto,
            "cpu" => Device::Cpu,
            "wgpu" | "vulkan" => Device::Wgpu,
            "metal" => Device::Metal,
            "cuda" => Device::Cuda(0),
            other => match other.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(n)) => Device::Cuda(n),
                _ => {
                    return Err(de::Error::unknown_variant(
                        other,
                        &["auto", "cpu", "wgpu", "metal", "cuda:0"],
                    ));
                }
            },
        })
    }
}

impl JsonSchema for Device {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Device".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": "^(auto|cpu|wgpu|vulkan|metal|cuda(:[0-9]+)?)$",
            "description": "`auto` picks the best compiled backend present; `cpu`, `wgpu`, `metal`, `cuda:N`."
        })
    }
}

/// When cycles start.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Trigger {
    /// One cycle, then stop.
    #[default]
    Once,
    /// A cycle per chain window (or per clock window without a chain).
    EveryWindow,
    /// A cycle every fixed interval.
    Interval(Duration),
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Trigger::Once => f.write_str("once"),
            Trigger::EveryWindow => f.write_str("every window"),
            Trigger::Interval(d) => write!(f, "every {d}"),
        }
    }
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Trigger;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`once`, `{ every: window }` or `{ interval: 30s }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Trigger, E> {
                match v {
                    "once" => Ok(Trigger::Once),
                    _ => Err(E::unknown_variant(v, &["once"])),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Trigger, A::Error> {
                let Some(key) = map.next_key::<TriggerKey>()? else {
                    return Err(de::Error::custom(
                        "an empty trigger: write `{ every: window }` or `{ interval: 30s }`",
                    ));
                };
                let trigger = match key {
                    TriggerKey::Every => {
                        map.next_value::<EveryWhat>()?;
                        Trigger::EveryWindow
                    }
                    TriggerKey::Interval => Trigger::Interval(map.next_value()?),
                };
                if map.next_key::<TriggerKey>()?.is_some() {
                    return Err(de::Error::custom(
                        "a trigger has exactly one of `every` or `interval`",
                    ));
                }
                Ok(trigger)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum TriggerKey {
    Every,
    Interval,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum EveryWhat {
    Window,
}

impl JsonSchema for Trigger {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Trigger".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let duration = generator.subschema_for::<Duration>();
        json_schema!({
            "description": "When a cycle starts.",
            "oneOf": [
                { "const": "once", "description": "One cycle, then stop." },
                {
                    "type": "object",
                    "properties": { "every": { "const": "window" } },
                    "required": ["every"],
                    "additionalProperties": false,
                    "description": "A cycle per chain window (a clock window without a chain)."
                },
                {
                    "type": "object",
                    "properties": { "interval": duration },
                    "required": ["interval"],
                    "additionalProperties": false,
                    "description": "A cycle every fixed interval."
                }
            ]
        })
    }
}

/// One stage of the pipeline.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StageSpec {
    /// The stage kind (`download`, `train`, `compress`, `verify`, `merge`, `publish`, `commit`, ...).
    pub uses: Spanned<String>,
    /// The kind's settings. Values may use `${{ ... }}` expressions; a reference to another
    /// stage's output is an edge of the graph.
    #[serde(default)]
    pub with: Option<Node>,
    /// Stages that must finish first, without passing data.
    #[serde(default)]
    #[schemars(with = "OneOrMany<String>")]
    pub needs: Option<Node>,
    /// Run only when this condition holds: `${{ cycle.index > 0 }}` or a bare expression.
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    /// Run the stage once per item of this list (`${{ ... }}` or a literal list); each run sees `${{ item }}`.
    #[serde(default)]
    pub for_each: Option<Node>,
    /// With `for_each`: how many items run at once.
    #[serde(default)]
    pub max_parallel: Option<Spanned<u32>>,
    /// Retry failed attempts whose error is retryable.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// The most one attempt may take.
    #[serde(default)]
    pub timeout: Option<Spanned<Duration>>,
    /// What a failure does: `fail` the cycle (the default) or `skip` the stage (or the item).
    #[serde(default)]
    pub on_error: OnError,
    /// What the stage is for, shown in plans.
    #[serde(default)]
    pub description: Option<String>,
}

/// How a failed attempt is retried.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// How many attempts in all, the first included.
    pub attempts: u32,
    /// The wait before the second attempt; doubled after each failure.
    #[serde(default = "default_backoff")]
    pub backoff: Duration,
    /// The longest wait between attempts.
    #[serde(default)]
    pub max_backoff: Option<Duration>,
    /// Spread waits randomly (up to the full backoff) so retrying peers do not align.
    #[serde(default = "default_true")]
    pub jitter: bool,
}

fn default_backoff() -> Duration {
    Duration(std::time::Duration::from_secs(1))
}

fn default_true() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// A failure fails the cycle.
    #[default]
    Fail,
    /// A failure skips the stage (or, with `for_each`, drops the item) and is reported.
    Skip,
}

/// Schema of a value written as one item or a list of them.
pub struct OneOrMany<T>(std::marker::PhantomData<T>);

impl<T: JsonSchema> JsonSchema for OneOrMany<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("OneOrMany{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let one = generator.subschema_for::<T>();
        json_schema!({ "anyOf": [one.clone(), { "type": "array", "items": one }] })
    }
}

impl PipelineSpec {
    /// Reads a spec from the file's tree, collecting every error it finds.
    pub fn from_node(root: &Node, diags: &mut Vec<Diagnostic>) -> Option<PipelineSpec> {
        let Some(entries) = root.as_map() else {
            diags.push(
                Diagnostic::error(
                    "wrong-type",
                    format!("a pipeline file is a map, found {}", root.describe()),
                )
                .at(root.span)
                .hint("start with `version: 1`, `name:`, `role:` and `stages:`"),
            );
            return None;
        };
        let before = diags.len();
        let mut seen: Vec<&Node> = Vec::new();
        let mut version = None;
        let mut name = None;
        let mut role = None;
        let mut description = None;
        let mut params = Vec::new();
        let mut resources = Resources::default();
        let mut resources_node = None;
        let mut trigger = Spanned::new(Trigger::Once, root.span);
        let mut deadline = None;
        let mut stages = None;
        for (key, value) in entries {
            let Some(k) = key.as_str() else {
                diags.push(Diagnostic::error("wrong-type", "keys are names").at(key.span));
                continue;
            };
            if let Some(first) = seen.iter().find(|n| n.as_str() == Some(k)) {
                diags.push(
                    Diagnostic::error(
                        "duplicate-key",
                        format!("key `{k}` is given more than once"),
                    )
                    .at(key.span)
                    .related(first.span, "first given here"),
                );
                continue;
            }
            seen.push(key);
            match k {
                "version" => version = parse_into(value, diags),
                "name" => name = parse_into(value, diags),
                "role" => role = parse_into(value, diags),
                "description" => description = parse_into(value, diags),
                "params" => params = entries_of(value, "params", diags),
                "resources" => {
                    resources = parse_into(value, diags).unwrap_or_default();
                    resources_node = Some(value.clone());
                }
                "trigger" => trigger = parse_into(value, diags).unwrap_or(trigger),
                "deadline" => deadline = parse_into(value, diags),
                "stages" => stages = Some(entries_of(value, "stages", diags)),
                other => diags.push(
                    Diagnostic::error("unknown-key", format!("unknown key `{other}`"))
                        .at(key.span)
                        .hint_opt(suggestion(other, TOP_LEVEL_KEYS)),
                ),
            }
        }
        let missing = |key: &str, diags: &mut Vec<Diagnostic>| {
            diags.push(
                Diagnostic::error("missing-key", format!("missing required key `{key}`"))
                    .at(root.span)
                    .hint(format!("add `{key}:` at the top level")),
            );
        };
        let version: Option<Spanned<u32>> = version;
        match &version {
            None if !seen.iter().any(|n| n.as_str() == Some("version")) => {
                missing("version", diags)
            }
            Some(v) if v.value != 1 => diags.push(
                Diagnostic::error(
                    "unsupported-version",
                    format!("version {} is not supported", v.value),
                )
                .at(v.span)
                .hint("this gradline reads `version: 1`"),
            ),
            _ => {}
        }
        if name.is_none() && !seen.iter().any(|n| n.as_str() == Some("name")) {
            missing("name", diags);
        }
        if role.is_none() && !seen.iter().any(|n| n.as_str() == Some("role")) {
            missing("role", diags);
        }
        if stages.is_none() {
            missing("stages", diags);
        }
        if diags[before..].iter().any(Diagnostic::is_error) {
            return None;
        }
        Some(PipelineSpec {
            version: version?,
            name: name?,
            role: role?,
            description,
            params,
            resources,
            resources_node,
            trigger,
            deadline,
            stages: stages?,
        })
    }
}

/// Deserializes one node, turning its error into a located diagnostic.
pub fn parse_into<T: de::DeserializeOwned>(node: &Node, diags: &mut Vec<Diagnostic>) -> Option<T> {
    match node.parse::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            diags.push(e.into_diagnostic());
            None
        }
    }
}

/// The entries of a map section (`params`, `stages`), each read on its own; duplicate ids
/// are reported with both places.
fn entries_of<T: de::DeserializeOwned>(
    node: &Node,
    section: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Spanned<String>, T)> {
    let entries = match &node.kind {
        NodeKind::Map(entries) => entries.as_slice(),
        NodeKind::Null => &[],
        _ => {
            diags.push(
                Diagnostic::error(
                    "wrong-type",
                    format!("`{section}` is a map of ids, found {}", node.describe()),
                )
                .at(node.span),
            );
            return Vec::new();
        }
    };
    let mut out: Vec<(Spanned<String>, T)> = Vec::new();
    let mut ids: Vec<Spanned<String>> = Vec::new();
    for (key, value) in entries {
        let Some(id) = key.as_str() else {
            diags.push(
                Diagnostic::error("wrong-type", format!("ids in `{section}` are names"))
                    .at(key.span),
            );
            continue;
        };
        if let Some(first) = ids.iter().find(|s| s.value == id) {
            diags.push(
                Diagnostic::error(
                    "duplicate-id",
                    format!("`{id}` is defined more than once in `{section}`"),
                )
                .at(key.span)
                .related(first.span, "first defined here")
                .hint("ids must be unique; rename one of them"),
            );
            continue;
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            diags.push(
                Diagnostic::error(
                    "bad-id",
                    format!("`{id}` is not a valid id: `{bad}` is not allowed"),
                )
                .at(key.span)
                .hint("ids use letters, digits, `_` and `-`"),
            );
            continue;
        }
        ids.push(Spanned::new(id.to_owned(), key.span));
        if let Some(value) = parse_into(value, diags) {
            out.push((Spanned::new(id.to_owned(), key.span), value));
        }
    }
    out
}
