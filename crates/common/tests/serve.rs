//! The HTTP listener every service runs, against hostile clients over real
//! sockets: slow headers, huge headers, too many connections from one
//! address, and shutdown with a request in flight.

// Integration tests fail loudly on purpose: `unwrap` is their assertion.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wf_common::http::{HttpLimits, serve};
use wf_common::shutdown::Shutdown;

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "finished"
            }),
        )
}

async fn start(
    service: &'static str,
    limits: HttpLimits,
) -> (SocketAddr, Shutdown, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Shutdown::new();
    let wait = stop.wait();
    let task = tokio::spawn(async move {
        serve(service, listener, router(), limits, wait)
            .await
            .unwrap();
    });
    (addr, stop, task)
}

/// Reads until the server closes the connection or `within` passes; true when
/// it closed.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

fn refused(service: &str, reason: &str) -> u64 {
    let rendered = wf_common::telemetry::metrics_handle().render();
    let prefix =
        format!("wf_http_connections_refused_total{{service=\"{service}\",reason=\"{reason}\"}} ");
    rendered
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn slow_clients_are_closed_after_the_header_timeout_while_others_are_served() {
    let limits = HttpLimits {
        header_read_timeout_secs: 1,
        ..HttpLimits::default()
    };
    let (addr, stop, task) = start("test-slow", limits).await;
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"G").await.unwrap();
        slow.push(s);
    }
    // Each sends its head a byte at a time, never finishing it in time.
    let dribble = tokio::spawn(async move {
        let started = Instant::now();
        let mut open = slow;
        let mut closed_after = Vec::new();
        for byte in b"ET / HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut still = Vec::new();
            for mut s in open {
                if s.write_all(&[*byte]).await.is_ok() {
                    still.push(s);
                } else {
                    closed_after.push(started.elapsed());
                }
            }
            open = still;
        }
        // Whatever still accepts writes must have been closed by now.
        let mut left_open = 0;
        for s in &mut open {
            if !closed_within(s, Duration::from_millis(200)).await {
                left_open += 1;
            }
        }
        left_open
    });
    // Meanwhile a well-behaved client is served at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let body = reqwest::get(format!("http://{addr}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello");
    assert!(started.elapsed() < Duration::from_millis(500));
    let left_open = dribble.await.unwrap();
    assert_eq!(
        left_open, 0,
        "slow clients still connected after the header timeout"
    );
    stop.trigger();
    task.await.unwrap();
}

#[tokio::test]
async fn a_huge_header_is_answered_431() {
    let (addr, stop, task) = start("test-431", HttpLimits::default()).await;
    let client = reqwest::Client::new();
    let big = "a".repeat(100 * 1024);
    let resp = client
        .get(format!("http://{addr}/"))
        .header("x-big", big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    // Headers within the cap pass.
    let resp = client
        .get(format!("http://{addr}/"))
        .header("x-fine", "a".repeat(8 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    stop.trigger();
    task.await.unwrap();
}

#[tokio::test]
async fn connections_beyond_the_per_ip_cap_are_refused_and_counted() {
    let limits = HttpLimits {
        max_connections_per_ip: 3,
        ..HttpLimits::default()
    };
    let (addr, stop, task) = start("test-cap", limits).await;
    let before = refused("test-cap", "per_ip");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Let the server accept the three.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "the fourth connection was not closed"
    );
    assert_eq!(refused("test-cap", "per_ip"), before + 1);

    // A held connection is served, and closing one frees a slot.
    let mut first = held.remove(0);
    first
        .write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with("127.0.0.1"),
        "the handler saw the peer: {answer}"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = reqwest::get(format!("http://{addr}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "hello");
    assert_eq!(refused("test-cap", "per_ip"), before + 1);
    stop.trigger();
    drop(held);
    task.await.unwrap();
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_and_stops_accepting() {
    let (addr, stop, task) = start("test-drain", HttpLimits::default()).await;
    let in_flight = tokio::spawn(async move {
        reqwest::get(format!("http://{addr}/slow"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.trigger();
    assert_eq!(in_flight.await.unwrap(), "finished");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the server did not stop")
        .unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}
