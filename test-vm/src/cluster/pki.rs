//! The secrets and proofs a `kubeadm join` checks: the bootstrap token, the detached JWS the
//! bootstrap signer puts into `cluster-info`, and the CA public-key pin.

use std::fmt;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// A bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`. Its `Debug` shows the ID only, so the
/// secret cannot reach a log or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

impl BootstrapToken {
    /// A fresh random token (the system's CSPRNG, unbiased: bytes ≥ 252 are redrawn).
    pub fn generate() -> Result<Self> {
        let rng = SystemRandom::new();
        let mut chars = String::with_capacity(22);
        let mut buf = [0u8; 64];
        while chars.len() < 22 {
            rng.fill(&mut buf).map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
            for b in buf.iter().filter(|b| **b < 252) {
                if chars.len() < 22 {
                    chars.push(char::from(ALPHABET[usize::from(*b % 36)]));
                }
            }
        }
        let (id, secret) = chars.split_at(6);
        Ok(Self { id: id.to_owned(), secret: secret.to_owned() })
    }

    /// `id.secret`, checked against kubeadm's pattern.
    pub fn parse(s: &str) -> Result<Self> {
        let valid = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match s.trim().split_once('.') {
            Some((id, secret)) if valid(id, 6) && valid(secret, 16) => {
                Ok(Self { id: id.to_owned(), secret: secret.to_owned() })
            }
            _ => bail!("not a bootstrap token (expected [a-z0-9]{{6}}.[a-z0-9]{{16}})"),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The whole token, for the token file and kubeadm's configuration only.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BootstrapToken").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// The key of a token's signature in `cluster-info`.
pub fn jws_key(token_id: &str) -> String {
    format!("jws-kubeconfig-{token_id}")
}

/// The protected header the bootstrap signer writes (go-jose's serialisation), base64url.
fn jws_header(token_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{token_id}"}}"#))
}

fn hmac_key(secret: &str) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes())
}

fn signing_input(header: &str, content: &str) -> String {
    format!("{header}.{}", URL_SAFE_NO_PAD.encode(content))
}

/// The detached JWS (`header..signature`) of `content` under a token, as
/// k8s.io/cluster-bootstrap's `ComputeDetachedSignature` makes it: HS256 with the token secret
/// as key over `base64url(header).base64url(content)`.
pub fn detached_jws(content: &str, token_id: &str, secret: &str) -> String {
    let header = jws_header(token_id);
    let sig = hmac::sign(&hmac_key(secret), signing_input(&header, content).as_bytes());
    format!("{header}..{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// Whether `detached` signs `content` under the token: the header must be exactly the one
/// the signer writes for this token ID (kubeadm compares whole strings) and the signature is
/// checked in constant time.
pub fn jws_is_valid(detached: &str, content: &str, token_id: &str, secret: &str) -> bool {
    let Some((header, sig)) = detached.split_once("..") else { return false };
    if header != jws_header(token_id) {
        return false;
    }
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else { return false };
    hmac::verify(&hmac_key(secret), signing_input(header, content).as_bytes(), &sig).is_ok()
}

/// `sha256:` + hex SHA-256 of the DER SubjectPublicKeyInfo of the first certificate in
/// `pem`: the pin `kubeadm join --discovery-token-ca-cert-hash` takes. The certificate is
/// parsed by webpki, the parser rustls (and so kube-rs) already uses.
pub fn ca_cert_hash(pem: &[u8]) -> Result<String> {
    let der = CertificateDer::from_pem_slice(pem).context("no PEM certificate")?;
    let cert = webpki::EndEntityCert::try_from(&der).map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let spki = cert.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    Ok(format!("sha256:{}", hex(digest.as_ref())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // k8s.io/cluster-bootstrap@v0.34.4 token/jws/jws_test.go.
    const CONTENT: &str = "Hello from the other side. I must have called a thousand times.";
    const SECRET: &str = "my voice is my passcode";
    const ID: &str = "joshua";

    #[test]
    fn jws_matches_cluster_bootstrap_vectors() {
        let sig = "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..VShe2taLd-YTrmWuRkcL_8QTNDHYxQIEBsAYYiIj1_8";
        assert_eq!(detached_jws(CONTENT, ID, SECRET), sig);
        assert_eq!(
            detached_jws("", ID, SECRET),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..7Ui1ALizW4jXphVUB7xUqC9vLYLL9RZeOFfVLoB7Tgk"
        );
        assert_eq!(
            detached_jws(CONTENT, ID, ""),
            "eyJhbGciOiJIUzI1NiIsImtpZCI6Impvc2h1YSJ9..UfkqvDGiIFxrMnFseDj9LYJOLNrvjW8aHhF71mvvAs8"
        );
        assert!(jws_is_valid(sig, CONTENT, ID, SECRET));
        assert!(!jws_is_valid(&format!("{sig}foo"), CONTENT, ID, SECRET));
        assert!(!jws_is_valid(sig, &format!("{CONTENT} "), ID, SECRET), "other content");
        assert!(!jws_is_valid(sig, CONTENT, "joshub", SECRET), "other token id");
        assert!(!jws_is_valid(sig, CONTENT, ID, "my voice is my password"), "other secret");
        assert!(!jws_is_valid(&sig.replacen("..", ".", 1), CONTENT, ID, SECRET), "not detached");
    }

    #[test]
    fn ca_pin_of_a_kubeadm_ca() {
        // The value openssl computes (testdata/README.md).
        let pem = include_bytes!("testdata/kubeadm-ca.crt");
        assert_eq!(
            ca_cert_hash(pem).expect("pin"),
            "sha256:4dc274a0b581abb8e190d987b2051595dfe527235c340c51d7b2fb0775a6cf51"
        );
        assert!(ca_cert_hash(b"not a certificate").is_err());
    }

    #[test]
    fn tokens_are_random_well_formed_and_redacted() {
        let a = BootstrapToken::generate().expect("token");
        let b = BootstrapToken::generate().expect("token");
        assert_ne!(a, b);
        let parsed = BootstrapToken::parse(&a.expose()).expect("parse");
        assert_eq!(parsed, a);
        assert_eq!((a.id().len(), a.secret().len()), (6, 16));
        let debug = format!("{a:?}");
        assert!(debug.contains(a.id()) && !debug.contains(a.secret()), "{debug}");
        for bad in
            ["abcdef0123456789abcdef", "abcde.0123456789abcdef", "ABCDEF.0123456789abcdef", "abcdef.0123456789abcde!"]
        {
            assert!(BootstrapToken::parse(bad).is_err(), "{bad}");
        }
        assert!(BootstrapToken::parse("abcdef.0123456789abcdef\n").is_ok());
    }
}
