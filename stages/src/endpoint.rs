//! A validator's checkpoint endpoint (`gradline serve`) as stages use it: `http` requests
//! through the effects, answered by [`crate::live::endpoint`]:
//!
//! | op | args | body | answer |
//! |---|---|---|---|
//! | `get` | [`GetArgs`] | — | the checkpoint's bytes; [`Served`] |
//!
//! The endpoint serves `GET /get-checkpoint` with the revision and blake3 digest in the
//! [`REVISION_HEADER`] and [`DIGEST_HEADER`] headers (and the digest as the ETag), byte ranges,
//! and `GET /health`.

use gradline_engine::effects::{Effects, Request};
use gradline_engine::runtime::StageError;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const CHECKPOINT_PATH: &str = "/get-checkpoint";
pub const HEALTH_PATH: &str = "/health";
pub const REVISION_HEADER: &str = "x-gradline-revision";
pub const DIGEST_HEADER: &str = "x-gradline-digest";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetArgs {
    /// The path on the endpoint, `/get-checkpoint`.
    pub path: String,
    pub max_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Served {
    pub revision: String,
    /// The blake3 digest the endpoint announced (and the live face checked).
    pub digest: String,
    pub size: u64,
}

/// Fetches the endpoint's current checkpoint.
pub async fn get_checkpoint(
    effects: &Effects,
    max_bytes: u64,
) -> Result<(Vec<u8>, Served), StageError> {
    let args = GetArgs {
        path: CHECKPOINT_PATH.into(),
        max_bytes,
    };
    let response = effects
        .call(Request::new("http", "get", json!(args)))
        .await
        .map_err(|e| StageError::from(e).context("fetching the checkpoint endpoint"))?;
    let served: Served = serde_json::from_value(response.value)
        .map_err(|e| StageError::final_(format!("the endpoint's answer: {e}")))?;
    let body = response
        .body
        .ok_or_else(|| StageError::final_("the endpoint answered without a body"))?;
    Ok((body, served))
}
