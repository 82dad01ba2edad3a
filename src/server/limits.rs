//! Connection limits: caps on open connections per listener and per client
//! IP (checked at accept), the idle keep-alive timeout, and the classification
//! of HTTP/2 connections closed for abuse.
//!
//! The caps are shared by every worker's accept loop of a listener, so they
//! are atomics and a sharded, bounded map of per-IP counts; a worker takes one
//! shard's lock per accepted connection, and only when a per-IP cap is set.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Shards of the per-IP map: accepts on different workers rarely share a lock.
const SHARDS: usize = 16;
/// Client IPs tracked at once per shard; a new IP beyond is refused, so a
/// flood from many addresses cannot grow the map without bound.
const IPS_PER_SHARD: usize = 4096;

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's `max_connections` is reached.
    Listener,
    /// The client IP's `max_connections_per_ip` is reached.
    PerIp,
    /// Too many distinct client IPs are connected to track one more.
    IpTableFull,
}

impl Refusal {
    /// All reasons, for creating their counters up front.
    pub const ALL: [Refusal; 3] = [Refusal::Listener, Refusal::PerIp, Refusal::IpTableFull];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Listener => "max_connections",
            Refusal::PerIp => "max_connections_per_ip",
            Refusal::IpTableFull => "ip_table_full",
        }
    }
}

/// A listener's open connection counts, shared by its workers.
pub struct ConnCaps {
    total: AtomicUsize,
    per_ip: Box<[Mutex<HashMap<IpAddr, usize>>]>,
}

impl Default for ConnCaps {
    fn default() -> Self {
        Self {
            total: AtomicUsize::new(0),
            per_ip: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl ConnCaps {
    /// Admits a connection from `ip` under the caps (0: no cap); the permit
    /// gives its slots back when dropped.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Permit, Refusal> {
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if max_total != 0 && before >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Listener);
        }
        let mut permit = Permit {
            caps: self.clone(),
            ip: None,
        };
        if max_per_ip != 0 {
            let mut shard = self.shard(ip);
            let full = shard.len() >= IPS_PER_SHARD;
            match shard.get_mut(&ip) {
                Some(n) if *n >= max_per_ip => return Err(Refusal::PerIp),
                Some(n) => *n += 1,
                None if full => return Err(Refusal::IpTableFull),
                None => {
                    shard.insert(ip, 1);
                }
            }
            permit.ip = Some(ip);
        }
        Ok(permit)
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The low bits of the address spread neighbouring clients over shards.
        let low = match ip {
            IpAddr::V4(v4) => usize::from(v4.octets()[3]),
            IpAddr::V6(v6) => usize::from(v6.octets()[15]) ^ usize::from(v6.octets()[7]),
        };
        self.per_ip[low % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted connection's slots; given back on drop.
pub struct Permit {
    caps: Arc<ConnCaps>,
    /// Set when the connection holds a per-IP slot.
    ip: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut shard = self.caps.shard(ip);
            if let Some(n) = shard.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    // Entries go at 0, so the map holds only connected IPs.
                    shard.remove(&ip);
                }
            }
        }
    }
}

/// Requests in flight on one connection, from the service call until the
/// response body is done, so that the connection knows when it is idle.
#[derive(Default)]
pub struct InFlight {
    count: AtomicUsize,
    /// Bumped each time the count returns to 0: a new idle period starts.
    idle_periods: AtomicUsize,
    /// The connection task, woken when an HTTP/2 stream (its own task) ends
    /// the last request.
    waker: Mutex<Option<Waker>>,
}

impl InFlight {
    /// Counts one request until the guard drops. `other_task`: the request
    /// runs outside the connection's task (HTTP/2 streams), which must then
    /// be woken to start the idle clock.
    pub fn enter(self: &Arc<Self>, other_task: bool) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard {
            of: self.clone(),
            wake: other_task,
        }
    }
}

/// One request in flight; see [`InFlight::enter`].
pub struct InFlightGuard {
    of: Arc<InFlight>,
    wake: bool,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.of.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.of.idle_periods.fetch_add(1, Ordering::AcqRel);
            // An HTTP/1 response ends inside the connection's own poll, which
            // looks at the count next; no wake-up is needed (or wanted: it
            // would cost a poll per request).
            if self.wake
                && let Some(w) = self
                    .of
                    .waker
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .as_ref()
            {
                w.wake_by_ref();
            }
        }
    }
}

/// A response body that keeps its request counted in flight until it is done.
pub struct Tracked<B> {
    inner: B,
    _guard: InFlightGuard,
}

