//! The OpenAPI document at `/api/openapi.json` describes every REST route
//! the router registers, with its methods: a route added without its
//! documentation fails here.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::TestApp;

/// The router's source, read for its `.route(path, methods)` calls.
const ROUTER_SOURCE: &str = include_str!("../../src/http/mod.rs");

/// Routes that are not part of the documented API.
const UNDOCUMENTED: &[&str] = &["/api/openapi.json"];

const METHODS: &[&str] = &["get", "post", "put", "patch", "delete", "head", "options"];

/// `(path, methods)` of every `.route("…", …)` call in `source`.
fn registered_routes(source: &str) -> Vec<(String, Vec<String>)> {
    let mut routes = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find(".route(") {
        rest = &rest[at + ".route(".len()..];
        // The arguments, up to the call's closing parenthesis.
        let mut depth = 1usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let args = &rest[..end];
        let path = args
            .split('"')
            .nth(1)
            .unwrap_or_else(|| panic!("a route without a literal path: {args}"))
            .to_string();
        let after_path = args.splitn(3, '"').nth(2).unwrap_or_default();
        let mut methods: Vec<String> = METHODS
            .iter()
            .filter(|m| {
                let call = format!("{m}(");
                after_path.match_indices(&call).any(|(i, _)| {
                    // A method router call, not the tail of another name.
                    let before = after_path[..i].chars().next_back();
                    !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                })
            })
            .map(|m| (*m).to_string())
            .collect();
        methods.sort();
        assert!(!methods.is_empty(), "no methods found for {path}: {args}");
        routes.push((path, methods));
        rest = &rest[end..];
    }
    routes
}

#[test]
fn the_router_source_is_understood() {
    let routes = registered_routes(ROUTER_SOURCE);
    let find = |p: &str| {
        routes
            .iter()
            .find(|(path, _)| path == p)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("{p} not found in {routes:?}"))
    };
    assert_eq!(find("/api/v1/firmware"), ["get", "post"]);
    assert_eq!(find("/api/v1/firmware/{id}"), ["delete", "get"]);
    assert_eq!(find("/api/v1/rollouts/{id}/pause"), ["post"]);
    assert!(routes.len() >= 14, "{routes:?}");
}

#[tokio::test]
async fn every_route_is_documented_with_its_methods() {
    let app = TestApp::builder().workers(0).spawn().await;
    // Public, like the service's other operational routes.
    let resp = app
        .client
        .get(format!("{}/api/openapi.json", app.base))
        .send()
        .await
        .expect("GET /api/openapi.json");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.expect("the body");
    let doc: Value = serde_json::from_str(&text).expect("the document is JSON");
    let version = doc["openapi"].as_str().expect("an openapi version");
    assert!(version.starts_with("3."), "openapi {version}");
    let paths = doc["paths"].as_object().expect("paths");

    let mut missing = Vec::new();
    for (path, methods) in registered_routes(ROUTER_SOURCE) {
        if UNDOCUMENTED.contains(&path.as_str()) {
            continue;
        }
        for method in methods {
            if paths.get(&path).and_then(|p| p.get(&method)).is_none() {
                missing.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(missing.is_empty(), "undocumented routes: {missing:?}");

    // Every operation answers with documented statuses, and every schema
    // it refers to is in the document.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("a path item") {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
        }
    }
    for reference in text.split("\"$ref\":\"").skip(1) {
        let target = reference.split('"').next().unwrap_or_default();
        let name = target
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected reference {target}"));
        assert!(
            schemas.contains_key(name),
            "{target} is not in the document"
        );
    }
    // Response links name operations of this document, in OpenAPI's
    // spelling.
    let operation_ids: Vec<&str> = paths
        .values()
        .flat_map(|item| item.as_object().into_iter().flat_map(|i| i.values()))
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("a path item") {
            let responses = op["responses"]
                .as_object()
                .into_iter()
                .flat_map(|r| r.values());
            for link in responses
                .filter_map(|r| r["links"].as_object())
                .flat_map(|l| l.values())
            {
                let target = link["operationId"].as_str().unwrap_or_default();
                assert!(
                    operation_ids.contains(&target),
                    "{method} {path}: a link to an unknown operation: {link}"
                );
            }
        }
    }
    let schemes = &doc["components"]["securitySchemes"];
    assert!(schemes["bearer"].is_object());
    assert!(schemes["device_basic"].is_object());
    // The upload is a multipart form whose file comes last.
    let form = &paths["/api/v1/firmware"]["post"]["requestBody"]["content"]["multipart/form-data"];
    assert!(form.is_object(), "{form}");
    if std::env::var_os("WF_IOT_PRINT_OPENAPI").is_some() {
        println!("{}", serde_json::to_string_pretty(&doc).expect("JSON"));
    }
}
