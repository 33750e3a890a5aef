//! Firmware images: streamed multipart upload with digest and signature
//! checks, list, read and delete.

use std::io::Write;

use axum::Json;
use axum::extract::multipart::{Field, MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wf_common::audit::Client;
use wf_common::error::ErrorEnvelope;
use wf_common::extract::{Path, Query};
use wf_common::format_millis;

use super::{FORM_OVERHEAD, Page, Paged};
use crate::domain::{FirmwareVersion, Sha256Digest, check_device_type, new_id};
use crate::error::{Error, Result};
use crate::state::{AppState, Caller, Permission};
use crate::store::FirmwareRecord;

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Firmware)]
pub struct FirmwareDto {
    id: String,
    name: String,
    device_type: String,
    /// The semantic version, normalised (no leading `v`).
    version: String,
    release_notes: String,
    /// Bytes.
    size: i64,
    /// The image's SHA-256, 64 lowercase hexadecimal digits.
    sha256: String,
    signed: bool,
    /// Base64 Ed25519 signature over the SHA-256 digest.
    signature: Option<String>,
    created_by: String,
    #[schema(format = DateTime)]
    created_at: String,
    /// Where users (bearer token), devices (their credentials) and download
    /// links fetch the image.
    download_path: String,
}

impl From<FirmwareRecord> for FirmwareDto {
    fn from(f: FirmwareRecord) -> Self {
        Self {
            download_path: format!("/api/v1/firmware/{}/download", f.id),
            id: f.id,
            name: f.name,
            device_type: f.device_type,
            version: f.version,
            release_notes: f.release_notes,
            size: f.size,
            sha256: f.sha256,
            signed: f.signature.is_some(),
            signature: f.signature,
            created_by: f.created_by,
            created_at: format_millis(f.created_at),
        }
    }
}

/// The longest text field of the upload form.
const MAX_TEXT_FIELD: usize = 16 * 1024;
/// Chunks buffered between the request and the file writer.
const WRITE_QUEUE: usize = 8;

fn too_large(max: u64) -> Error {
    crate::error::payload_too_large(format!("firmware images are limited to {max} bytes"))
}

fn multipart_error(e: MultipartError, max: u64) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large(max)
    } else {
        Error::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

async fn text_field(field: &mut Field<'_>, name: &str, max: u64) -> Result<String> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
        if buf.len() + chunk.len() > MAX_TEXT_FIELD {
            return Err(Error::Validation(format!(
                "{name} must be at most {MAX_TEXT_FIELD} bytes"
            )));
        }
        buf.extend_from_slice(&chunk);
    }
    String::from_utf8(buf).map_err(|_| Error::Validation(format!("{name} must be UTF-8 text")))
}

/// The form's text fields, in any order around the file.
#[derive(Default, Clone)]
struct Form {
    name: Option<String>,
    device_type: Option<String>,
    version: Option<String>,
    release_notes: Option<String>,
    sha256: Option<String>,
    signature: Option<String>,
}

/// The fields, checked.
struct Checked {
    name: String,
    device_type: String,
    version: FirmwareVersion,
    release_notes: String,
    sha256: Option<Sha256Digest>,
    signature: Option<String>,
}

fn check_form(form: Form) -> Result<Checked> {
    let missing = |f: &str| {
        Error::Validation(format!(
            "the {f} field is required and must come before the file"
        ))
    };
    let name = form.name.ok_or_else(|| missing("name"))?.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(Error::Validation("name must be 1 to 200 characters".into()));
    }
    let device_type = check_device_type(&form.device_type.ok_or_else(|| missing("device_type"))?)
        .map_err(Error::Validation)?;
    let version = FirmwareVersion::parse(&form.version.ok_or_else(|| missing("version"))?)
        .map_err(Error::Validation)?;
    let sha256 = form
        .sha256
        .filter(|s| !s.trim().is_empty())
        .map(|s| Sha256Digest::parse_hex(&s))
        .transpose()
        .map_err(Error::Validation)?;
    let signature = form
        .signature
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if signature.as_ref().is_some_and(|s| s.len() > 200) {
        return Err(crate::error::bad_signature(
            "the signature must be a base64 Ed25519 signature",
        ));
    }
    Ok(Checked {
        name,
        device_type,
        version,
        release_notes: form.release_notes.unwrap_or_default(),
        sha256,
        signature,
    })
}

/// A file part written to a temporary file while it is hashed, chunk by
/// chunk; the file is removed when this value is dropped unless stored.
struct Received {
    path: tempfile::TempPath,
    size: u64,
    digest: Sha256Digest,
}

