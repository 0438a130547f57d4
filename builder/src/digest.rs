//! Content digests: how nodeforge names the bytes it pins, verifies and records.

/// A lowercase hex SHA-256 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sha256Hex(pub [u8; 32]);

impl std::fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::str::FromStr for Sha256Hex {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        let mut out = [0u8; 32];
        if s.len() != 64 || hex::decode_to_slice(s.to_ascii_lowercase(), &mut out).is_err() {
            return Err(format!("`{s}` is not a SHA-256 digest (64 hex characters)"));
        }
        Ok(Self(out))
    }
}

crate::serde_via_str!(Sha256Hex);
