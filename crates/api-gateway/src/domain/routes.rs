//! Which service answers a path, which rate-limit group it belongs to, and
//! whether it needs a token. Pure functions of method and path.

use http::Method;
use serde::{Deserialize, Serialize};

/// A service behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    Auth,
    Device,
    Firmware,
}

impl Upstream {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Device => "device",
            Self::Firmware => "firmware",
        }
    }
}

/// Routes that share rate limits and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteGroup {
    /// `/api/v1/auth/*`: login, refresh, logout, the caller's own account.
    Auth,
    /// `/api/v1/devices/*` except the live streams, `/api/v1/commands` and
    /// `/api/v1/shadow-jobs/*`.
    Devices,
    /// `/api/v1/firmware|rollouts|upgrade-tasks/*`.
    Firmware,
    /// Opening live streams.
    Streams,
    /// Everything else: users, roles, permissions, audit logs, JWKS, unknown paths.
    Default,
}

impl RouteGroup {
    pub fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Devices => "devices",
            Self::Firmware => "firmware",
            Self::Streams => "streams",
            Self::Default => "default",
        }
    }
}

/// Who answers the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Upstream(Upstream),
    /// `GET /api/v1/devices/{id}/stream`.
    DeviceStream,
    /// `GET /api/v1/devices/stream`.
    FleetStream,
    /// The gateway's own `/healthz`, `/readyz` and `/metrics`.
    Ops,
    /// The web console's pages and assets.
    Console,
    /// Nothing: 404.
    Unknown,
}

/// What a request must carry to get through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Public,
    /// `Authorization: Bearer <access token>`.
    Bearer,
    /// A bearer token, or `?access_token=` (browsers' EventSource cannot
    /// set headers).
    BearerOrQuery,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub target: Target,
    pub group: RouteGroup,
    pub access: Access,
}

impl Route {
    const fn new(target: Target, group: RouteGroup, access: Access) -> Self {
        Self {
            target,
            group,
            access,
        }
    }

    /// Whether requests on this route count against rate limits. Console
    /// pages and assets are served from memory and carry no data.
    pub fn is_limited(&self) -> bool {
        !matches!(self.target, Target::Ops | Target::Console)
    }

    /// The largest request body accepted, given the general and upload limits.
    pub fn body_limit(&self, general: u64, upload: u64) -> u64 {
        if self.group == RouteGroup::Firmware {
            upload
        } else {
            general
        }
    }
}

const API_PREFIX: &str = "/api/v1/";

/// First path segments of the web console (and `/` itself). Everything the
/// console serves lives under these, so it never shadows `/api`, `/docs`,
/// `/.well-known` or the ops endpoints.
pub const CONSOLE_ROOTS: [&str; 9] = [
    "login",
    "account",
    "devices",
    "shadow-jobs",
    "firmware",
    "rollouts",
    "admin",
    "assets",
    "lang",
];

/// Whether `path` belongs to the web console.
pub fn is_console_path(path: &str) -> bool {
    if path == "/" {
        return true;
    }
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let first = rest.split('/').next().unwrap_or_default();
    CONSOLE_ROOTS.contains(&first)
}

