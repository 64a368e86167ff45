//! `uid`: this role's uid on the subnet — the explicit setting when there is one, else the
//! uid file written at registration (`gradline register`), else a lookup of the signing
//! hotkey on chain. Registration itself costs stake and happens only on that command.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use gradline_engine::Diagnostic;
use gradline_engine::expr::Val;
use gradline_engine::plan::{Effect, PlanContext};
use gradline_engine::registry::{CheckContext, Port, StageKind};
use gradline_engine::runtime::{Outputs, StageError};
use gradline_engine::schedule::StageRun;
use gradline_engine::types::Type;
use gradline_engine::value::Value;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::{chain, require_resource};

/// Resolve this role's uid.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Uid {
    /// The uid, when it is known: nothing is read.
    #[serde(default)]
    pub uid: Option<Value<i64>>,
}

impl StageKind for Uid {
    const NAME: &'static str = "uid";
    const DESCRIPTION: &'static str = "This role's uid on the subnet: the setting, else the uid file written at registration, else the chain.";

    fn inputs(&self) -> Vec<Port> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Port> {
        vec![
            Port::new("uid", Type::Int, "The uid."),
            Port::new(
                "hotkey",
                Type::Text,
                "The signing hotkey (empty when the uid was given).",
            ),
            Port::new("source", Type::Text, "`setting`, `file` or `chain`."),
        ]
    }

    fn check(&self, cx: &CheckContext) -> Vec<Diagnostic> {
        match self.uid {
            Some(_) => Vec::new(),
            None => require_resource(
                cx.resources.chain.is_some(),
                "chain",
                "looking up the uid",
                cx,
                "uid",
            )
            .into_iter()
            .collect(),
        }
    }

    fn effects(&self, cx: &PlanContext) -> Vec<Effect> {
        match &self.uid {
            Some(_) => Vec::new(),
            None => vec![
                Effect::read(
                    "chain",
                    cx.chain(),
                    "SubtensorModule.Uids (after the uid file)",
                )
                .note("registration is `gradline register`, never a run"),
            ],
        }
    }

    fn run<'a>(&'a self, cx: &'a StageRun) -> BoxFuture<'a, Result<Outputs, StageError>> {
        Box::pin(async move {
            let (uid, hotkey, source) = match &self.uid {
                Some(uid) => (cx.get(uid)?, String::new(), "setting".to_owned()),
                None => {
                    let netuid = crate::chain_netuid(cx)?;
                    let identity = chain::identity(&cx.effects, netuid).await?;
                    let uid = identity.uid.ok_or_else(|| {
                        StageError::final_(format!(
                            "hotkey {} is not registered on subnet {netuid}: register it with `gradline register FILE` (it costs stake), or set `uid:`",
                            identity.hotkey
                        ))
                    })?;
                    (i64::from(uid), identity.hotkey, identity.source)
                }
            };
            Ok(BTreeMap::from([
                ("uid".to_owned(), Val::Int(uid)),
                ("hotkey".to_owned(), Val::Str(hotkey)),
                ("source".to_owned(), Val::Str(source)),
            ]))
        })
    }
}
