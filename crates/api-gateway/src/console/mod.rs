//! The web console, served by the gateway itself at `/`.
//!
//! Pages are server-rendered shells: minijinja templates compiled into the
//! binary with `include_str!`, labelled from the message catalog of the
//! reader's language (a `wf_lang` cookie, else `Accept-Language`). The data
//! on them comes from hand-written JavaScript that calls the same
//! `/api/v1/...` REST API through the gateway with the signed-in user's
//! token, so the console can do nothing the API would not let that user do.
//! CSS, JavaScript and icons are embedded too and served with an ETag.
//! Every console response carries a strict Content-Security-Policy: no
//! inline scripts or styles, nothing from other origins.

mod assets;
mod i18n;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use minijinja::{Environment, UndefinedBehavior, Value, context};
use serde::Deserialize;

pub use assets::Assets;
pub use i18n::{Catalogs, Lang};

use crate::state::AppState;

/// The policy every console page is served with.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The cookie that remembers the chosen language.
pub const LANG_COOKIE: &str = "wf_lang";

/// A console page: its template, its title and the navigation entry it
/// belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Login,
    Dashboard,
    Devices,
    Device,
    ShadowJobs,
    ShadowJob,
    Firmware,
    Rollouts,
    Rollout,
    Users,
    Roles,
    Audit,
    Account,
    NotFound,
}

impl Page {
    pub const ALL: [Page; 14] = [
        Page::Login,
        Page::Dashboard,
        Page::Devices,
        Page::Device,
        Page::ShadowJobs,
        Page::ShadowJob,
        Page::Firmware,
        Page::Rollouts,
        Page::Rollout,
        Page::Users,
        Page::Roles,
        Page::Audit,
        Page::Account,
        Page::NotFound,
    ];

    fn template(self) -> &'static str {
        match self {
            Self::Login => "login.html",
            Self::Dashboard => "dashboard.html",
            Self::Devices => "devices.html",
            Self::Device => "device.html",
            Self::ShadowJobs => "shadow_jobs.html",
            Self::ShadowJob => "shadow_job.html",
            Self::Firmware => "firmware.html",
            Self::Rollouts => "rollouts.html",
            Self::Rollout => "rollout.html",
            Self::Users => "users.html",
            Self::Roles => "roles.html",
            Self::Audit => "audit.html",
            Self::Account => "account.html",
            Self::NotFound => "not_found.html",
        }
    }

    /// The `data-page` name the scripts dispatch on.
    fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Dashboard => "dashboard",
            Self::Devices => "devices",
            Self::Device => "device",
            Self::ShadowJobs => "shadow_jobs",
            Self::ShadowJob => "shadow_job",
            Self::Firmware => "firmware",
            Self::Rollouts => "rollouts",
            Self::Rollout => "rollout",
            Self::Users => "users",
            Self::Roles => "roles",
            Self::Audit => "audit",
            Self::Account => "account",
            Self::NotFound => "not_found",
        }
    }

    /// The catalog key of the page title.
    fn title(self) -> &'static str {
        match self {
            Self::Login => "login.title",
            Self::Dashboard => "nav.dashboard",
            Self::Devices => "nav.devices",
            Self::Device => "device.title",
            Self::ShadowJobs => "nav.shadow_jobs",
            Self::ShadowJob => "shadow_job.title",
            Self::Firmware => "nav.firmware",
            Self::Rollouts => "nav.rollouts",
            Self::Rollout => "rollout.title",
            Self::Users => "nav.users",
            Self::Roles => "nav.roles",
            Self::Audit => "nav.audit",
            Self::Account => "account.title",
            Self::NotFound => "notfound.title",
        }
    }

    /// The navigation entry shown as current.
    fn section(self) -> &'static str {
        match self {
            Self::Dashboard => "dashboard",
            Self::Devices | Self::Device => "devices",
            Self::ShadowJobs | Self::ShadowJob => "shadow_jobs",
            Self::Firmware => "firmware",
            Self::Rollouts | Self::Rollout => "rollouts",
            Self::Users => "users",
            Self::Roles => "roles",
            Self::Audit => "audit",
            Self::Login | Self::Account | Self::NotFound => "",
        }
    }
}