/// Classifies a request. Matching is on the raw path, segment by segment:
/// anything not exactly a public route needs a token (an encoded or
/// decorated spelling of a public path is not public).
pub fn classify(method: &Method, path: &str) -> Route {
    use Access::{Bearer, BearerOrQuery, Public};
    use RouteGroup as G;
    match path {
        "/healthz" | "/readyz" | "/metrics" | "/api/openapi.json" | "/docs" => {
            return Route::new(Target::Ops, G::Default, Public);
        }
        p if p.starts_with("/docs/") => {
            return Route::new(Target::Ops, G::Default, Public);
        }
        "/.well-known/jwks.json" => {
            return Route::new(Target::Upstream(Upstream::Auth), G::Default, Public);
        }
        _ => {}
    }
    if is_console_path(path) {
        return Route::new(Target::Console, G::Default, Public);
    }
    let Some(rest) = path.strip_prefix(API_PREFIX) else {
        return Route::new(Target::Unknown, G::Default, Public);
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let is_get = method == Method::GET;
    let auth = Target::Upstream(Upstream::Auth);
    let firmware = Target::Upstream(Upstream::Firmware);
    match segments.as_slice() {
        ["auth", "login" | "refresh" | "logout"] if method == Method::POST => {
            Route::new(auth, G::Auth, Public)
        }
        ["auth", ..] => Route::new(auth, G::Auth, Bearer),
        [
            "users" | "roles" | "permissions" | "audit" | "audit-logs",
            ..,
        ] => Route::new(auth, G::Default, Bearer),
        ["devices", "stream"] if is_get => {
            Route::new(Target::FleetStream, G::Streams, BearerOrQuery)
        }
        ["devices", id, "stream"] if is_get && !id.is_empty() => {
            Route::new(Target::DeviceStream, G::Streams, BearerOrQuery)
        }
        ["devices" | "commands" | "shadow-jobs", ..] => {
            Route::new(Target::Upstream(Upstream::Device), G::Devices, Bearer)
        }
        // Devices download images with their own credentials.
        ["firmware", id, "download"] if is_get && !id.is_empty() => {
            Route::new(firmware, G::Firmware, Public)
        }
        ["firmware" | "rollouts" | "upgrade-tasks", ..] => {
            Route::new(firmware, G::Firmware, Bearer)
        }
        _ => Route::new(Target::Unknown, G::Default, Public),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(method: Method, path: &str) -> (Target, RouteGroup, Access) {
        let r = classify(&method, path);
        (r.target, r.group, r.access)
    }

    #[test]
    fn services_get_their_paths() {
        let auth = Target::Upstream(Upstream::Auth);
        let device = Target::Upstream(Upstream::Device);
        let firmware = Target::Upstream(Upstream::Firmware);
        for path in [
            "/api/v1/auth/me",
            "/api/v1/users",
            "/api/v1/users/42/roles",
            "/api/v1/roles",
            "/api/v1/permissions",
            "/api/v1/audit-logs",
        ] {
            assert_eq!(classify(&Method::GET, path).target, auth, "{path}");
        }
        for path in [
            "/api/v1/devices",
            "/api/v1/devices/d1",
            "/api/v1/devices/d1/telemetry",
            "/api/v1/devices/activity",
            "/api/v1/devices/d1/shadow",
            "/api/v1/devices/d1/attributes",
            "/api/v1/commands",
            "/api/v1/shadow-jobs",
            "/api/v1/shadow-jobs/j1",
        ] {
            assert_eq!(
                route(Method::GET, path),
                (device, RouteGroup::Devices, Access::Bearer)
            );
        }
        for path in [
            "/api/v1/firmware",
            "/api/v1/rollouts/r1",
            "/api/v1/upgrade-tasks",
        ] {
            assert_eq!(
                route(Method::POST, path),
                (firmware, RouteGroup::Firmware, Access::Bearer)
            );
        }
    }

    #[test]
    fn only_the_listed_routes_are_public() {
        assert_eq!(route(Method::POST, "/api/v1/auth/login").2, Access::Public);
        assert_eq!(
            route(Method::POST, "/api/v1/auth/refresh").2,
            Access::Public
        );
        assert_eq!(route(Method::POST, "/api/v1/auth/logout").2, Access::Public);
        assert_eq!(route(Method::GET, "/api/v1/auth/login").2, Access::Bearer);
        assert_eq!(route(Method::POST, "/api/v1/auth/login/").2, Access::Bearer);
        assert_eq!(
            route(Method::POST, "/api/v1/auth/%6Cogin").2,
            Access::Bearer
        );
        assert_eq!(
            route(Method::GET, "/api/v1/firmware/f1/download").2,
            Access::Public
        );
        assert_eq!(
            route(Method::DELETE, "/api/v1/firmware/f1/download").2,
            Access::Bearer
        );
        assert_eq!(
            route(Method::GET, "/api/v1/firmware/f1/download/x").2,
            Access::Bearer
        );
        assert_eq!(
            route(Method::GET, "/.well-known/jwks.json").2,
            Access::Public
        );
        assert_eq!(route(Method::GET, "/healthz").0, Target::Ops);
    }

    #[test]
    fn streams_accept_query_tokens() {
        assert_eq!(
            route(Method::GET, "/api/v1/devices/stream"),
            (
                Target::FleetStream,
                RouteGroup::Streams,
                Access::BearerOrQuery
            )
        );
        assert_eq!(
            route(Method::GET, "/api/v1/devices/d1/stream"),
            (
                Target::DeviceStream,
                RouteGroup::Streams,
                Access::BearerOrQuery
            )
        );
        // Other methods go to device-service like any device path.
        assert_eq!(
            route(Method::POST, "/api/v1/devices/d1/stream").0,
            Target::Upstream(Upstream::Device)
        );
    }

    #[test]
    fn everything_else_is_unknown() {
        for path in [
            "/api/v1/",
            "/api/v1/nothing",
            "/api/v2/devices",
            "//api/v1/devices",
            "/api/v1devices",
            "/api/v1/devicesx",
        ] {
            assert_eq!(
                classify(&Method::GET, path).target,
                Target::Unknown,
                "{path}"
            );
        }
    }

    #[test]
    fn the_console_has_its_own_roots_and_never_the_apis() {
        for path in [
            "/",
            "/login",
            "/devices",
            "/devices/d1",
            "/admin/users",
            "/assets/app.js",
            "/lang/zh-CN",
            "/rollouts/r1",
            "/shadow-jobs",
            "/shadow-jobs/j1",
        ] {
            let r = classify(&Method::GET, path);
            assert_eq!(r.target, Target::Console, "{path}");
            assert_eq!(r.access, Access::Public);
            assert!(!r.is_limited());
        }
        for path in [
            "/api/v1/devices",
            "/docs",
            "/healthz",
            "/metrics",
            "/readyz",
            "/.well-known/jwks.json",
            "/devicesx",
            "/shadow-jobsx",
            "/api/v1/shadow-jobs",
            "/api/v1/shadow-jobs/j1/cancel",
            "/elsewhere",
            "//devices",
        ] {
            assert_ne!(
                classify(&Method::GET, path).target,
                Target::Console,
                "{path}"
            );
        }
    }

    #[test]
    fn firmware_routes_take_the_upload_limit() {
        let firmware = classify(&Method::POST, "/api/v1/firmware");
        let devices = classify(&Method::POST, "/api/v1/devices");
        assert_eq!(firmware.body_limit(10, 1000), 1000);
        assert_eq!(devices.body_limit(10, 1000), 10);
    }
}
