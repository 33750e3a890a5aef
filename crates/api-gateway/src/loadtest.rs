//! A small HTTP load generator for `wf-iot bench api`: `concurrency`
//! clients on keep-alive connections send authenticated `GET url` back to
//! back for `duration`, and the report gives throughput and latency
//! percentiles.
//!
//! Like `wrk`, each client writes one prepared request and reads the answer
//! straight off its socket, with no connection pool or connection task
//! between: the load generator shares the cores with what it measures, so
//! the less it spends per request, the more the figures say about the
//! server.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request that takes longer than this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest response head the client reads.
const MAX_HEAD: usize = 64 * 1024;

/// The largest answer the client reads.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    /// Requests completed (successful or not).
    pub requests: u64,
    /// Transport errors, timeouts and non-2xx answers.
    pub errors: u64,
    pub elapsed: Duration,
    /// Completed requests per second.
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} errors) in {:.2}s: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            self.requests,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.rps,
            self.p50.as_secs_f64() * 1000.0,
            self.p99.as_secs_f64() * 1000.0,
        )
    }
}

/// Sends `GET url` with `Authorization: Bearer token` from `concurrency`
/// concurrent clients for `duration`. Fails only when `url` is not an
/// `http://` URL; failed requests are counted in the report.
pub async fn load_test(
    url: &str,
    token: &str,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<LoadReport> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    let authority = uri
        .authority()
        .filter(|_| uri.scheme_str() == Some("http"))
        .with_context(|| format!("{url:?}: the load generator speaks plain http"))?;
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    anyhow::ensure!(
        token.bytes().all(|b| b.is_ascii_graphic()),
        "the token must be printable ASCII without spaces"
    );
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request: std::sync::Arc<[u8]> = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
         Accept: application/json\r\n\r\n"
    )
    .into_bytes()
    .into();
    let start = Instant::now();
    let deadline = start + duration;
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| tokio::spawn(client(addr, request.clone(), deadline)))
        .collect();
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (l, e) = worker.await.context("a load worker panicked")?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let requests = latencies.len() as u64;
    Ok(LoadReport {
        requests,
        errors,
        elapsed,
        rps: requests as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    })
}

/// One client: requests back to back on one connection (a new one after a
/// failure or a `Connection: close`) until `deadline`. Returns the latency
/// of every request in microseconds and how many failed.
async fn client(
    addr: SocketAddr,
    request: std::sync::Arc<[u8]>,
    deadline: Instant,
) -> (Vec<u32>, u64) {
    let mut latencies: Vec<u32> = Vec::new();
    let mut errors = 0u64;
    let mut conn: Option<Connection> = None;
    let mut buf = Vec::with_capacity(16 * 1024);
    while Instant::now() < deadline {
        let sent = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let mut stream = match conn.take() {
                Some(c) => c,
                None => Connection::open(addr).await?,
            };
            let answer = stream.exchange(&request, &mut buf).await?;
            Ok::<_, std::io::Error>((stream, answer))
        })
        .await;
        latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        match outcome {
            Ok(Ok((stream, answer))) => {
                if !(200..300).contains(&answer.status) {
                    errors += 1;
                }
                if answer.keep_alive {
                    conn = Some(stream);
                } else {
                    // Nothing of a closed connection may reach the next one.
                    buf.clear();
                }
            }
            Ok(Err(_)) | Err(_) => {
                errors += 1;
                buf.clear();
                // A refused connection is not retried in a busy loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (latencies, errors)
}

struct Connection {
    stream: TcpStream,
}

/// What the client needs of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    status: u16,
    keep_alive: bool,
}

