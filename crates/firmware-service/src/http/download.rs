//! `GET /api/v1/firmware/{id}/download`: the image, whole or a byte range
//! (`Range: bytes=…`, answered 206 or 416), for
//!
//! - a device holding a download link from its OTA notification
//!   (`?token=…`, bound to the device, the image and an expiry),
//! - a device presenting its own credentials (HTTP Basic
//!   `device_id:secret`, checked by device-service), or
//! - a user with `firmware:read` (bearer token).
//!
//! A device (by link or by credentials) downloads only an image it has an
//! open execution for: a rollout or upgrade task installing that image on
//! it that is not finished or canceled. Canceling the task therefore
//! revokes its links at once, whatever their expiry.

use axum::body::Body;
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use wf_common::ApiError;
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{Path, Query};

use crate::error::{Error, Result};
use crate::state::{AppState, Caller, Permission};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DownloadQuery {
    /// The signed download link's token from the device's OTA
    /// notification; when present, it alone authorizes the download.
    token: Option<String>,
}

/// The image's bytes, for the OpenAPI document.
#[derive(utoipa::ToSchema)]
#[schema(as = FirmwareImage, value_type = String, format = Binary)]
#[allow(dead_code)]
pub struct Image(Vec<u8>);

/// Which part of the image to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

/// Interprets a `Range` header against an image of `size` bytes. One range
/// of `bytes` is honoured; anything else (several ranges, other units,
/// nonsense) is ignored and the whole image sent, as RFC 9110 allows.
pub fn select(range: Option<&str>, size: u64) -> Selection {
    let Some(spec) = range.and_then(|r| r.trim().strip_prefix("bytes=")) else {
        return Selection::Whole;
    };
    if spec.contains(',') {
        return Selection::Whole;
    }
    let Some((start, end)) = spec.trim().split_once('-') else {
        return Selection::Whole;
    };
    let (start, end) = (start.trim(), end.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    match (start.is_empty(), end.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(end) {
            Some(0) => Selection::Unsatisfiable,
            Some(_) if size == 0 => Selection::Unsatisfiable,
            Some(n) => Selection::Part(size - n.min(size)..size),
            None => Selection::Whole,
        },
        // bytes=A-: from A to the end.
        (false, true) => match parse(start) {
            Some(a) if a < size => Selection::Part(a..size),
            Some(_) => Selection::Unsatisfiable,
            None => Selection::Whole,
        },
        // bytes=A-B, inclusive.
        (false, false) => match (parse(start), parse(end)) {
            (Some(a), Some(b)) if a <= b && a < size => {
                Selection::Part(a..b.saturating_add(1).min(size))
            }
            (Some(a), Some(b)) if a <= b => Selection::Unsatisfiable,
            _ => Selection::Whole,
        },
        (true, true) => Selection::Whole,
    }
}

/// Who is downloading, for logs and metrics.
enum Downloader {
    Link(String),
    Device(String),
    User(String),
}

impl Downloader {
    fn kind(&self) -> &'static str {
        match self {
            Self::Link(_) => "link",
            Self::Device(_) => "device",
            Self::User(_) => "user",
        }
    }
}

/// Refuses a device's download of an image it has no open execution for.
async fn require_open_execution(
    state: &AppState,
    device_id: &str,
    firmware_id: &str,
    how: &'static str,
) -> Result<()> {
    if state
        .store
        .device_has_open_execution(device_id, firmware_id)
        .await?
    {
        return Ok(());
    }
    metrics::counter!("wf_firmware_downloads_refused_total", "reason" => "no_open_execution", "by" => how)
        .increment(1);
    tracing::warn!(
        device_id,
        firmware_id,
        by = how,
        "refused: a device download without an open upgrade"
    );
    Err(Error::Forbidden(
        "this device has no open upgrade to this image (finished, canceled or never assigned)"
            .into(),
    ))
}

async fn authorize(
    state: &AppState,
    parts: &mut Parts,
    firmware_id: &str,
    token: Option<&str>,
) -> Result<Downloader> {
    if let Some(token) = token {
        let grant = state
            .links
            .verify(firmware_id, token, chrono::Utc::now().timestamp())
            .map_err(Error::Forbidden)?;
        require_open_execution(state, &grant.device_id, firmware_id, "link").await?;
        return Ok(Downloader::Link(grant.device_id));
    }
    let basic = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .map(str::trim);
    if let Some(encoded) = basic {
        let refused = || Error::Unauthenticated("the device credentials were refused".into());
        let decoded = STANDARD
            .decode(encoded)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(refused)?;
        let (device_id, secret) = decoded.split_once(':').ok_or_else(refused)?;
        if !state.devices.authenticate(device_id, secret).await? {
            return Err(refused());
        }
        require_open_execution(state, device_id, firmware_id, "device").await?;
        return Ok(Downloader::Device(device_id.to_string()));
    }
    if wf_common::caller::bearer_token(parts).is_some() {
        let caller =
            <Caller as axum::extract::FromRequestParts<AppState>>::from_request_parts(parts, state)
                .await?;
        caller.require(state, Permission::Read).await?;
        return Ok(Downloader::User(caller.0.username));
    }
    Err(Error::Unauthenticated(
        "download with the link from the OTA notification, device credentials \
         (HTTP Basic) or a bearer token"
            .into(),
    ))
}

