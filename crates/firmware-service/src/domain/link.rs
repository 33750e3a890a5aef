//! Short-lived download links: `…/firmware/{id}/download?token=…`, where the
//! token names one device and an expiry and carries an HMAC-SHA256 over
//! them and the firmware id. One is made for each OTA notification.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a valid token allows: this device may download until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadGrant {
    pub device_id: String,
    /// Seconds since the Unix epoch.
    pub expires_at: i64,
}

/// Signs and checks download tokens with one secret key.
#[derive(Clone)]
pub struct LinkSigner {
    key: Vec<u8>,
}

/// Tokens longer than this are refused unread.
const MAX_TOKEN_LEN: usize = 512;

impl LinkSigner {
    pub fn new(key: &[u8]) -> Result<Self, String> {
        if key.len() < 16 {
            return Err("the download link key must be at least 16 bytes".into());
        }
        Ok(Self { key: key.to_vec() })
    }

    fn mac(&self, firmware_id: &str, device_id: &str, expires_at: i64) -> HmacSha256 {
        #[allow(clippy::expect_used)]
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(
            format!("wf-iot firmware download\n{firmware_id}\n{device_id}\n{expires_at}")
                .as_bytes(),
        );
        mac
    }

    /// A token letting `device_id` download `firmware_id` until `expires_at`
    /// (seconds since the epoch).
    pub fn sign(&self, firmware_id: &str, device_id: &str, expires_at: i64) -> String {
        let tag = self
            .mac(firmware_id, device_id, expires_at)
            .finalize()
            .into_bytes();
        format!(
            "{expires_at}.{}.{}",
            URL_SAFE_NO_PAD.encode(device_id),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Checks a token for `firmware_id` at `now` (seconds since the epoch).
    pub fn verify(
        &self,
        firmware_id: &str,
        token: &str,
        now: i64,
    ) -> Result<DownloadGrant, String> {
        let malformed = || "the download token is malformed".to_string();
        if token.len() > MAX_TOKEN_LEN {
            return Err(malformed());
        }
        let mut parts = token.split('.');
        let (Some(expires), Some(device), Some(tag), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let expires_at: i64 = expires.parse().map_err(|_| malformed())?;
        let device_id = URL_SAFE_NO_PAD
            .decode(device)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| malformed())?;
        self.mac(firmware_id, &device_id, expires_at)
            .verify_slice(&tag)
            .map_err(|_| "the download token is not valid for this firmware".to_string())?;
        if now > expires_at {
            return Err("the download token has expired".into());
        }
        Ok(DownloadGrant {
            device_id,
            expires_at,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_bind_firmware_device_and_expiry() {
        let signer = LinkSigner::new(&[3; 32]).unwrap();
        let token = signer.sign("fw-1", "dev.1:a", 1_000);
        assert_eq!(
            signer.verify("fw-1", &token, 999).unwrap(),
            DownloadGrant {
                device_id: "dev.1:a".into(),
                expires_at: 1_000
            }
        );
        assert!(signer.verify("fw-1", &token, 1_000).is_ok());
        assert!(
            signer
                .verify("fw-1", &token, 1_001)
                .unwrap_err()
                .contains("expired")
        );
        assert!(signer.verify("fw-2", &token, 999).is_err());
        // Moving the expiry or the device breaks the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let later = format!("2000.{}.{}", parts[1], parts[2]);
        assert!(signer.verify("fw-1", &later, 999).is_err());
        let other = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode("dev-2"),
            parts[2]
        );
        assert!(signer.verify("fw-1", &other, 999).is_err());
        // Another key, or garbage.
        assert!(
            LinkSigner::new(&[4; 32])
                .unwrap()
                .verify("fw-1", &token, 999)
                .is_err()
        );
        for bad in ["", "a.b", "1.2.3.4", "x.eA.eA", &"1".repeat(600)] {
            assert!(signer.verify("fw-1", bad, 0).is_err(), "{bad:?}");
        }
        assert!(LinkSigner::new(b"short").is_err());
    }
}
