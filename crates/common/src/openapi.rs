//! OpenAPI plumbing: the browsable documentation page (Swagger UI, vendored
//! from the npm registry's swagger-ui-dist with its licence, see
//! tools/vendor-swagger-ui.sh) and merging the services' documents into one.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use serde_json::{Map, Value, json};

const BUNDLE: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui-bundle.js");
const CSS: &[u8] = include_bytes!("../assets/swagger-ui/swagger-ui.css");
const LICENSE: &str = include_str!("../assets/swagger-ui/LICENSE");

/// `/docs` (the page), its assets, and the vendored licence; the page
/// shows the document at `spec_url`.
pub fn docs_routes(spec_url: &'static str) -> Router {
    let page = format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>wf-iot API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({{ url: "{spec_url}", dom_id: "#swagger-ui", deepLinking: true, persistAuthorization: true }});
</script>
</body>
</html>"##
    );
    Router::new()
        .route("/docs", get(move || std::future::ready(Html(page.clone()))))
        .route(
            "/docs/swagger-ui-bundle.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript"),
                        (header::CACHE_CONTROL, "public, max-age=86400"),
                    ],
                    BUNDLE,
                )
                    .into_response()
            }),
        )
        .route(
            "/docs/swagger-ui.css",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/css"),
                        (header::CACHE_CONTROL, "public, max-age=86400"),
                    ],
                    CSS,
                )
                    .into_response()
            }),
        )
        .route(
            "/docs/LICENSE",
            get(|| async { ([(header::CONTENT_TYPE, "text/plain")], LICENSE).into_response() }),
        )
}

/// Merges OpenAPI documents: paths, schemas and security schemes are
/// united; the first document's `info` is replaced by `title`/`version`.
pub fn merge(title: &str, version: &str, documents: &[Value]) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    let mut security_schemes = Map::new();
    let mut tags: Vec<Value> = Vec::new();
    for doc in documents {
        if let Some(p) = doc.get("paths").and_then(Value::as_object) {
            for (k, v) in p {
                paths.insert(k.clone(), v.clone());
            }
        }
        if let Some(s) = doc
            .pointer("/components/schemas")
            .and_then(Value::as_object)
        {
            for (k, v) in s {
                schemas.insert(k.clone(), v.clone());
            }
        }
        if let Some(s) = doc
            .pointer("/components/securitySchemes")
            .and_then(Value::as_object)
        {
            for (k, v) in s {
                security_schemes.insert(k.clone(), v.clone());
            }
        }
        if let Some(t) = doc.get("tags").and_then(Value::as_array) {
            for tag in t {
                if !tags.iter().any(|x| x.get("name") == tag.get("name")) {
                    tags.push(tag.clone());
                }
            }
        }
    }
    unique_operation_ids(&mut paths);
    json!({
        "openapi": "3.1.0",
        "info": { "title": title, "version": version },
        "paths": paths,
        "components": { "schemas": schemas, "securitySchemes": security_schemes },
        "tags": tags,
    })
}

/// The HTTP methods an OpenAPI path item may hold operations under.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Operation ids must be unique across the merged document, but each
/// service names its own (`list`, `get`, ...). An id used more than once is
/// replaced, everywhere it is used, by one built from the method and the
/// path (`get_api_v1_devices_id`); ids used once are kept, so the links
/// that name them still resolve.
fn unique_operation_ids(paths: &mut Map<String, Value>) {
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for item in paths.values() {
        for method in METHODS {
            if let Some(id) = item
                .pointer(&format!("/{method}/operationId"))
                .and_then(Value::as_str)
            {
                *seen.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    for (path, item) in paths.iter_mut() {
        for method in METHODS {
            let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) else {
                continue;
            };
            let duplicated = op
                .get("operationId")
                .and_then(Value::as_str)
                .is_some_and(|id| seen.get(id).copied().unwrap_or(0) > 1);
            if duplicated {
                let slug: String = path
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .filter(|part| !part.is_empty())
                    .collect::<Vec<_>>()
                    .join("_");
                op.insert("operationId".into(), json!(format!("{method}_{slug}")));
            }
        }
    }
}

/// The bearer-token security scheme every service declares.
pub fn bearer_scheme() -> utoipa::openapi::security::SecurityScheme {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    SecurityScheme::Http(
        HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .build(),
    )
}

/// Adds the `bearer` security scheme to a service's document.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", bearer_scheme());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn documents_merge_their_paths_and_schemas() {
        let a = json!({ "paths": { "/a": {} }, "components": { "schemas": { "A": {} } }, "tags": [{ "name": "auth" }] });
        let b = json!({ "paths": { "/b": {} }, "components": { "schemas": { "B": {} }, "securitySchemes": { "bearer": {} } }, "tags": [{ "name": "auth" }, { "name": "devices" }] });
        let m = merge("wf-iot", "1", &[a, b]);
        assert_eq!(m["paths"].as_object().unwrap().len(), 2);
        assert_eq!(m["components"]["schemas"].as_object().unwrap().len(), 2);
        assert!(m["components"]["securitySchemes"]["bearer"].is_object());
        assert_eq!(m["tags"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn operation_ids_are_unique_after_merging() {
        let auth = json!({ "paths": {
            "/api/v1/users": { "get": { "operationId": "list" }, "post": { "operationId": "create_user" } },
            "/api/v1/users/{id}": { "get": { "operationId": "get" } },
        }});
        let devices = json!({ "paths": {
            "/api/v1/devices": { "get": { "operationId": "list" } },
            "/api/v1/devices/{id}": { "get": { "operationId": "get" }, "parameters": [] },
        }});
        let m = merge("wf-iot", "1", &[auth, devices]);
        let id = |path: &str, method: &str| m["paths"][path][method]["operationId"].clone();
        assert_eq!(id("/api/v1/users", "get"), "get_api_v1_users");
        assert_eq!(id("/api/v1/devices", "get"), "get_api_v1_devices");
        assert_eq!(id("/api/v1/users/{id}", "get"), "get_api_v1_users_id");
        assert_eq!(id("/api/v1/devices/{id}", "get"), "get_api_v1_devices_id");
        // Used once: kept, so links naming it still resolve.
        assert_eq!(id("/api/v1/users", "post"), "create_user");
        assert!(m["paths"]["/api/v1/devices/{id}"]["parameters"].is_array());
    }
}
