//! The `keys` system: signs statements (jobs, receipts, verdicts) with the role's key, which
//! never leaves this face. It signs only domain-tagged gradline messages
//! ([`crate::signed`]), so a pipeline cannot make it sign a transaction or anything else.

use futures::future::BoxFuture;
use gradline_engine::effects::{CallScope, EffectError, Request, Response, Transport};
use serde::Deserialize;
use serde_json::json;
use subxt_signer::sr25519::Keypair;

use super::args;

pub struct Signer {
    key: Keypair,
}

#[derive(Deserialize)]
struct SignArgs {
    /// `0x` hex of the message.
    message: String,
}

impl Signer {
    pub fn new(key: Keypair) -> Self {
        Self { key }
    }

    fn sign(&self, args: SignArgs) -> Result<Response, EffectError> {
        let message = crate::hex::decode(&args.message)
            .ok_or_else(|| EffectError::final_("keys sign: the message is not hex"))?;
        if !message.starts_with(b"gradline.") {
            return Err(EffectError::final_(
                "keys sign: only gradline statements (a `gradline.` domain tag) are signed",
            ));
        }
        let signature = self.key.sign(&message);
        Ok(Response::value(json!({
            "signer": crate::hex::encode_0x(&self.key.public_key().0),
            "signature": crate::hex::encode_0x(&signature.0),
        })))
    }
}

impl Transport for Signer {
    fn call<'a>(
        &'a self,
        _scope: &'a CallScope,
        request: Request,
    ) -> BoxFuture<'a, Result<Response, EffectError>> {
        Box::pin(async move {
            match request.op.as_str() {
                "sign" => self.sign(args(&request)?),
                "public" => Ok(Response::value(
                    json!({ "signer": crate::hex::encode_0x(&self.key.public_key().0) }),
                )),
                op => Err(EffectError::final_(format!(
                    "the keys system has no operation `{op}`"
                ))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_gradline_statements_are_signed() {
        let signer = Signer::new(Keypair::from_secret_key([9; 32]).unwrap());
        let ask = |message: &[u8]| {
            Request::new(
                "keys",
                "sign",
                json!({ "message": crate::hex::encode_0x(message) }),
            )
        };
        let scope = CallScope::scheduler(0);
        let signed = signer.call(&scope, ask(b"gradline.verdict.v1\0{}")).await;
        assert!(signed.is_ok());
        let refused = signer.call(&scope, ask(b"\x07\x00transfer")).await;
        assert!(
            refused
                .unwrap_err()
                .message
                .contains("only gradline statements")
        );
    }
}
