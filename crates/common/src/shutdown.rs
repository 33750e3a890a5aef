//! Graceful shutdown on SIGINT or SIGTERM. The first signal asks every
//! service to stop and drain; while they drain, what the process still
//! waits for (open HTTP requests, services not stopped yet) is logged every
//! few seconds; a second signal ends the process at once, with the status
//! a shell gives a process killed by that signal (130 for SIGINT, 143 for
//! SIGTERM).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// When the first report of what shutdown waits for is logged, and how
/// often after that.
const FIRST_REPORT: Duration = Duration::from_secs(1);
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Resolves when the process receives SIGINT (Ctrl-C) or SIGTERM. From
/// then on, the process logs what it still waits for while it drains, and
/// a second SIGINT or SIGTERM exits it at once.
pub async fn signal() {
    let mut signals = Signals::new();
    let first = signals.recv().await;
    tracing::info!(
        signal = first.name(),
        "shutdown requested; draining (a second signal stops at once)"
    );
    static WATCHING: AtomicBool = AtomicBool::new(false);
    if !WATCHING.swap(true, Ordering::SeqCst) {
        tokio::spawn(watch_draining(signals));
    }
}

/// Until the process ends: reports what is pending, and exits on the next
/// signal.
async fn watch_draining(mut signals: Signals) {
    let started = Instant::now();
    let mut report =
        tokio::time::interval_at(tokio::time::Instant::now() + FIRST_REPORT, REPORT_EVERY);
    loop {
        tokio::select! {
            second = signals.recv() => {
                tracing::warn!(
                    signal = second.name(),
                    waiting_for = %describe(&pending()),
                    "second signal: exiting without waiting for the shutdown to finish"
                );
                std::process::exit(second.exit_code());
            }
            _ = report.tick() => {
                let pending = pending();
                tracing::info!(
                    draining_secs = started.elapsed().as_secs(),
                    waiting_for = %describe(&pending),
                    "shutting down: still waiting for {}",
                    if pending.is_empty() { "the services to stop".to_string() } else { format!("{} item(s)", pending.len()) },
                );
            }
        }
    }
}

/// SIGINT or SIGTERM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }

    /// 128 + the signal's number, as shells report a process the signal
    /// killed.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::Interrupt => 130,
            Self::Terminate => 143,
        }
    }
}

/// Both signals, listened to from creation on, so none that arrives
/// between two waits is missed.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                interrupt: signal(SignalKind::interrupt()).ok(),
                terminate: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(&mut self.interrupt) => Signal::Interrupt,
                () = next(&mut self.terminate) => Signal::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Interrupt
        }
    }
}

/// What shutdown waits for, registered by whatever holds the process up
/// (an open HTTP request, a service not stopped yet).
struct Entry {
    what: String,
    /// When it began, for what has an age worth reporting (a request).
    since: Option<Instant>,
}

static PENDING: Mutex<BTreeMap<u64, Entry>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Something shutdown waits for, listed in its reports until dropped.
#[must_use = "the entry is removed when this is dropped"]
pub struct Awaited {
    id: u64,
}

/// Registers `what` (say `device-service: HTTP POST /api/v1/...`) as
/// something shutdown waits for, open since `since`.
pub fn awaited_since(what: impl Into<String>, since: Instant) -> Awaited {
    register(what.into(), Some(since))
}

/// Registers `what` (say `device-service`) as something shutdown waits
/// for.
pub fn awaited(what: impl Into<String>) -> Awaited {
    register(what.into(), None)
}

fn register(what: String, since: Option<Instant>) -> Awaited {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, Entry { what, since });
    Awaited { id }
}

impl Drop for Awaited {
    fn drop(&mut self) {
        PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// What shutdown waits for now: what has an age (requests) first, oldest
/// first, with how long each has been open; then the rest (services) in
/// the order they registered.
pub fn pending() -> Vec<(String, Option<Duration>)> {
    let pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    let mut list: Vec<(String, Option<Duration>)> = pending
        .values()
        .map(|e| (e.what.clone(), e.since.map(|s| s.elapsed())))
        .collect();
    // Stable: entries without an age keep their registration order.
    list.sort_by(|a, b| match (a.1, b.1) {
        (Some(a), Some(b)) => b.cmp(&a),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    });
    list
}

/// `a (open 3 s); b`, or `nothing registered`.
fn describe(pending: &[(String, Option<Duration>)]) -> String {
    if pending.is_empty() {
        return "nothing registered".into();
    }
    pending
        .iter()
        .map(|(what, age)| match age {
            Some(age) => format!("{what} (open {} s)", age.as_secs()),
            None => what.clone(),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `task` registered as [`awaited`] under `name`: a service that
/// shutdown waits for until it has stopped.
pub async fn until_stopped<F: Future>(name: impl Into<String>, task: F) -> F::Output {
    let _awaited = awaited(name);
    task.await
}

/// A shutdown trigger that many listeners can wait on.
#[derive(Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(false);
        Self { tx }
    }

    /// Asks every listener to stop.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once [`Shutdown::trigger`] has been called.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn what_shutdown_waits_for_is_listed_until_dropped() {
        let older = awaited_since(
            "listing-test: HTTP POST /slow",
            Instant::now() - Duration::from_secs(4),
        );
        let service = awaited("listing-test: service");
        let mine = |p: Vec<(String, Option<Duration>)>| -> Vec<String> {
            p.into_iter()
                .map(|(w, _)| w)
                .filter(|w| w.starts_with("listing-test"))
                .collect()
        };
        assert_eq!(
            mine(pending()),
            ["listing-test: HTTP POST /slow", "listing-test: service"]
        );
        let text = describe(&pending());
        assert!(
            text.contains("listing-test: HTTP POST /slow (open 4 s)"),
            "{text}"
        );
        assert!(text.contains("; listing-test: service"), "{text}");
        assert!(!text.contains("listing-test: service (open"), "{text}");
        drop(older);
        assert_eq!(mine(pending()), ["listing-test: service"]);
        drop(service);
        assert!(mine(pending()).is_empty());
        assert_eq!(describe(&[]), "nothing registered");
    }

    #[tokio::test]
    async fn a_service_is_awaited_until_it_stops() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let listed = || pending().iter().any(|(w, _)| w == "service-test: worker");
        let task = until_stopped("service-test: worker", async move {
            let _ = rx.await;
        });
        tokio::pin!(task);
        assert!(futures_util::FutureExt::now_or_never(&mut task).is_none());
        assert!(listed());
        tx.send(()).unwrap();
        task.await;
        assert!(!listed());
    }

    #[test]
    fn a_second_signal_exits_with_the_shells_status() {
        assert_eq!(Signal::Interrupt.exit_code(), 130);
        assert_eq!(Signal::Terminate.exit_code(), 143);
    }
}