impl Connection {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self { stream })
    }

    /// Writes the request and reads the whole answer; `buf` keeps whatever
    /// arrived past it.
    async fn exchange(&mut self, request: &[u8], buf: &mut Vec<u8>) -> std::io::Result<Answer> {
        self.stream.write_all(request).await?;
        loop {
            if let Some((head_len, answer, body)) = parse_head(buf)? {
                let consumed = match body {
                    Body::Length(n) => {
                        let end = head_len
                            .checked_add(n)
                            .filter(|&end| end <= MAX_BODY)
                            .ok_or_else(|| invalid("body too large"))?;
                        self.fill(buf, end).await?;
                        end
                    }
                    Body::Chunked => self.read_chunked(buf, head_len).await?,
                };
                buf.drain(..consumed);
                return Ok(answer);
            }
            if buf.len() > MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            self.read_more(buf).await?;
        }
    }

    /// Reads until `buf` holds at least `len` bytes.
    async fn fill(&mut self, buf: &mut Vec<u8>, len: usize) -> std::io::Result<()> {
        while buf.len() < len {
            self.read_more(buf).await?;
        }
        Ok(())
    }

    async fn read_more(&mut self, buf: &mut Vec<u8>) -> std::io::Result<()> {
        buf.reserve(8 * 1024);
        if self.stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Where the line starting at `at` ends (its CR), reading as needed.
    async fn line_end(&mut self, buf: &mut Vec<u8>, at: usize) -> std::io::Result<usize> {
        loop {
            if let Some(i) = find_crlf(&buf[at..]) {
                return Ok(at + i);
            }
            if buf.len() > MAX_BODY {
                return Err(invalid("line too long"));
            }
            self.read_more(buf).await?;
        }
    }

    /// Reads a chunked body that starts at `at`; returns where it ends.
    async fn read_chunked(&mut self, buf: &mut Vec<u8>, mut at: usize) -> std::io::Result<usize> {
        loop {
            let line_end = self.line_end(buf, at).await?;
            let size_text =
                std::str::from_utf8(&buf[at..line_end]).map_err(|_| invalid("bad chunk size"))?;
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size =
                usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size"))?;
            at = line_end + 2;
            if size == 0 {
                // Trailer lines, if any, then the empty line that ends the body.
                loop {
                    let line_end = self.line_end(buf, at).await?;
                    let empty = line_end == at;
                    at = line_end + 2;
                    if empty {
                        return Ok(at);
                    }
                }
            }
            let end = at
                .checked_add(size)
                .and_then(|n| n.checked_add(2))
                .filter(|&n| n <= MAX_BODY)
                .ok_or_else(|| invalid("chunk too large"))?;
            self.fill(buf, end).await?;
            at = end;
        }
    }
}

enum Body {
    Length(usize),
    Chunked,
}

