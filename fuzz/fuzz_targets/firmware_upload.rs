//! The firmware upload reader (`POST /api/v1/firmware`): a multipart form
//! through axum's `Multipart` extractor, its text fields, the file part
//! streamed to a temporary file, and the checks of the form. Input: the
//! request's content type on the first line, the body after it.

#![no_main]

use std::path::PathBuf;
use std::sync::LazyLock;

use axum::response::IntoResponse;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

/// Small, so that the size limit is reached too.
const MAX_FIRMWARE_BYTES: u64 = 1024;

struct Fixture {
    dir: PathBuf,
    runtime: tokio::runtime::Runtime,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("wf-iot-fuzz-upload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("the upload directory");
    Fixture {
        dir,
        runtime: tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime"),
    }
});

fuzz_target!(|data: &[u8]| {
    let (head, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(content_type) = std::str::from_utf8(head) else {
        return;
    };
    let f = &*FIXTURE;
    let result = f
        .runtime
        .block_on(firmware_service::fuzzing::read_upload_body(
            content_type,
            Bytes::copy_from_slice(body),
            &f.dir,
            MAX_FIRMWARE_BYTES,
        ));
    match result {
        Ok(size) => {
            assert!(size <= MAX_FIRMWARE_BYTES, "{size} bytes accepted");
            assert!(
                size <= body.len() as u64,
                "{size} bytes from a {}-byte body",
                body.len()
            );
        }
        Err(e) => {
            let message = e.to_string();
            let status = e.into_response().status();
            assert!(
                status.is_client_error(),
                "a bad upload answered {status}: {message}"
            );
        }
    }
    // Nothing of a refused or finished upload stays behind.
    let left = std::fs::read_dir(&f.dir)
        .expect("the upload directory")
        .count();
    assert_eq!(left, 0, "{left} temporary files left behind");
});
