//! Logs (text or JSON lines), Prometheus metrics and the request id that
//! follows a request through HTTP, gRPC and every log line it causes.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tracing::Instrument;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The header (and gRPC metadata key) carrying the request id.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served by this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Runs `fut` with `id` as the current request id.
pub async fn with_request_id<F: Future>(id: String, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

/// Accepts a caller's request id when it is short and printable; otherwise
/// (or when absent) makes a new one.
pub fn request_id_from(value: Option<&str>) -> String {
    match value {
        Some(v) if !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()) => {
            v.to_string()
        }
        _ => uuid::Uuid::now_v7().to_string(),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// A tracing filter such as `info` or `info,auth_service=debug`;
    /// `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
    /// The `service` field of every JSON line: the process's role when
    /// services run apart (`auth-service`, `device-service`, ...), so log
    /// stores can tell the processes apart.
    pub service: String,
    /// When set, `/metrics` on every HTTP port answers only requests with
    /// `Authorization: Bearer <metrics_token>` (Prometheus:
    /// `authorization: { credentials: ... }`); others get 401.
    #[serde(serialize_with = "crate::config::redact_opt")]
    pub metrics_token: Option<secrecy::SecretString>,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info,rmqtt=warn,rmqtt_net=warn".into(),
            format: LogFormat::Text,
            service: "wf-iot".into(),
            metrics_token: None,
        }
    }
}

/// The token `/metrics` asks for, set once by [`init_logging`].
static METRICS_TOKEN: OnceLock<Option<String>> = OnceLock::new();

/// Whether a `/metrics` request with this `Authorization` header may read
/// the metrics, when `expected` is the configured token.
pub fn metrics_allowed(expected: Option<&str>, authorization: Option<&[u8]>) -> bool {
    let Some(expected) = expected else {
        return true;
    };
    let presented = authorization
        .and_then(|v| v.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    bool::from(subtle::ConstantTimeEq::ct_eq(
        presented,
        expected.as_bytes(),
    ))
}

/// [`metrics_allowed`] with the token of this process.
pub fn metrics_request_allowed(authorization: Option<&[u8]>) -> bool {
    metrics_allowed(
        METRICS_TOKEN.get().and_then(|t| t.as_deref()),
        authorization,
    )
}

/// Installs the global log subscriber, and the token `/metrics` asks for.
/// Safe to call more than once; the first call decides.
pub fn init_logging(config: &LogConfig) {
    use secrecy::ExposeSecret;
    let _ = METRICS_TOKEN.set(
        config
            .metrics_token
            .as_ref()
            .map(|t| t.expose_secret().trim().to_string())
            .filter(|t| !t.is_empty()),
    );
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(config.level.as_str()));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match config.format {
        LogFormat::Json => registry.with(json_layer(&config.service)).try_init(),
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_target(true))
            .try_init(),
    };
}

/// Logs as JSON lines on stdout, one object per event, ready for Loki or
/// Elasticsearch:
///
/// ```json
/// {"timestamp":"2026-11-26T10:00:00.123456Z","level":"WARN","service":"device-service",
///  "target":"wf_common::telemetry","message":"request failed","status":503,
///  "request_id":"019ab2c4-...","spans":[{"method":"GET","name":"http","request_id":"019ab2c4-...",...}]}
/// ```
///
/// `request_id` is the id of the request (HTTP, gRPC or MQTT connection)
/// being served, taken from the innermost span carrying one; `spans` is the
/// chain of spans the event happened in, outermost first, with their
/// fields. Event fields come after `message`; one that would shadow a
/// top-level key is written as `fields.<name>`.
fn json_layer<S>(service: &str) -> impl tracing_subscriber::Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(JsonLines {
            service: service.to_string(),
        })
}

/// The event format of [`json_layer`].
struct JsonLines {
    service: String,
}