/// Templates, catalogs and assets, loaded once when the gateway starts.
pub struct Console {
    env: Environment<'static>,
    catalogs: Catalogs,
    assets: Assets,
    settings: crate::ConsoleConfig,
}

impl Console {
    pub fn new(settings: crate::ConsoleConfig) -> anyhow::Result<Self> {
        let mut env = Environment::new();
        // A label missing from a catalog is an error, not an empty string.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .map_err(|e| anyhow::anyhow!("console template {name}: {e}"))?;
        }
        Ok(Self {
            env,
            catalogs: Catalogs::load()?,
            assets: Assets::load(),
            settings,
        })
    }

    pub fn assets(&self) -> &Assets {
        &self.assets
    }

    /// Renders `page` in `lang`; `subject` is the device, shadow job or
    /// rollout id of a detail page.
    pub fn render(&self, page: Page, lang: Lang, subject: Option<&str>) -> anyhow::Result<String> {
        let catalog = self.catalogs.get(lang);
        let title = catalog
            .get(page.title())
            .cloned()
            .unwrap_or_else(|| page.title().to_string());
        let template = self.env.get_template(page.template())?;
        let html = template.render(context! {
            lang => lang.code(),
            other_lang => lang.other().code(),
            other_lang_label => catalog.get("lang.switch_to").cloned().unwrap_or_default(),
            t => Value::from(minijinja::value::Serde(catalog)),
            i18n_json => Value::from_safe_string(self.catalogs.json(lang).to_string()),
            page => page.name(),
            section => page.section(),
            title => title,
            subject => subject.unwrap_or_default(),
            css => Value::from_safe_string(self.assets.url("app.css")),
            js => Value::from_safe_string(self.assets.url("app.js")),
            icon => Value::from_safe_string(self.assets.url("favicon.svg")),
            version => env!("CARGO_PKG_VERSION"),
            mqtt_host => self.settings.mqtt_host.as_str(),
            mqtt_port => self.settings.mqtt_port,
        })?;
        Ok(html)
    }

    /// The page as an HTTP response, with the console's security headers.
    pub fn respond(
        &self,
        page: Page,
        headers: &HeaderMap,
        subject: Option<&str>,
        status: StatusCode,
    ) -> Response {
        let lang = Lang::of_request(headers);
        match self.render(page, lang, subject) {
            Ok(html) => {
                let mut response = (status, html).into_response();
                let h = response.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/html; charset=utf-8"),
                );
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                h.insert(
                    header::VARY,
                    HeaderValue::from_static("cookie, accept-language"),
                );
                secure(h);
                response
            }
            Err(e) => {
                tracing::error!(error = %e, page = page.name(), "rendering a console page failed");
                let mut response =
                    (StatusCode::INTERNAL_SERVER_ERROR, "console error").into_response();
                secure(response.headers_mut());
                response
            }
        }
    }

    pub fn not_found(&self, headers: &HeaderMap) -> Response {
        self.respond(Page::NotFound, headers, None, StatusCode::NOT_FOUND)
    }
}

/// The headers every console response carries.
pub fn secure(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
}

const TEMPLATES: [(&str, &str); 15] = [
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("dashboard.html", include_str!("templates/dashboard.html")),
    ("devices.html", include_str!("templates/devices.html")),
    ("device.html", include_str!("templates/device.html")),
    (
        "shadow_jobs.html",
        include_str!("templates/shadow_jobs.html"),
    ),
    ("shadow_job.html", include_str!("templates/shadow_job.html")),
    ("firmware.html", include_str!("templates/firmware.html")),
    ("rollouts.html", include_str!("templates/rollouts.html")),
    ("rollout.html", include_str!("templates/rollout.html")),
    ("users.html", include_str!("templates/users.html")),
    ("roles.html", include_str!("templates/roles.html")),
    ("audit.html", include_str!("templates/audit.html")),
    ("account.html", include_str!("templates/account.html")),
    ("not_found.html", include_str!("templates/not_found.html")),
];

