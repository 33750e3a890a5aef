//! firmware-service answers with the service kit's error
//! ([`wf_common::error::Error`]), extended with the cases of an upload.

use axum::http::StatusCode;
use tonic::Code;
use wf_common::ApiError;

pub use wf_common::error::{Error, Result};

/// The uploaded file does not hash to the digest the client sent.
pub fn digest_mismatch(message: impl Into<String>) -> Error {
    Error::specific(
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "digest_mismatch", message),
        Code::InvalidArgument,
    )
}

/// The firmware signature is missing, malformed or does not verify.
pub fn bad_signature(message: impl Into<String>) -> Error {
    Error::specific(
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_signature", message),
        Code::InvalidArgument,
    )
}

/// The image is larger than the configured limit.
pub fn payload_too_large(message: impl Into<String>) -> Error {
    Error::specific(
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message),
        Code::OutOfRange,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_cases_keep_their_codes() {
        for (err, status, code, grpc) in [
            (
                digest_mismatch("x"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "digest_mismatch",
                Code::InvalidArgument,
            ),
            (
                bad_signature("x"),
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_signature",
                Code::InvalidArgument,
            ),
            (
                payload_too_large("x"),
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Code::OutOfRange,
            ),
        ] {
            let Error::Specific { http, grpc: g } = err else {
                panic!("not a specific case")
            };
            assert_eq!((http.status, http.code.as_ref(), g), (status, code, grpc));
        }
    }
}