/// The answer's head if `buf` holds all of it: its length, status,
/// whether the connection stays open, and how the body is framed.
fn parse_head(buf: &[u8]) -> std::io::Result<Option<(usize, Answer, Body)>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(invalid(&format!("malformed response: {e}"))),
    };
    let status = response.code.unwrap_or_default();
    let mut keep_alive = response.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    // Header values as comma-separated tokens, lower-cased.
    let tokens = |value: &[u8]| -> Vec<String> {
        String::from_utf8_lossy(value)
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .collect()
    };
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("bad content-length"))?;
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked |= tokens(h.value).iter().any(|t| t == "chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let tokens = tokens(h.value);
            if tokens.iter().any(|t| t == "close") {
                keep_alive = false;
            } else if tokens.iter().any(|t| t == "keep-alive") {
                keep_alive = true;
            }
        }
    }
    // Chunked framing wins over a length (RFC 9112 §6.3).
    let body = if chunked {
        Body::Chunked
    } else {
        Body::Length(length.unwrap_or(0))
    };
    Ok(Some((head_len, Answer { status, keep_alive }, body)))
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The `q` quantile of sorted microsecond latencies (nearest rank).
fn percentile(sorted: &[u32], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Duration::from_micros(u64::from(sorted[rank - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.50), Duration::from_micros(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&[7], 0.99), Duration::from_micros(7));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    /// A server answering `/json` with a sized body, `/chunked` with a
    /// streamed one, `/close` with `Connection: close`, and anything else
    /// with 500.
    async fn server() -> String {
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/json",
                get(|headers: http::HeaderMap| async move {
                    // The request carries the token it was given.
                    if headers.get("authorization").map(|v| v.as_bytes()) == Some(b"Bearer t-1") {
                        (http::StatusCode::OK, "{\"ok\":true}")
                    } else {
                        (http::StatusCode::UNAUTHORIZED, "{}")
                    }
                }),
            )
            .route(
                "/chunked",
                get(|| async {
                    let parts = ["first part, ", "second part, ", "the end"]
                        .map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from_static(p.as_bytes())));
                    axum::body::Body::from_stream(futures_util::stream::iter(parts))
                }),
            )
            .route(
                "/close",
                get(|| async { ([(http::header::CONNECTION, "close")], "bye") }),
            )
            .fallback(|| async { (http::StatusCode::INTERNAL_SERVER_ERROR, "no") });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn sized_chunked_and_closing_answers_are_read_whole() {
        let base = server().await;
        for path in ["/json", "/chunked", "/close"] {
            let report = load_test(
                &format!("{base}{path}"),
                "t-1",
                2,
                Duration::from_millis(200),
            )
            .await
            .unwrap();
            assert!(report.requests > 10, "{path}: {report}");
            assert_eq!(report.errors, 0, "{path}: {report}");
            assert!(report.p50 <= report.p99);
        }
    }

    #[tokio::test]
    async fn a_chunked_body_with_trailers_is_read_past() {
        // A server that answers every request on a connection with a chunked
        // body followed by a trailer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&chunk[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            let answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                                5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\r\n";
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        let report = load_test(
            &format!("http://{addr}/"),
            "t-1",
            1,
            Duration::from_millis(200),
        )
        .await
        .unwrap();
        assert!(report.requests > 10, "{report}");
        assert_eq!(report.errors, 0, "{report}");
    }

    #[tokio::test]
    async fn failed_answers_and_refused_connections_are_errors() {
        let base = server().await;
        // Nothing listens on a port just released.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        for (url, token, clients) in [
            (format!("{base}/missing"), "t-1", 2),
            (format!("{base}/json"), "wrong", 1),
            (format!("http://127.0.0.1:{closed}/json"), "t-1", 1),
        ] {
            let report = load_test(&url, token, clients, Duration::from_millis(100))
                .await
                .unwrap();
            assert!(report.requests > 0, "{url}: {report}");
            assert_eq!(report.errors, report.requests, "{url}: {report}");
        }
    }

    #[test]
    fn answer_heads_are_parsed() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        let (len, answer, body) = parse_head(head).unwrap().unwrap();
        assert_eq!(len, head.len() - 5);
        assert_eq!(
            answer,
            Answer {
                status: 200,
                keep_alive: true
            }
        );
        assert!(matches!(body, Body::Length(5)));
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
                .unwrap()
                .is_none()
        );
        let (_, answer, body) = parse_head(
            b"HTTP/1.1 503 Busy\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            answer,
            Answer {
                status: 503,
                keep_alive: false
            }
        );
        assert!(matches!(body, Body::Chunked));
        assert!(
            !parse_head(b"HTTP/1.0 200 OK\r\n\r\n")
                .unwrap()
                .unwrap()
                .1
                .keep_alive
        );
        let (_, answer, body) = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: gzip, chunked\r\nConnection: keep-alive, close\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(!answer.keep_alive);
        assert!(matches!(body, Body::Chunked));
        assert!(parse_head(b"SMTP ready\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn only_http_urls_and_printable_tokens_are_accepted() {
        assert!(
            load_test(
                "http://127.0.0.1:1/",
                "a\r\nX-Evil: 1",
                1,
                Duration::from_millis(1)
            )
            .await
            .is_err()
        );
        assert!(
            load_test("https://x", "t", 1, Duration::from_millis(1))
                .await
                .is_err()
        );
        assert!(
            load_test("not a url", "t", 1, Duration::from_millis(1))
                .await
                .is_err()
        );
    }
}
