//! The service kit's frame: bind a service's listeners before it runs
//! ([`Listeners`]), then serve HTTP and gRPC and run its background tasks
//! until shutdown, in one call ([`Runner`]).
//!
//! A service's `Application::build` binds with [`Listeners::bind`] (port 0
//! picks a free port, a held port names the setting that moves it), and
//! its `run_until_stopped` is a [`Runner`] with its router, its gRPC
//! service and its tasks. A server that fails stops the others; shutdown
//! stops accepting, then drains what is in flight.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use futures_util::future::{BoxFuture, join, join_all};
use tokio::net::TcpListener;

use crate::grpc::{GrpcService, InternalToken};
use crate::http::HttpLimits;
use crate::shutdown::Shutdown;

/// A service's bound listeners: HTTP always, gRPC when it offers one.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: Option<TcpListener>,
}

impl Listeners {
    /// Binds `service`'s HTTP and gRPC ports on `host`; `section` is its
    /// configuration section (`device`), whose `http_port` and `grpc_port`
    /// settings move them.
    pub async fn bind(
        service: &str,
        section: &str,
        host: IpAddr,
        http_port: u16,
        grpc_port: u16,
    ) -> anyhow::Result<Self> {
        let mut listeners = Self::bind_http(service, section, host, http_port).await?;
        listeners.grpc = Some(
            crate::listen::bind(
                SocketAddr::new(host, grpc_port),
                &format!("{service} gRPC"),
                &format!("{section}.grpc_port"),
            )
            .await?,
        );
        Ok(listeners)
    }

    /// Binds `service`'s HTTP port only.
    pub async fn bind_http(
        service: &str,
        section: &str,
        host: IpAddr,
        http_port: u16,
    ) -> anyhow::Result<Self> {
        let http = crate::listen::bind(
            SocketAddr::new(host, http_port),
            &format!("{service} HTTP"),
            &format!("{section}.http_port"),
        )
        .await?;
        Ok(Self { http, grpc: None })
    }

    pub fn http_port(&self) -> u16 {
        port_of(&self.http)
    }

    /// The gRPC port; 0 when the service has none.
    pub fn grpc_port(&self) -> u16 {
        self.grpc.as_ref().map(port_of).unwrap_or_default()
    }
}

/// The port `listener` is bound to.
pub fn port_of(listener: &TcpListener) -> u16 {
    listener.local_addr().map(|a| a.port()).unwrap_or_default()
}

type Server<'a> = (&'static str, BoxFuture<'a, anyhow::Result<()>>);

/// Serves a service's listeners and runs its tasks until shutdown.
pub struct Runner<'a> {
    name: &'static str,
    stop: Shutdown,
    servers: Vec<Server<'a>>,
    tasks: Vec<BoxFuture<'a, ()>>,
}

impl<'a> Runner<'a> {
    pub fn new(name: &'static str) -> Self {
        Self::with_stop(name, Shutdown::new())
    }

    /// A runner whose stop is `stop`, shared with what the service built
    /// before it runs (live streams that end on shutdown).
    pub fn with_stop(name: &'static str, stop: Shutdown) -> Self {
        Self {
            name,
            stop,
            servers: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// Triggered when the service stops: what its tasks wait on.
    pub fn stop(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Serves `router` on `listener` within `limits`; no listener (an
    /// optional port left unset): nothing is served.
    pub fn http(
        mut self,
        listener: impl Into<Option<TcpListener>>,
        router: axum::Router,
        limits: HttpLimits,
    ) -> Self {
        let Some(listener) = listener.into() else {
            return self;
        };
        let serving = crate::http::serve(self.name, listener, router, limits, self.stop.wait());
        self.servers
            .push(("HTTP", Box::pin(async move { Ok(serving.await?) })));
        self
    }

    /// Serves `service` on `listener`, with health, reflection, request ids
    /// and the internal token checked on every call. No listener (a
    /// service bound with [`Listeners::bind_http`]): nothing is served.
    pub fn grpc(
        mut self,
        listener: impl Into<Option<TcpListener>>,
        token: &InternalToken,
        service: impl GrpcService,
    ) -> Self {
        let Some(listener) = listener.into() else {
            return self;
        };
        let (name, token, stop) = (self.name, token.clone(), self.stop.wait());
        let serving =
            async move { crate::grpc::serve(name, &token, service, listener, stop).await };
        self.servers.push(("gRPC", Box::pin(serving)));
        self
    }

    /// Serves a service's [`Listeners`]: `router` over HTTP within
    /// `limits`, `service` over gRPC (when bound) checking `token`.
    pub fn serve(
        self,
        listeners: Listeners,
        router: axum::Router,
        limits: HttpLimits,
        token: &InternalToken,
        service: impl GrpcService,
    ) -> Self {
        self.http(listeners.http, router, limits)
            .grpc(listeners.grpc, token, service)
    }

    /// Runs `task` beside the servers; it is expected to end once the
    /// runner's [`stop`](Self::stop) is triggered.
    pub fn task(mut self, task: impl Future<Output = ()> + Send + 'a) -> Self {
        self.tasks.push(Box::pin(task));
        self
    }

    /// Serves and runs until `shutdown` resolves (or a server fails, which
    /// stops the rest), then waits for every server to drain and every
    /// task to end.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let trigger = self.stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            trigger.trigger();
        });
        let name = self.name;
        let servers = self.servers.into_iter().map(|(kind, serving)| {
            let stop = self.stop.clone();
            async move {
                let result = serving.await;
                // A server that fails stops the others too.
                stop.trigger();
                result.with_context(|| format!("{name} {kind} server"))
            }
        });
        tracing::info!("{name} ready");
        let (results, _) = join(join_all(servers), join_all(self.tasks)).await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn serves_until_shutdown_and_waits_for_its_tasks() {
        let localhost = IpAddr::from([127, 0, 0, 1]);
        let listeners = Listeners::bind("test", "test", localhost, 0, 0)
            .await
            .unwrap();
        let port = listeners.http_port();
        assert_ne!(port, 0);
        assert_ne!(listeners.grpc_port(), 0);
        let router = axum::Router::new().route("/hello", axum::routing::get(|| async { "hi" }));
        let runner = Runner::new("test");
        let stop = runner.stop();
        let task_ended = Arc::new(AtomicBool::new(false));
        let ended = task_ended.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(
            runner
                .http(listeners.http, router, HttpLimits::default())
                .task(async move {
                    stop.wait().await;
                    ended.store(true, Ordering::SeqCst);
                })
                .run_until(async move {
                    let _ = rx.await;
                }),
        );
        let body = reqwest::get(format!("http://127.0.0.1:{port}/hello"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "hi");
        tx.send(()).unwrap();
        running.await.unwrap().unwrap();
        assert!(task_ended.load(Ordering::SeqCst));
    }
}
