//! `gradline register FILE`: register the pipeline's signing hotkey on its subnet — on the
//! embedded ledger a ledger entry, on subtensor `burned_register`, which costs stake — and
//! record the uid in the uid file. Registering an already registered hotkey spends nothing.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use gradline_engine::Loaded;
use gradline_engine::effects::{CallScope, Effects, Transport};
use gradline_stages::{chain, live};

pub fn register(loaded: Loaded) -> anyhow::Result<()> {
    let pipeline = loaded
        .pipeline
        .ok_or_else(|| anyhow!("the pipeline did not load"))?;
    let chain_spec = pipeline.spec.resources.chain.as_ref().ok_or_else(|| {
        anyhow!(
            "`{}` declares no `resources.chain` to register on",
            pipeline.spec.name.value
        )
    })?;
    let env = gradline_engine::preflight::process_env;
    let netuid: u16 = gradline_engine::preflight::resolve(&pipeline, &chain_spec.netuid, &env)
        .map_err(|e| anyhow!("resources.chain.netuid: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let live = live::connect(&pipeline, &env, &live::LiveOptions::from_env(&env))
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let transport: Arc<dyn Transport> = Arc::new(live);
        let effects = Effects::new(transport, CallScope::scheduler(0));
        let registered = chain::register(&effects, netuid)
            .await
            .map_err(|e| anyhow!("{}", e.message))
            .context("registration failed")?;
        let identity = chain::identity(&effects, netuid)
            .await
            .map_err(|e| anyhow!("{}", e.message))?;
        match registered.skipped {
            true => println!(
                "{} is already uid {} on subnet {netuid}",
                identity.hotkey, registered.uid
            ),
            false => println!(
                "registered {} on subnet {netuid} as uid {} (block {})",
                identity.hotkey, registered.uid, registered.block
            ),
        }
        Ok(())
    })
}