/// The image, whole (200) or one byte range (`Range: bytes=…`, 206; 416
/// when it lies past the end). Authorized by the signed link in `token`,
/// by a device's own credentials (HTTP Basic `device_id:secret`), or by a
/// bearer token with `firmware:read`. A device (link or credentials) gets
/// only an image it has an open rollout execution or upgrade task for; a
/// link stops working as soon as its task is canceled or finished.
#[utoipa::path(get, path = "/api/v1/firmware/{id}/download", operation_id = "download_firmware", tag = "firmware",
    security((), ("device_basic" = []), ("bearer" = [])),
    params(
        ("id" = String, Path, description = "The firmware id"),
        DownloadQuery,
        ("Range" = Option<String>, Header, nullable = false, description = "One range of bytes, e.g. `bytes=0-1023`, `bytes=1024-` or `bytes=-512`; \
            several ranges, other units or malformed values are ignored and the whole image sent"),
        ("If-Range" = Option<String>, Header, nullable = false, description = "The image's ETag; when it differs, the whole image is sent"),
    ),
    responses(
        (status = 200, description = "The whole image", content_type = "application/octet-stream", body = Image,
            headers(
                ("ETag" = String, description = "The image's SHA-256, quoted"),
                ("Accept-Ranges" = String, description = "`bytes`"),
                ("Content-Length" = u64),
            )),
        (status = 206, description = "The requested range", content_type = "application/octet-stream", body = Image,
            headers(
                ("Content-Range" = String, description = "`bytes first-last/size`"),
                ("ETag" = String, description = "The image's SHA-256, quoted"),
                ("Content-Length" = u64),
            )),
        (status = 401, description = "No or refused credentials", body = ErrorEnvelope),
        (status = 403, description = "The link is invalid or expired, the device has no open upgrade to this image \
            (never assigned, finished or canceled), or the user lacks `firmware:read`", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 416, description = "The range starts past the end of the image", body = ErrorEnvelope,
            headers(("Content-Range" = String, description = "`bytes */size`"))),
    ))]
pub async fn download(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DownloadQuery>,
    mut parts: Parts,
) -> Result<Response> {
    // Unknown ids are answered after authorization, so they reveal nothing.
    let firmware = state.store.get_firmware(&id).await?;
    let who = authorize(&state, &mut parts, &id, q.token.as_deref()).await?;
    let Some(firmware) = firmware else {
        return Err(Error::no_such("firmware", &id));
    };
    let size = u64::try_from(firmware.size).unwrap_or_default();
    let etag = format!("\"{}\"", firmware.sha256);
    let headers: &HeaderMap = &parts.headers;
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    // A resumed download of a different image starts over.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim() == etag);
    let selection = if if_range_ok {
        select(range, size)
    } else {
        Selection::Whole
    };
    let (status, span) = match selection {
        Selection::Whole => (StatusCode::OK, 0..size),
        Selection::Part(r) => (StatusCode::PARTIAL_CONTENT, r),
        Selection::Unsatisfiable => {
            let mut response = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "range_not_satisfiable",
                format!("the image is {size} bytes long"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                response.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(response);
        }
    };
    let stream = state.blobs.get(&firmware.storage_key, span.clone()).await?;
    metrics::counter!("wf_firmware_downloads_total", "by" => who.kind(), "status" => status.as_str().to_string())
        .increment(1);
    match &who {
        Downloader::Link(device) | Downloader::Device(device) => {
            tracing::debug!(firmware_id = %id, device_id = %device, range = ?span, "firmware download");
        }
        Downloader::User(user) => {
            tracing::debug!(firmware_id = %id, user = %user, range = ?span, "firmware download");
        }
    }
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(span.end - span.start),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{id}.bin\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!(
            "bytes {}-{}/{size}",
            span.start,
            span.end.saturating_sub(1)
        ))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use Selection::*;
        let s = |r: &str| select(Some(r), 1000);
        assert_eq!(select(None, 1000), Whole);
        assert_eq!(s("bytes=0-99"), Part(0..100));
        assert_eq!(s("bytes=900-"), Part(900..1000));
        assert_eq!(s("bytes=-100"), Part(900..1000));
        assert_eq!(s("bytes=-5000"), Part(0..1000));
        assert_eq!(s("bytes=990-2000"), Part(990..1000));
        assert_eq!(s("bytes=999-999"), Part(999..1000));
        assert_eq!(s("bytes=1000-"), Unsatisfiable);
        assert_eq!(s("bytes=1000-1001"), Unsatisfiable);
        assert_eq!(s("bytes=-0"), Unsatisfiable);
        assert_eq!(select(Some("bytes=-1"), 0), Unsatisfiable);
        // Ignored: several ranges, other units, nonsense, reversed.
        assert_eq!(s("bytes=0-1,5-6"), Whole);
        assert_eq!(s("items=0-1"), Whole);
        assert_eq!(s("bytes=a-b"), Whole);
        assert_eq!(s("bytes=50-10"), Whole);
        assert_eq!(s("bytes=-"), Whole);
    }
}
