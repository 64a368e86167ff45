//! The registry of stage kinds and named types.
//!
//! A kind is one settings struct implementing [`StageKind`]: serde reads it from `with:`
//! (unknown keys denied), schemars documents it, and its methods declare the typed ports and
//! the outside effects the planner lists. Registering it is one line: `registry.register::<K>()`.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::diag::Diagnostic;
use crate::node::{DeError, Node, Spanned};
use futures::future::BoxFuture;

use crate::plan::{Effect, PlanContext};
use crate::preflight::Preflight;
use crate::runtime::{Outputs, StageError};
use crate::schedule::StageRun;
use crate::spec::Resources;
use crate::types::{Type, TypeDef};
use crate::value::expression_schema;

/// A typed input or output of a stage. Inputs are keys of `with:`.
#[derive(Clone, Debug, PartialEq)]
pub struct Port {
    pub name: &'static str,
    pub ty: Type,
    pub doc: &'static str,
}

impl Port {
    pub fn new(name: &'static str, ty: Type, doc: &'static str) -> Self {
        Self { name, ty, doc }
    }
}

/// What a kind's semantic checks can see besides its own settings.
pub struct CheckContext<'a> {
    pub resources: &'a Resources,
    /// The stage's `with:` node, to locate findings.
    pub with: Option<&'a Node>,
    /// The span of the stage's `uses:`, for findings about the stage as a whole.
    pub uses_span: crate::source::Span,
}

impl CheckContext<'_> {
    /// The span of a `with:` key's value, or of `uses:` when the key is absent.
    pub fn span_of(&self, key: &str) -> crate::source::Span {
        self.with
            .and_then(|w| w.get(key))
            .map_or(self.uses_span, |n| n.span)
    }
}

/// A stage kind: its settings type, ports, checks and effects.
pub trait StageKind: DeserializeOwned + JsonSchema + fmt::Debug + Send + Sync + 'static {
    /// The name used in `uses:`.
    const NAME: &'static str;
    /// One line on what the kind does.
    const DESCRIPTION: &'static str;
    /// Bumped when the kind's outputs change for the same inputs (it keys cached results).
    const VERSION: u32 = 1;

    /// Input ports: `with:` keys whose values are references to other stages' outputs.
    fn inputs(&self) -> Vec<Port>;
    /// Output ports, read by other stages as `${{ stages.ID.outputs.PORT }}`.
    fn outputs(&self) -> Vec<Port>;
    /// Checks that need more than the types: settings that depend on each other, resources
    /// the kind needs.
    fn check(&self, _cx: &CheckContext) -> Vec<Diagnostic> {
        Vec::new()
    }
    /// The outside reads and writes one run of the stage makes, for the dry run.
    fn effects(&self, cx: &PlanContext) -> Vec<Effect>;
    /// What must hold in the running environment before the first cycle starts (a token
    /// set, a repository resolved): each message names what is missing.
    fn preflight(&self, _cx: &Preflight) -> Vec<String> {
        Vec::new()
    }
    /// Runs one attempt. Every outside call goes through `cx.effects`. Units are polled
    /// concurrently on the scheduler's task, so long computation (training, scoring) must
    /// run in `tokio::task::spawn_blocking`, keeping timeouts and cancellation responsive.
    fn run<'a>(&'a self, _cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            Err(StageError::final_(format!(
                "stage kind `{}` cannot run yet in this version of gradline",
                Self::NAME
            )))
        })
    }
}

/// The object-safe face of a parsed stage's settings.
pub trait Settings: fmt::Debug + Send + Sync {
    fn inputs(&self) -> Vec<Port>;
    fn outputs(&self) -> Vec<Port>;
    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic>;
    fn effects(&self, cx: &PlanContext) -> Vec<Effect>;
    fn preflight(&self, cx: &Preflight) -> Vec<String>;
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>>;
    fn as_any(&self) -> &dyn Any;
}

impl<K: StageKind> Settings for K {
    fn inputs(&self) -> Vec<Port> {
        StageKind::inputs(self)
    }
    fn outputs(&self) -> Vec<Port> {
        StageKind::outputs(self)
    }
    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        StageKind::check(self, cx)
    }
    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        StageKind::effects(self, cx)
    }
    fn preflight(&self, cx: &Preflight) -> Vec<String> {
        StageKind::preflight(self, cx)
    }
    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        StageKind::run(self, cx)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// A registered kind, type-erased.
pub struct KindInfo {
    pub name: &'static str,
    pub description: &'static str,
    pub version: u32,
    parse: fn(&Node) -> Result<Box<dyn Settings>, DeError>,
    schema: fn(&mut SchemaGenerator) -> Schema,
    settings_name: fn() -> std::borrow::Cow<'static, str>,
}

impl KindInfo {
    /// Reads the kind's settings from a stage's `with:` (an absent `with:` reads as empty).
    pub fn parse(&self, with: &Node) -> Result<Box<dyn Settings>, DeError> {
        (self.parse)(with)
    }

    pub fn settings_schema(&self, generator: &mut SchemaGenerator) -> Schema {
        (self.schema)(generator)
    }

    pub fn settings_name(&self) -> String {
        (self.settings_name)().into_owned()
    }
}

fn parse_kind<K: StageKind>(node: &Node) -> Result<Box<dyn Settings>, DeError> {
    node.parse::<K>().map(|k| Box::new(k) as Box<dyn Settings>)
}

fn schema_of<K: StageKind>(generator: &mut SchemaGenerator) -> Schema {
    generator.subschema_for::<K>()
}

/// All kinds and named types a pipeline may use.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, KindInfo>,
    types: BTreeMap<&'static str, TypeDef>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register<K: StageKind>(&mut self) -> &mut Self {
        self.kinds.insert(
            K::NAME,
            KindInfo {
                name: K::NAME,
                description: K::DESCRIPTION,
                version: K::VERSION,
                parse: parse_kind::<K>,
                schema: schema_of::<K>,
                settings_name: K::schema_name,
            },
        );
        self
    }

    pub fn register_type(&mut self, def: TypeDef) -> &mut Self {
        self.types.insert(def.name, def);
        self
    }

    pub fn kind(&self, name: &str) -> Option<&KindInfo> {
        self.kinds.get(name)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &KindInfo> {
        self.kinds.values()
    }

    pub fn kind_names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    pub fn type_def(&self, name: &str) -> Option<&TypeDef> {
        self.types.get(name)
    }

    pub fn types(&self) -> impl Iterator<Item = &TypeDef> {
        self.types.values()
    }

    /// Whether values of a type can be written into a string.
    pub fn is_interpolable(&self, ty: &Type) -> bool {
        match ty {
            Type::Int | Type::Float | Type::Text | Type::Bool | Type::Duration | Type::Any => true,
            Type::Named(name) => self.type_def(name).is_some_and(|d| d.scalar),
            Type::List(_) => false,
        }
    }
}

/// A `with:` value that must be a reference to another stage's output (or a parameter):
/// `${{ stages.ID.outputs.PORT }}`. The graph checks its type against the port.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Input(pub Spanned<String>);

impl Serialize for Input {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.value.serialize(s)
    }
}

impl JsonSchema for Input {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Input".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        expression_schema()
    }
}
