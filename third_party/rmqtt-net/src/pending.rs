//! Connections per client address that have not yet been answered
//! (added for wf-iot, see third_party/README.md).
//!
//! A connection holds a slot of its client address from accept until the
//! server first writes to it: the CONNACK (accepted or refused) for MQTT
//! over TCP, the upgrade response for WebSocket. Connections that send
//! nothing, or stop half way through their CONNECT, hold their slot until
//! the handshake timeout closes them; past `max_pending_per_ip` of them, a
//! new connection from that address is closed at once. Devices that have
//! connected hold no slot, so a fleet behind one address is not limited.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Connections closed at accept because their address had too many
/// unanswered ones, since the process started.
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// How many connections were closed at accept because their client address
/// had `max_pending_per_ip` unanswered connections already.
pub fn refused_pending_connections() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Unanswered connections per client address.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pending(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl Pending {
    /// A slot for `ip`, or `None` when it holds `max` already (0: no limit).
    pub(crate) fn take(&self, ip: IpAddr, max: usize) -> Option<Slot> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_insert(0);
        if max > 0 && *n >= max {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *n += 1;
        Some(Slot { pending: self.clone(), ip })
    }
}

/// One unanswered connection of an address; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    pending: Pending,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.pending.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A TCP connection that gives its slot back on its first write.
#[derive(Debug)]
pub struct CountedTcpStream {
    inner: TcpStream,
    slot: Option<Slot>,
}

impl CountedTcpStream {
    pub(crate) fn new(inner: TcpStream, slot: Slot) -> Self {
        Self { inner, slot: Some(slot) }
    }
}

impl AsyncRead for CountedTcpStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedTcpStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        self.slot = None;
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.slot = None;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.slot = None;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_max_slots_and_gets_them_back() {
        let pending = Pending::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let held: Vec<Slot> = (0..3).map(|_| pending.take(a, 3).unwrap()).collect();
        assert!(pending.take(a, 3).is_none());
        // Another address is not affected; 0 means no limit.
        assert!(pending.take(b, 3).is_some());
        assert!(pending.take(a, 0).is_some());
        drop(held);
        assert!(pending.take(a, 3).is_some());
        assert!(pending.0.lock().unwrap().is_empty());
    }
}