/// Streams the file part to a temporary file in `dir`, hashing it on a
/// blocking thread (never on the executor, never whole in memory), and
/// refusing it once it passes `max` bytes.
async fn receive_file(field: &mut Field<'_>, dir: &std::path::Path, max: u64) -> Result<Received> {
    let (file, path) = tempfile::Builder::new()
        .prefix(".upload-")
        .tempfile_in(dir)?
        .into_parts();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, [u8; 32])> {
        let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = rx.blocking_recv() {
            hasher.update(&chunk);
            out.write_all(&chunk)?;
            size += chunk.len() as u64;
        }
        out.flush()?;
        out.get_ref().sync_all()?;
        Ok((size, hasher.finalize().into()))
    });
    let mut received = 0u64;
    let read: Result<()> = async {
        while let Some(chunk) = field.chunk().await.map_err(|e| multipart_error(e, max))? {
            received += chunk.len() as u64;
            if received > max {
                return Err(too_large(max));
            }
            if tx.send(chunk).await.is_err() {
                // The writer stopped; its error is reported below.
                break;
            }
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer
        .await
        .map_err(|e| Error::Internal(anyhow::anyhow!("upload writer: {e}")))?;
    read?;
    let (size, digest) = written?;
    Ok(Received {
        path,
        size,
        digest: Sha256Digest(digest),
    })
}

/// The upload form, for the OpenAPI document: `multipart/form-data` with
/// these parts, the file best last.
#[derive(utoipa::ToSchema)]
#[schema(as = FirmwareUploadForm)]
#[allow(dead_code)]
pub struct UploadForm {
    /// 1 to 200 characters, not only spaces.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    name: String,
    /// 1 to 64 letters, digits, `.`, `_` or `-`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$")]
    device_type: String,
    /// A semantic version such as `1.4.0` (a leading `v` is dropped); unique
    /// per device type.
    #[schema(
        max_length = 64,
        pattern = "^v?(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)$",
        example = "1.4.0"
    )]
    version: String,
    /// Free text, at most 16 KiB.
    #[schema(nullable = false, max_length = 16384)]
    release_notes: Option<String>,
    /// The image's SHA-256 in hexadecimal; when sent, an image that hashes
    /// otherwise is refused (422 `digest_mismatch`).
    #[schema(nullable = false, pattern = "^[0-9A-Fa-f]{64}$")]
    sha256: Option<String>,
    /// Base64 Ed25519 signature over the image's SHA-256 digest, by one of
    /// the configured signing keys (422 `bad_signature` otherwise). Required
    /// when the service accepts signed firmware only.
    #[schema(nullable = false, pattern = "^[A-Za-z0-9+/]{86}==$")]
    signature: Option<String>,
    /// The image, not empty; best sent last, after the fields.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
}

/// 409 when the device type has this version already.
async fn refuse_existing(state: &AppState, checked: &Checked) -> Result<()> {
    match state
        .store
        .find_firmware(&checked.device_type, &checked.version.to_string())
        .await?
    {
        Some(existing) => Err(Error::Conflict(format!(
            "firmware {} for device type {:?} exists already ({})",
            checked.version, checked.device_type, existing.id
        ))),
        None => Ok(()),
    }
}

/// What an upload form brought: its text fields and the file.
struct Upload {
    form: Form,
    received: Received,
}

/// Reads an upload form: the text fields in any order and one file part,
/// streamed to a temporary file in `dir` and refused past `max` bytes. When
/// the fields come before the file (the recommended order), they are
/// checked, and with `state` an existing version refused, before the image
/// is received; fields that follow the file are left to the caller.
async fn read_upload(
    multipart: &mut Multipart,
    dir: &std::path::Path,
    max: u64,
    state: Option<&AppState>,
) -> Result<Upload> {
    let mut form = Form::default();
    let mut received: Option<Received> = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, max))?
    {
        let name = field.name().unwrap_or_default().to_string();
        let slot = match name.as_str() {
            "name" => &mut form.name,
            "device_type" => &mut form.device_type,
            "version" => &mut form.version,
            "release_notes" => &mut form.release_notes,
            "sha256" => &mut form.sha256,
            "signature" => &mut form.signature,
            "file" => {
                if received.is_some() {
                    return Err(Error::Validation("only one file part is accepted".into()));
                }
                if form.name.is_some() && form.device_type.is_some() && form.version.is_some() {
                    let early = check_form(form.clone())?;
                    if let Some(state) = state {
                        refuse_existing(state, &early).await?;
                    }
                }
                received = Some(receive_file(&mut field, dir, max).await?);
                continue;
            }
            other => {
                return Err(Error::Validation(format!(
                    "unexpected field {other:?} (expected name, device_type, version, \
                     release_notes, sha256, signature and file)"
                )));
            }
        };
        *slot = Some(text_field(&mut field, &name, max).await?);
    }
    let Some(received) = received else {
        return Err(Error::Validation("the file part is missing".into()));
    };
    Ok(Upload { form, received })
}

