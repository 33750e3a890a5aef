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

/// The answers an operation behind the `bearer` scheme can give whatever
/// it does, added to each such operation that does not document them
/// itself: 401 always; 403 and 503 where every operation checks a
/// permission with auth-service (`forbidden`, `unavailable`). And 500 on
/// every operation. Handlers document only what is particular to them.
pub struct StandardResponses {
    pub forbidden: bool,
    pub unavailable: bool,
}

/// [`StandardResponses`] of a service that checks every operation's
/// permission with auth-service (device-service, firmware-service).
pub const PERMISSION_CHECKED: StandardResponses = StandardResponses {
    forbidden: true,
    unavailable: true,
};

/// [`StandardResponses`] of auth-service, which documents its refusals per
/// operation.
pub const AUTHENTICATED: StandardResponses = StandardResponses {
    forbidden: false,
    unavailable: false,
};

impl StandardResponses {
    fn answers(&self, secured: bool) -> Vec<(&'static str, &'static str)> {
        let mut answers = vec![(
            "500",
            "Internal error; the cause is logged with the request id",
        )];
        if secured {
            answers.push((
                "401",
                "No access token, or one that is invalid, expired or revoked",
            ));
            if self.forbidden {
                answers.push((
                    "403",
                    "The caller lacks the permission this operation needs",
                ));
            }
            if self.unavailable {
                answers.push((
                    "503",
                    "auth-service (keys or permission check) did not answer; retry shortly",
                ));
            }
        }
        answers
    }
}

impl utoipa::Modify for StandardResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let secured = operation.security.iter().flatten().any(|requirement| {
                    serde_json::to_value(requirement).is_ok_and(|v| v.get("bearer").is_some())
                });
                for (status, description) in self.answers(secured) {
                    operation
                        .responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    ContentBuilder::new()
                                        .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                                        .build(),
                                )
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn secured_operations_get_the_standard_answers_they_do_not_document() {
        #[derive(utoipa::OpenApi)]
        #[openapi(
            paths(secured, open),
            modifiers(&ONLY_FORBIDDEN)
        )]
        struct Doc;
        const ONLY_FORBIDDEN: StandardResponses = StandardResponses {
            forbidden: true,
            unavailable: false,
        };
        let doc = serde_json::to_value(<Doc as utoipa::OpenApi>::openapi()).unwrap();
        let secured = &doc["paths"]["/secured"]["get"]["responses"];
        assert_eq!(secured["403"]["description"], "Only its owner");
        assert!(
            secured["401"]["content"]["application/json"]["schema"]["$ref"]
                .as_str()
                .unwrap()
                .ends_with("/ErrorEnvelope")
        );
        assert!(secured["500"].is_object());
        assert!(secured.get("503").is_none());
        let open = &doc["paths"]["/open"]["get"]["responses"];
        assert!(open.get("401").is_none());
        assert!(open["500"].is_object());
    }

    #[utoipa::path(get, path = "/secured", security(("bearer" = [])),
        responses((status = 200), (status = 403, description = "Only its owner")))]
    #[allow(dead_code)]
    fn secured() {}

    #[utoipa::path(get, path = "/open", responses((status = 200)))]
    #[allow(dead_code)]
    fn open() {}

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
