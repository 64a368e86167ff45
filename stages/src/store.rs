//! The object store as stages use it: `store.get` / `store.put` requests through the effects,
//! so every read and write is planned, recorded, replayed and fault-injectable. The live
//! faces (`file://`, `s3://`, `r2://`, ...) answer these operations:
//!
//! | op | args | body | answer |
//! |---|---|---|---|
//! | `get` | `{"key": K}` | — | the object's bytes as the body |
//! | `put` | `{"key": K}` | the bytes | `{"size": N}` |

use gradline_engine::effects::{Effects, Request};
use gradline_engine::runtime::StageError;
use serde_json::json;

/// Reads an object.
pub async fn get(effects: &Effects, key: &str) -> Result<Vec<u8>, StageError> {
    let response = effects
        .call(Request::new("store", "get", json!({ "key": key })))
        .await
        .map_err(|e| StageError::from(e).context(format!("reading `{key}` from the store")))?;
    response
        .body
        .ok_or_else(|| StageError::final_(format!("the store answered `{key}` without a body")))
}

/// Writes an object.
pub async fn put(effects: &Effects, key: &str, bytes: Vec<u8>) -> Result<(), StageError> {
    effects
        .call(Request::new("store", "put", json!({ "key": key })).with_body(bytes))
        .await
        .map_err(|e| StageError::from(e).context(format!("writing `{key}` to the store")))?;
    Ok(())
}