/// Reads an upload request's body as `POST /api/v1/firmware` does, without
/// the store: the multipart form with its file (to a temporary file in
/// `dir`, at most `max` bytes) and the checks of its fields. Answers the
/// size of the file, or the error the request is refused with. For the
/// fuzz targets.
pub async fn read_upload_body(
    content_type: &str,
    body: Bytes,
    dir: &std::path::Path,
    max: u64,
) -> Result<u64> {
    use axum::extract::FromRequest;
    let request = axum::http::Request::builder()
        .header(header::CONTENT_TYPE, content_type)
        .body(axum::body::Body::from(body))
        .map_err(|e| Error::BadRequest(e.to_string()))?;
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(multipart_rejection)?;
    let Upload { form, received } = read_upload(&mut multipart, dir, max, None).await?;
    check_form(form)?;
    Ok(received.size)
}

fn multipart_rejection(e: MultipartRejection) -> Error {
    Error::BadRequest(format!(
        "expected a multipart/form-data body: {}",
        e.body_text()
    ))
}

/// `POST /api/v1/firmware`, `multipart/form-data` with the fields `name`,
/// `device_type`, `version`, optional `release_notes`, `sha256` (hex) and
/// `signature` (base64 Ed25519 over the SHA-256 digest), and the `file`
/// part, best last: then a bad form is refused before the image is sent. The client's file name is ignored: images are stored under
/// a generated id.
#[utoipa::path(post, path = "/api/v1/firmware", operation_id = "upload_firmware", tag = "firmware", security(("bearer" = [])),
    request_body(content = UploadForm, content_type = "multipart/form-data",
        description = "The fields and the `file` part, best last (a bad form is then refused before \
            the image is received). Requires `firmware:write`."),
    responses(
        (status = 201, description = "Stored", body = FirmwareDto,
            links(("GetFirmware" = (operation_id = "get_firmware", parameters(("id" = "$response.body#/id")))), ("DownloadFirmware" = (operation_id = "download_firmware", parameters(("id" = "$response.body#/id")))), ("DeleteFirmware" = (operation_id = "delete_firmware", parameters(("id" = "$response.body#/id")))))),
        (status = 400, description = "Not a well-formed multipart/form-data body", body = ErrorEnvelope),
        (status = 409, description = "This version exists already for the device type", body = ErrorEnvelope),
        (status = 413, description = "The image is larger than the service accepts", body = ErrorEnvelope),
        (status = 422, description = "A field is missing or invalid, the file is missing, sent twice or empty, \
            or the digest (`digest_mismatch`) or signature (`bad_signature`) does not match", body = ErrorEnvelope),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    headers: HeaderMap,
    multipart: std::result::Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<FirmwareDto>)> {
    caller.require(&state, Permission::Write).await?;
    let mut multipart = multipart.map_err(multipart_rejection)?;
    let max = state.config.max_firmware_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max.saturating_add(FORM_OVERHEAD)) {
        return Err(too_large(max));
    }
    let Upload { form, received } =
        read_upload(&mut multipart, &state.config.upload_dir, max, Some(&state)).await?;
    let checked = check_form(form)?;
    refuse_existing(&state, &checked).await?;
    if received.size == 0 {
        return Err(Error::Validation("the file is empty".into()));
    }
    if let Some(expected) = checked.sha256
        && expected != received.digest
    {
        metrics::counter!("wf_firmware_uploads_refused_total", "reason" => "digest").increment(1);
        return Err(crate::error::digest_mismatch(format!(
            "the file's SHA-256 is {}, not the {} that was sent; nothing was kept",
            received.digest.to_hex(),
            expected.to_hex()
        )));
    }
    match &checked.signature {
        Some(signature) => {
            if let Err(e) = state.signing_keys.verify(&received.digest, signature) {
                metrics::counter!("wf_firmware_uploads_refused_total", "reason" => "signature")
                    .increment(1);
                return Err(crate::error::bad_signature(e));
            }
        }
        None if state.config.require_signature => {
            return Err(crate::error::bad_signature(
                "this service accepts signed firmware only",
            ));
        }
        None => {}
    }
    let id = new_id("fw");
    state.blobs.put_file(&id, &received.path).await?;
    let record = FirmwareRecord {
        id: id.clone(),
        name: checked.name,
        device_type: checked.device_type,
        version: checked.version.to_string(),
        release_notes: checked.release_notes,
        size: i64::try_from(received.size).unwrap_or(i64::MAX),
        sha256: received.digest.to_hex(),
        signature: checked.signature,
        storage_key: id.clone(),
        created_by: caller.user_id.clone(),
        created_at: wf_common::now_millis(),
    };
    if let Err(e) = state.store.insert_firmware(&record).await {
        if let Err(cleanup) = state.blobs.delete(&id).await {
            tracing::warn!(firmware_id = %id, error = %cleanup, "removing an orphaned image failed");
        }
        return Err(e);
    }
    metrics::counter!("wf_firmware_uploads_total").increment(1);
    let details = serde_json::json!({
        "name": record.name, "device_type": record.device_type, "version": record.version,
        "size": record.size, "sha256": record.sha256,
    });
    caller
        .record(state.bus.as_ref(), &client, "firmware.upload", &id, details)
        .await;
    tracing::info!(
        firmware_id = %id,
        device_type = %record.device_type,
        version = %record.version,
        size = record.size,
        by = %caller.username,
        "firmware uploaded"
    );
    Ok((StatusCode::CREATED, Json(record.into())))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only images for this device type.
    #[param(max_length = 256)]
    device_type: Option<String>,
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<i64>,
    #[param(minimum = 0, default = 0)]
    offset: Option<i64>,
}