const RESERVED_KEYS: [&str; 7] = [
    "timestamp",
    "level",
    "service",
    "target",
    "message",
    "request_id",
    "spans",
];

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        use serde_json::{Map, Value};
        let meta = event.metadata();
        let mut fields = FieldVisitor::default();
        event.record(&mut fields);

        // The spans around the event, outermost first, with their fields
        // (recorded as JSON by `JsonFields`).
        let mut spans = Vec::new();
        let mut request_id: Option<Value> = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let mut object = Map::new();
                object.insert("name".into(), Value::from(span.name()));
                let extensions = span.extensions();
                if let Some(recorded) = extensions
                    .get::<tracing_subscriber::fmt::FormattedFields<N>>()
                    .and_then(|f| serde_json::from_str::<Map<String, Value>>(f).ok())
                {
                    if let Some(id) = recorded.get("request_id") {
                        request_id = Some(id.clone());
                    }
                    object.extend(recorded);
                }
                spans.push(Value::Object(object));
            }
        }
        let request_id = request_id.or_else(|| current_request_id().map(Value::from));

        let line: [(&str, Value); 5] = [
            (
                "timestamp",
                Value::from(
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                ),
            ),
            ("level", Value::from(meta.level().as_str())),
            ("service", Value::from(self.service.as_str())),
            ("target", Value::from(meta.target())),
            (
                "message",
                fields.message.take().map_or(Value::Null, Value::from),
            ),
        ];
        let mut text = String::from("{");
        let mut first = true;
        let mut push = |key: &str, value: &Value| {
            if !first {
                text.push(',');
            }
            first = false;
            text.push_str(&Value::from(key).to_string());
            text.push(':');
            text.push_str(&value.to_string());
        };
        for (key, value) in &line {
            push(key, value);
        }
        for (key, value) in &fields.values {
            if RESERVED_KEYS.contains(&key.as_str()) {
                push(&format!("fields.{key}"), value);
            } else {
                push(key, value);
            }
        }
        if let Some(id) = &request_id {
            push("request_id", id);
        }
        if !spans.is_empty() {
            push("spans", &Value::Array(spans));
        }
        text.push('}');
        writeln!(writer, "{text}")
    }
}

/// An event's fields as JSON values, in the order they were given.
#[derive(Default)]
struct FieldVisitor {
    message: Option<String>,
    values: Vec<(String, serde_json::Value)>,
}

impl FieldVisitor {
    fn put(&mut self, field: &tracing::field::Field, value: serde_json::Value) {
        if field.name() == "message" {
            self.message = Some(match value {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            });
        } else {
            self.values.push((field.name().to_string(), value));
        }
    }
}

impl tracing::field::Visit for FieldVisitor {
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.put(field, serde_json::Value::from(value));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.put(field, serde_json::Value::from(value));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.put(field, serde_json::Value::from(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.put(field, serde_json::Value::from(value));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.put(field, serde_json::Value::from(value));
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.put(field, serde_json::Value::from(value.to_string()));
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field, serde_json::Value::from(format!("{value:?}")));
    }
}

/// A log line allowed at most once per interval, for events that can come
/// by the thousand (every one is still counted in a metric).
pub struct LogEvery {
    interval_ms: i64,
    last: std::sync::atomic::AtomicI64,
}