impl<B> Tracked<B> {
    /// Wraps `inner`, holding `guard` as long as it lives.
    pub fn new(inner: B, guard: InFlightGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B: Body + Unpin> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Fires once a connection has had no request in flight for the idle timeout.
pub struct IdleClock {
    of: Arc<InFlight>,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The idle period the armed deadline belongs to.
    period: usize,
    registered: bool,
    fired: bool,
}

impl IdleClock {
    /// A clock on `of`; `Duration::ZERO` never fires.
    pub fn new(of: Arc<InFlight>, timeout: Duration) -> Self {
        Self {
            of,
            timeout,
            sleep: None,
            period: 0,
            registered: false,
            fired: false,
        }
    }

    /// The counts this clock watches, for the connection's service.
    pub fn in_flight(&self) -> Arc<InFlight> {
        self.of.clone()
    }

    /// True once (and only once) when the connection has been idle for the
    /// whole timeout. Costs an atomic load while requests are in flight, and
    /// a clock read only when a new idle period starts.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.fired || self.timeout.is_zero() {
            return false;
        }
        if !self.registered {
            // The task's waker stays the same for the life of the task.
            *self.of.waker.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(cx.waker().clone());
            self.registered = true;
        }
        if self.of.count.load(Ordering::Acquire) > 0 {
            return false;
        }
        let period = self.of.idle_periods.load(Ordering::Acquire);
        let sleep = match &mut self.sleep {
            Some(s) if period == self.period => s,
            slot => {
                self.period = period;
                let deadline = Instant::now() + self.timeout;
                match slot {
                    Some(s) => {
                        s.as_mut().reset(deadline);
                        s
                    }
                    None => slot.insert(Box::pin(tokio::time::sleep_until(deadline))),
                }
            }
        };
        if sleep.as_mut().poll(cx).is_ready() {
            self.fired = true;
            return true;
        }
        false
    }
}

/// Why a client connection was closed for abuse or a protocol violation, if
/// it was: the gateway's own HTTP/2 GOAWAY reason found in `err`'s chain.
pub fn abuse_reason(err: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut source = Some(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            // Only GOAWAYs sent by this side: the peer's own are not abuse.
            if !h2.is_go_away() || h2.is_remote() {
                return None;
            }
            return Some(match h2.reason()? {
                h2::Reason::ENHANCE_YOUR_CALM => "enhance_your_calm",
                h2::Reason::PROTOCOL_ERROR => "protocol_error",
                h2::Reason::FLOW_CONTROL_ERROR => "flow_control_error",
                h2::Reason::FRAME_SIZE_ERROR => "frame_size_error",
                h2::Reason::COMPRESSION_ERROR => "compression_error",
                _ => return None,
            });
        }
        source = e.source();
    }
    None
}

/// The [`abuse_reason`] labels, for creating their counters up front.
pub const ABUSE_REASONS: [&str; 5] = [
    "enhance_your_calm",
    "protocol_error",
    "flow_control_error",
    "frame_size_error",
    "compression_error",
];

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_refuse_over_the_limits_and_free_slots_on_drop() {
        let caps = Arc::new(ConnCaps::default());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = caps.admit(a, 3, 2).unwrap();
        let p2 = caps.admit(a, 3, 2).unwrap();
        assert_eq!(caps.admit(a, 3, 2).err(), Some(Refusal::PerIp));
        let p3 = caps.admit(b, 3, 2).unwrap();
        assert_eq!(caps.admit(b, 3, 2).err(), Some(Refusal::Listener));
        assert_eq!(caps.open(), 3);
        drop(p1);
        let p4 = caps.admit(a, 3, 2).unwrap();
        drop((p2, p3, p4));
        assert_eq!(caps.open(), 0);
        assert!(caps.per_ip.iter().all(|s| s.lock().unwrap().is_empty()));
    }

    #[test]
    fn the_ip_table_is_bounded() {
        let caps = Arc::new(ConnCaps::default());
        let mut held = Vec::new();
        // Addresses whose last octet is 0 all land in one shard.
        for i in 0..IPS_PER_SHARD {
            let ip = IpAddr::from([10, (i >> 8) as u8, i as u8, 0]);
            held.push(caps.admit(ip, 0, 1).unwrap());
        }
        let one_more = IpAddr::from([11, 0, 0, 0]);
        assert_eq!(caps.admit(one_more, 0, 1).err(), Some(Refusal::IpTableFull));
        assert!(caps.admit(IpAddr::from([11, 0, 0, 1]), 0, 1).is_ok());
    }
}