/// Images, newest first. Requires `firmware:read`.
#[utoipa::path(get, path = "/api/v1/firmware", operation_id = "list_firmware", tag = "firmware", security(("bearer" = [])), params(ListQuery),
    responses(
        (status = 200, body = Paged<FirmwareDto>),
        (status = 400, description = "A query parameter is not of its type", body = ErrorEnvelope),
        (status = 422, description = "limit or offset out of range, or a filter longer than 256 characters", body = ErrorEnvelope),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<Paged<FirmwareDto>>> {
    caller.require(&state, Permission::Read).await?;
    let Page { limit, offset } = Page::from_query(q.limit, q.offset)?;
    wf_common::text::check_filter("device_type", q.device_type.as_deref())
        .map_err(Error::Validation)?;
    let device_type = q.device_type.filter(|t| !t.trim().is_empty());
    let (items, total) = state
        .store
        .list_firmware(device_type.as_deref(), limit, offset)
        .await?;
    Ok(Json(Paged {
        items: items.into_iter().map(FirmwareDto::from).collect(),
        total,
        limit,
        offset,
    }))
}

/// One image. Requires `firmware:read`.
#[utoipa::path(get, path = "/api/v1/firmware/{id}", operation_id = "get_firmware", tag = "firmware", security(("bearer" = [])),
    params(("id" = String, Path, description = "The firmware id")),
    responses(
        (status = 200, body = FirmwareDto),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<FirmwareDto>> {
    caller.require(&state, Permission::Read).await?;
    match state.store.get_firmware(&id).await? {
        Some(f) => Ok(Json(f.into())),
        None => Err(Error::no_such("firmware", &id)),
    }
}

/// Deletes an image and its file; refused with 409 while a rollout or
/// upgrade task still uses it. Images are a shared catalogue: every holder
/// of `firmware:read` reads them, but only their uploader or an admin
/// deletes one. Requires `firmware:write`.
#[utoipa::path(delete, path = "/api/v1/firmware/{id}", operation_id = "delete_firmware", tag = "firmware", security(("bearer" = [])),
    params(("id" = String, Path, description = "The firmware id")),
    responses(
        (status = 204, description = "Deleted, with its file"),
        (status = 403, description = "No `firmware:write`, or another user's image (only its uploader or an admin deletes it)", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "A rollout or upgrade task still uses it", body = ErrorEnvelope),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Client(client): Client,
    Path(id): Path<String>,
) -> Result<StatusCode> {
    let access = caller.require(&state, Permission::Write).await?;
    let Some(firmware) = state.store.get_firmware(&id).await? else {
        return Err(Error::no_such("firmware", &id));
    };
    if !access.reaches(&firmware.created_by) {
        metrics::counter!("wf_firmware_refused_total", "reason" => "not_owner").increment(1);
        tracing::warn!(firmware_id = %id, by = %caller.username, "refused: deleting another user's firmware");
        caller
            .record_denied(state.bus.as_ref(), &client, "firmware.delete", &id)
            .await;
        return Err(Error::Forbidden(
            "only the image's uploader or an admin can delete it".into(),
        ));
    }
    if !state.store.delete_firmware(&id).await? {
        return Err(Error::no_such("firmware", &id));
    }
    let details =
        serde_json::json!({"device_type": firmware.device_type, "version": firmware.version});
    caller
        .record(state.bus.as_ref(), &client, "firmware.delete", &id, details)
        .await;
    if let Err(e) = state.blobs.delete(&firmware.storage_key).await {
        // The row is gone, so nothing can reach the file any more.
        tracing::warn!(firmware_id = %id, error = %e, "removing a deleted image's file failed");
    }
    tracing::info!(firmware_id = %id, by = %caller.username, "firmware deleted");
    Ok(StatusCode::NO_CONTENT)
}