/// The console's routes. Paths under `/api`, `/docs`, `/.well-known` and
/// the ops endpoints are never the console's (see `CONSOLE_ROOTS`).
pub fn routes() -> Router<AppState> {
    let mut router = Router::new();
    for page in Page::ALL {
        router = match page.route() {
            Route::Plain(path) => router.route(
                path,
                get(move |s: State<AppState>, h: HeaderMap| serve(s, h, page)),
            ),
            Route::WithId(path) => {
                router.route(path, get(move |s, h, id| serve_detail(s, h, id, page)))
            }
            Route::None => router,
        };
    }
    router
        .route("/assets/{name}", get(asset))
        .route("/lang/{code}", get(switch_language))
}

/// Where a page is served.
enum Route {
    Plain(&'static str),
    /// A detail page: the id is the last segment.
    WithId(&'static str),
    /// Only shown in place of another (the 404 page).
    None,
}

impl Page {
    fn route(self) -> Route {
        match self {
            Self::Dashboard => Route::Plain("/"),
            Self::Login => Route::Plain("/login"),
            Self::Account => Route::Plain("/account"),
            Self::Devices => Route::Plain("/devices"),
            Self::Device => Route::WithId("/devices/{id}"),
            Self::ShadowJobs => Route::Plain("/shadow-jobs"),
            Self::ShadowJob => Route::WithId("/shadow-jobs/{id}"),
            Self::Firmware => Route::Plain("/firmware"),
            Self::Rollouts => Route::Plain("/rollouts"),
            Self::Rollout => Route::WithId("/rollouts/{id}"),
            Self::Users => Route::Plain("/admin/users"),
            Self::Roles => Route::Plain("/admin/roles"),
            Self::Audit => Route::Plain("/admin/audit"),
            Self::NotFound => Route::None,
        }
    }
}

async fn serve(State(state): State<AppState>, headers: HeaderMap, page: Page) -> Response {
    state.console.respond(page, &headers, None, StatusCode::OK)
}

async fn serve_detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    page: Page,
) -> Response {
    state
        .console
        .respond(page, &headers, Some(&id), StatusCode::OK)
}

async fn asset(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    match state.console.assets().respond(&name, &headers) {
        Some(response) => response,
        None => state.console.not_found(&headers),
    }
}

#[derive(Deserialize)]
struct Next {
    next: Option<String>,
}

/// Remembers the language in a cookie and goes back to the page the
/// reader was on.
async fn switch_language(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(code): Path<String>,
    Query(next): Query<Next>,
) -> Response {
    let Some(lang) = Lang::parse(&code) else {
        return state.console.not_found(&headers);
    };
    let target = safe_next(next.next.as_deref());
    let mut response = StatusCode::SEE_OTHER.into_response();
    let h = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&target) {
        h.insert(header::LOCATION, location);
    }
    let cookie = format!(
        "{LANG_COOKIE}={}; Path=/; Max-Age=31536000; SameSite=Lax",
        lang.code()
    );
    if let Ok(cookie) = HeaderValue::from_str(&cookie) {
        h.insert(header::SET_COOKIE, cookie);
    }
    secure(h);
    response
}

/// A same-site path to go back to: anything else (another host, a scheme,
/// `//host`, backslashes) goes to the dashboard.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.contains('\\')
                && !p.chars().any(char::is_control) =>
        {
            p.to_string()
        }
        _ => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_in_every_language() {
        let console = Console::new(crate::ConsoleConfig::default()).unwrap();
        for lang in [Lang::En, Lang::ZhCn] {
            for page in Page::ALL {
                let html = console.render(page, lang, Some("dev-<1>")).unwrap();
                assert!(
                    html.contains(&format!("lang=\"{}\"", lang.code())),
                    "{page:?}"
                );
                assert!(html.contains(&format!("data-page=\"{}\"", page.name())));
                assert!(!html.contains("dev-<1>"), "subjects are escaped");
                assert!(!html.contains("<script>"), "no inline scripts");
                assert!(!html.contains(" style=\""), "no inline styles");
            }
        }
    }

    #[test]
    fn only_same_site_paths_are_followed() {
        assert_eq!(safe_next(Some("/devices?tag=a")), "/devices?tag=a");
        assert_eq!(safe_next(None), "/");
        for bad in [
            "//evil.example",
            "https://evil.example",
            "/\\evil",
            "devices",
            "/a\nb",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
    }
}
