//! What running stages exchange: artifact references, outputs, and stage errors that say
//! whether another attempt could help.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::expr::Val;

/// A blake3 digest, lowercase hex.
pub type Digest = String;

pub fn digest_of(bytes: &[u8]) -> Digest {
    blake3::hash(bytes).to_hex().to_string()
}

/// Bytes of a declared type, stored by digest in the run's object store.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// The port type it was produced as (`checkpoint`, `compressed`, `blob`, ...).
    #[serde(rename = "type")]
    pub ty: String,
    pub digest: Digest,
    pub size: u64,
}

/// A stage's outputs, by port.
pub type Outputs = BTreeMap<String, Val>;

/// Whether a failure may go away on another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// I/O, HTTP 5xx or 429, timeouts: worth another attempt.
    Retryable,
    /// Bad input, failed verification: another attempt would fail the same way.
    Final,
}

/// Why a stage attempt failed, with the chain of causes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageError {
    pub class: ErrorClass,
    pub message: String,
    /// Causes, outermost first.
    pub causes: Vec<String>,
}

impl StageError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Retryable,
            message: message.into(),
            causes: Vec::new(),
        }
    }

    pub fn final_(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Final,
            message: message.into(),
            causes: Vec::new(),
        }
    }

    /// Wraps an error with its source chain.
    pub fn from_error(class: ErrorClass, err: &(dyn std::error::Error + 'static)) -> Self {
        let mut causes = Vec::new();
        let mut source = err.source();
        while let Some(s) = source {
            causes.push(s.to_string());
            source = s.source();
        }
        Self {
            class,
            message: err.to_string(),
            causes,
        }
    }

    /// I/O errors: retryable unless the input itself is wrong.
    pub fn io(context: impl fmt::Display, err: &std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let class = match err.kind() {
            K::NotFound
            | K::PermissionDenied
            | K::InvalidInput
            | K::InvalidData
            | K::Unsupported => ErrorClass::Final,
            _ => ErrorClass::Retryable,
        };
        Self {
            class,
            message: format!("{context}: {err}"),
            causes: Vec::new(),
        }
    }

    /// Adds an outer context to the message, keeping the old one as a cause.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        self.causes
            .insert(0, std::mem::replace(&mut self.message, context.into()));
        self
    }

    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.message)?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StageError {}

/// The canonical digest of a value: artifacts count by digest, maps by sorted key.
pub fn value_digest(value: &Val) -> Digest {
    digest_of(value.to_json().to_string().as_bytes())
}