impl LogEvery {
    pub const fn new(interval: std::time::Duration) -> Self {
        Self {
            interval_ms: interval.as_millis() as i64,
            last: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// Whether a line may be logged now; at most one caller per interval
    /// is told yes.
    pub fn ready(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = crate::now_millis();
        let last = self.last.load(Ordering::Relaxed);
        now.saturating_sub(last) >= self.interval_ms
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Suffix("_seconds".into()),
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (embedding applications);
        // then this handle renders an empty registry, which is harmless.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Middleware for every HTTP service: takes or makes the request id, opens a
/// span carrying it, returns it in the response, and records request metrics.
pub async fn request_context(service: &'static str, req: Request, next: Next) -> Response {
    let id = request_id_from(
        req.headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok()),
    );
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "http",
        service,
        request_id = %id,
        method = %method,
        path = %req.uri().path(),
    );
    let start = Instant::now();
    let mut response = REQUEST_ID
        .scope(id.clone(), next.run(req).instrument(span.clone()))
        .await;
    let elapsed = start.elapsed();
    let status = response.status();
    finish_response(&span, &mut response, &id, elapsed);
    let labels = [
        ("service", service.to_string()),
        ("method", method.to_string()),
        ("route", route),
        ("status", status.as_u16().to_string()),
    ];
    metrics::counter!("wf_http_requests_total", &labels).increment(1);
    metrics::histogram!("wf_http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    response
}

/// Reads the request id from gRPC metadata, or makes one.
pub fn grpc_request_id(metadata: &tonic::metadata::MetadataMap) -> String {
    request_id_from(
        metadata
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Logs how a request ended, in its span (a server error at warn, the rest
/// at debug), and answers its request id in the response's header.
pub fn finish_response(
    span: &tracing::Span,
    response: &mut Response,
    request_id: &str,
    elapsed: Duration,
) {
    let status = response.status();
    span.in_scope(|| {
        if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "request failed"
            );
        } else {
            tracing::debug!(
                status = status.as_u16(),
                elapsed_ms = elapsed.as_millis() as u64,
                "request served"
            );
        }
    });
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Log lines written to a buffer.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn json_lines(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        use tracing_subscriber::Layer as _;
        let out = Captured::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonLines {
                service: "device-service".into(),
            })
            .with_writer(out.clone())
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn json_lines_carry_the_service_level_request_id_and_spans() {
        let lines = json_lines(|| {
            let span = tracing::info_span!(
                "http",
                service = "device",
                request_id = "req-42",
                method = "GET"
            );
            span.in_scope(|| {
                let inner = tracing::info_span!("store", table = "devices");
                inner.in_scope(|| {
                    tracing::info!(
                        status = 200_u64,
                        elapsed_ms = 3_u64,
                        level = "shadowed",
                        "request served"
                    );
                });
            });
            tracing::warn!(error = %"boom", "outside any request");
        });
        assert_eq!(lines.len(), 2);
        let served = &lines[0];
        assert_eq!(served["service"], "device-service");
        assert_eq!(served["level"], "INFO");
        assert_eq!(served["message"], "request served");
        assert_eq!(served["status"], 200);
        assert_eq!(served["fields.level"], "shadowed");
        assert_eq!(served["request_id"], "req-42");
        assert_eq!(served["spans"][0]["name"], "http");
        assert_eq!(served["spans"][0]["method"], "GET");
        assert_eq!(served["spans"][1]["table"], "devices");
        assert!(served["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(served["target"].as_str().unwrap().contains("telemetry"));

        let outside = &lines[1];
        assert_eq!(outside["level"], "WARN");
        assert_eq!(outside["error"], "boom");
        assert!(outside.get("request_id").is_none());
        assert!(outside.get("spans").is_none());
    }

    #[test]
    fn request_ids_are_taken_when_sane() {
        assert_eq!(request_id_from(Some("abc-123")), "abc-123");
        assert_ne!(request_id_from(Some("has space")), "has space");
        assert_ne!(request_id_from(Some(&"x".repeat(200))), "x".repeat(200));
        assert_eq!(request_id_from(None).len(), 36);
    }
}

#[cfg(test)]
mod metrics_token_tests {
    use super::*;

    #[test]
    fn metrics_need_the_token_only_when_one_is_set() {
        assert!(metrics_allowed(None, None));
        assert!(metrics_allowed(None, Some(b"Bearer anything")));
        assert!(metrics_allowed(Some("s3cret"), Some(b"Bearer s3cret")));
        assert!(!metrics_allowed(Some("s3cret"), None));
        assert!(!metrics_allowed(Some("s3cret"), Some(b"Bearer s3cre")));
        assert!(!metrics_allowed(Some("s3cret"), Some(b"s3cret")));
        assert!(!metrics_allowed(Some("s3cret"), Some(b"Bearer s3cret2")));
    }

    #[test]
    fn a_burst_of_log_lines_is_cut_to_one_per_interval() {
        let every = LogEvery::new(std::time::Duration::from_secs(60));
        assert!(every.ready());
        assert!(!every.ready());
        assert!(!every.ready());
        let always = LogEvery::new(std::time::Duration::ZERO);
        assert!(always.ready());
        assert!(always.ready());
    }
}
