//! Firmware digests and Ed25519 signatures over them.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey};

/// A SHA-256 digest, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    /// Parses 64 hex digits (either case).
    pub fn parse_hex(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("sha256 must be 64 hexadecimal digits".into());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
                .map_err(|_| "sha256 must be 64 hexadecimal digits".to_string())?;
        }
        Ok(Self(out))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The Ed25519 keys firmware signatures are checked against
/// (`signing_public_keys` in the configuration).
#[derive(Clone, Default)]
pub struct PublicKeys(Vec<VerifyingKey>);

impl PublicKeys {
    /// Each key is a PEM `PUBLIC KEY` block, or base64 of the raw 32-byte
    /// key or of its DER (SubjectPublicKeyInfo) encoding.
    pub fn parse(keys: &[String]) -> Result<Self, String> {
        keys.iter()
            .filter(|k| !k.trim().is_empty())
            .enumerate()
            .map(|(i, k)| {
                parse_key(k.trim()).map_err(|e| format!("signing public key {}: {e}", i + 1))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks a base64 signature of `digest`'s 32 bytes against every key.
    pub fn verify(&self, digest: &Sha256Digest, signature_b64: &str) -> Result<(), String> {
        if self.0.is_empty() {
            return Err("no signing keys are configured, so signatures cannot be checked".into());
        }
        let bytes = decode_b64(signature_b64.trim())
            .ok_or_else(|| "the signature is not base64".to_string())?;
        let signature = Signature::from_slice(&bytes)
            .map_err(|_| "the signature is not a 64-byte Ed25519 signature".to_string())?;
        if self
            .0
            .iter()
            .any(|key| key.verify_strict(&digest.0, &signature).is_ok())
        {
            Ok(())
        } else {
            Err("the signature does not verify against any configured key".into())
        }
    }
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(s)
        .ok()
        .or_else(|| URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok())
}

fn parse_key(k: &str) -> Result<VerifyingKey, String> {
    if k.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(k)
            .map_err(|e| format!("not an Ed25519 PEM public key: {e}"));
    }
    let bytes = decode_b64(k).ok_or("neither PEM nor base64")?;
    if let Ok(raw) = <[u8; 32]>::try_from(bytes.as_slice()) {
        return VerifyingKey::from_bytes(&raw).map_err(|e| format!("not an Ed25519 key: {e}"));
    }
    VerifyingKey::from_public_key_der(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::EncodePublicKey;
    use ed25519_dalek::{Signer, SigningKey};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn digests_in_hex() {
        let d = Sha256Digest([0xab; 32]);
        assert_eq!(
            Sha256Digest::parse_hex(&d.to_hex().to_uppercase()).unwrap(),
            d
        );
        assert!(Sha256Digest::parse_hex("abc").is_err());
        assert!(Sha256Digest::parse_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn signatures_verify_against_any_configured_key() {
        let signer = key(7);
        let pem = signer
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap();
        let raw = STANDARD.encode(key(9).verifying_key().to_bytes());
        let keys = PublicKeys::parse(&[raw, pem]).unwrap();
        let digest = Sha256Digest([1; 32]);
        let good = STANDARD.encode(signer.sign(&digest.0).to_bytes());
        assert!(keys.verify(&digest, &good).is_ok());
        // Signed by a key nobody configured, over another digest, or garbage.
        let stranger = STANDARD.encode(key(8).sign(&digest.0).to_bytes());
        assert!(keys.verify(&digest, &stranger).is_err());
        assert!(keys.verify(&Sha256Digest([2; 32]), &good).is_err());
        assert!(keys.verify(&digest, "not base64!").is_err());
        assert!(keys.verify(&digest, &STANDARD.encode([0u8; 10])).is_err());
        assert!(PublicKeys::default().verify(&digest, &good).is_err());
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(PublicKeys::parse(&["nonsense".into()]).is_err());
        assert!(PublicKeys::parse(&[STANDARD.encode([1u8; 5])]).is_err());
        assert!(PublicKeys::parse(&[String::new()]).unwrap().is_empty());
    }
}
