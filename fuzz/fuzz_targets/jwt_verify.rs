//! JWT verification of an attacker-supplied token. Input: a first byte
//! choosing the mode, then
//! - mode 0: a whole token (`header.claims.signature`), verified as is: it
//!   verifies only when it carries the key's own signature of exactly its
//!   first two parts (the fuzzer cannot sign, so it cannot forge one);
//! - mode 1: a header and claims (JSON, split at the first newline) that
//!   are encoded and signed with the verifier's key, so that the header
//!   and claim checks behind the signature are reached too.

#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::Signer;
use libfuzzer_sys::fuzz_target;
use wf_common::jwt::{key_id, AccessClaims, JwtVerifier, ACCESS_TOKEN_TYPE};

const ISSUER: &str = "wf-iot";

struct Fixture {
    key: ed25519_dalek::SigningKey,
    verifier: JwtVerifier,
    runtime: tokio::runtime::Runtime,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    Fixture {
        verifier: JwtVerifier::with_keys(ISSUER, [key.verifying_key()]),
        key,
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime"),
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = &*FIXTURE;
    if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else {
            return;
        };
        if f.runtime.block_on(f.verifier.verify(token)).is_ok() {
            let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
            let expected = URL_SAFE_NO_PAD.encode(f.key.sign(signing_input.as_bytes()).to_bytes());
            assert_eq!(
                signature, expected,
                "{token:?} verified with another signature"
            );
        }
        return;
    }
    let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &b""[..]),
    };
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature = f.key.sign(signing_input.as_bytes());
    let token = format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    );
    let Ok(verified) = f.runtime.block_on(f.verifier.verify(&token)) else {
        return;
    };
    check_accepted(header, claims, &verified, &f.key);
});

/// What a verified token must have been.
fn check_accepted(
    header: &[u8],
    claims: &[u8],
    verified: &AccessClaims,
    key: &ed25519_dalek::SigningKey,
) {
    let header: serde_json::Value = serde_json::from_slice(header).expect("a JSON header");
    assert_eq!(header["alg"], "EdDSA", "{header}");
    assert_eq!(
        header["kid"],
        key_id(&key.verifying_key()).as_str(),
        "{header}"
    );
    assert!(header.get("crit").is_none_or(|c| c.is_null()), "{header}");
    let sent: AccessClaims = serde_json::from_slice(claims).expect("access claims");
    assert_eq!(&sent, verified);
    assert_eq!(verified.iss, ISSUER);
    assert_eq!(verified.typ, ACCESS_TOKEN_TYPE);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    assert!(verified.exp > now - 60, "expired at {}", verified.exp);
    assert!(verified.iat < now + 60, "issued at {}", verified.iat);
}
