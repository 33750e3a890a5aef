//! The console's static files, embedded in the binary and served with an
//! ETag: browsers revalidate and get `304 Not Modified` until the binary
//! changes. Pages link them with `?v=<etag>` so a new build is never hidden
//! behind a cached copy.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: String,
}

pub struct Assets {
    files: Vec<Asset>,
}

const FILES: [(&str, &str, &[u8]); 3] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("assets/favicon.svg"),
    ),
];

impl Assets {
    pub fn load() -> Self {
        let files = FILES
            .iter()
            .map(|(name, content_type, body)| {
                let digest = Sha256::digest(body);
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                Asset {
                    name,
                    content_type,
                    body,
                    etag: format!("\"{hex}\""),
                }
            })
            .collect();
        Self { files }
    }

    fn find(&self, name: &str) -> Option<&Asset> {
        self.files.iter().find(|a| a.name == name)
    }

    /// `/assets/{name}?v={version}` for a page to link.
    pub fn url(&self, name: &str) -> String {
        match self.find(name) {
            Some(a) => format!("/assets/{}?v={}", a.name, a.etag.trim_matches('"')),
            None => format!("/assets/{name}"),
        }
    }

    /// The file, or `304` when the browser's copy is current; `None` for an
    /// unknown name.
    pub fn respond(&self, name: &str, request: &HeaderMap) -> Option<Response> {
        let asset = self.find(name)?;
        let fresh = request
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|tag| tag.trim() == asset.etag));
        let mut response = if fresh {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut r = asset.body.into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            );
            r
        };
        let h = response.headers_mut();
        if let Ok(etag) = HeaderValue::from_str(&asset.etag) {
            h.insert(header::ETAG, etag);
        }
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=0, must-revalidate"),
        );
        super::secure(h);
        Some(response)
    }
}
