//! The object store as stages use it: `store` requests through the effects, so every read
//! and write is planned, recorded, replayed and fault-injectable. The live face
//! ([`crate::live::object_store`]) answers:
//!
//! | op | args | body | answer |
//! |---|---|---|---|
//! | `get` | [`GetArgs`] | — | the object's bytes; [`Stored`] |
//! | `put` | `{"key": K}` | the bytes | [`Stored`] |

use gradline_engine::effects::{Effects, Request};
use gradline_engine::runtime::StageError;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GetArgs {
    pub key: String,
    /// Refuse objects larger than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

/// What the store says of an object it read or wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    pub size: u64,
    /// The store's version of the object (its ETag or version id), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Reads an object.
pub async fn get(effects: &Effects, key: &str) -> Result<Vec<u8>, StageError> {
    get_capped(effects, key, None).await.map(|(bytes, _)| bytes)
}

/// Reads an object no larger than `max_bytes`.
pub async fn get_capped(
    effects: &Effects,
    key: &str,
    max_bytes: Option<u64>,
) -> Result<(Vec<u8>, Stored), StageError> {
    let args = GetArgs {
        key: key.to_owned(),
        max_bytes,
    };
    let response = effects
        .call(Request::new("store", "get", json!(args)))
        .await
        .map_err(|e| StageError::from(e).context(format!("reading `{key}` from the store")))?;
    let stored = serde_json::from_value(response.value).unwrap_or_default();
    let body = response
        .body
        .ok_or_else(|| StageError::final_(format!("the store answered `{key}` without a body")))?;
    Ok((body, stored))
}

/// Writes an object.
pub async fn put(effects: &Effects, key: &str, bytes: Vec<u8>) -> Result<Stored, StageError> {
    let response = effects
        .call(Request::new("store", "put", json!({ "key": key })).with_body(bytes))
        .await
        .map_err(|e| StageError::from(e).context(format!("writing `{key}` to the store")))?;
    Ok(serde_json::from_value(response.value).unwrap_or_default())
}
