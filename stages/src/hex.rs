//! Hex text for bytes: keys, signatures, digests and chain fields.

/// Lowercase hex, no prefix.
pub fn encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lowercase hex with a `0x` prefix, as Substrate tools write keys and signatures.
pub fn encode_0x(bytes: &[u8]) -> String {
    format!("0x{}", encode(bytes))
}

/// The bytes of hex text, with or without a `0x` prefix; `None` when it is not hex.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trips_and_refuses_non_hex() {
        assert_eq!(super::encode_0x(&[0, 171, 255]), "0x00abff");
        assert_eq!(super::decode("0x00abff"), Some(vec![0, 171, 255]));
        assert_eq!(super::decode("00ABFF"), Some(vec![0, 171, 255]));
        assert_eq!(super::decode("abc"), None);
        assert_eq!(super::decode("zz"), None);
    }
}
