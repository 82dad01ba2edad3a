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
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Shards of the per-IP map: accepts on different workers rarely share a lock.
const SHARDS: usize = 16;
/// Clients tracked at once per shard (about 260,000 in all, a few MiB); a new
/// one beyond is refused, so a flood from many addresses cannot grow the map
/// without bound.
const IPS_PER_SHARD: usize = 16_384;

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
    /// Keyed per process, so that clients cannot choose addresses that all
    /// land in one shard and fill it.
    spread: std::hash::RandomState,
}

impl Default for ConnCaps {
    fn default() -> Self {
        Self {
            total: AtomicUsize::new(0),
            per_ip: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            spread: std::hash::RandomState::new(),
        }
    }
}

/// The client a per-IP cap counts: an IPv4 address, or an IPv6 /64 (one
/// host is routinely given a whole /64, so its addresses are one client).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !u128::from(u64::MAX);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
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
            let ip = client_key(ip);
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
        use std::hash::BuildHasher;
        let index = self.spread.hash_one(ip) as usize % SHARDS;
        self.per_ip[index]
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
    /// Set by the first HTTP/2 request: the stall watch runs from then on.
    h2: AtomicBool,
    /// The HTTP/2 requests' stall slots.
    stalls: Stalls,
}

impl InFlight {
    /// Counts one request until the guard drops. `other_task`: the request
    /// runs outside the connection's task (HTTP/2 streams), which must then
    /// be woken to start the idle clock; such a request also gets a stall
    /// slot (see [`StallWatch`]).
    pub fn enter(self: &Arc<Self>, other_task: bool) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        let slot = other_task.then(|| {
            if !self.h2.load(Ordering::Relaxed) {
                self.h2.store(true, Ordering::Relaxed);
            }
            self.stalls.claim()
        });
        InFlightGuard {
            of: self.clone(),
            wake: other_task,
            slot,
        }
    }
}

/// One request in flight; see [`InFlight::enter`].
pub struct InFlightGuard {
    of: Arc<InFlight>,
    wake: bool,
    /// HTTP/2: the request's stall slot and its index.
    slot: Option<(usize, Arc<Slot>)>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some((index, slot)) = self.slot.take() {
            self.of.stalls.release(index, &slot);
        }
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

/// A slot's state: free.
const FREE: u64 = 0;
/// A slot's state: the response head is not there yet.
const HEAD: u64 = 1;
/// A slot's state: the body was polled and waits for its source (a slow
/// upstream is not a stalled client).
const SOURCE: u64 = 2;
/// States from here on: the body waits for the server to poll it since
/// `state - WAITING` ms on the connection's clock.
const WAITING: u64 = 3;

/// The connection's coarse clock: milliseconds since the connection began,
/// advanced by the [`StallWatch`] while requests are in flight, so that a body
/// poll costs an atomic load rather than a clock read.
struct Clock {
    base: std::time::Instant,
    now_ms: AtomicU64,
}

impl Clock {
    fn advance(&self) -> u64 {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX / 2);
        self.now_ms.store(ms, Ordering::Relaxed);
        ms
    }

    fn waiting(&self) -> u64 {
        self.now_ms.load(Ordering::Relaxed) + WAITING
    }
}

/// One HTTP/2 request's stall state. It is also the waker its response body
/// is polled with: a wake-up from the body's source means data is ready, and
/// from then on the body waits for the server.
struct Slot {
    state: AtomicU64,
    clock: Arc<Clock>,
    /// The waker of the task polling the body (hyper's stream task).
    outer: Mutex<Option<Waker>>,
}

impl Slot {
    fn register(&self, waker: &Waker) {
        let mut outer = self.outer.lock().unwrap_or_else(PoisonError::into_inner);
        if !outer.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *outer = Some(waker.clone());
        }
    }
}

impl Wake for Slot {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let _ = self.state.compare_exchange(
            SOURCE,
            self.clock.waiting(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        if let Some(w) = self
            .outer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            w.wake_by_ref();
        }
    }
}

/// A connection's stall slots: allocated as the number of concurrent HTTP/2
/// requests grows (it is bounded by `max_concurrent_streams`, give or take
/// streams being torn down), then reused.
struct Stalls {
    clock: Arc<Clock>,
    slots: Mutex<SlotTable>,
}

#[derive(Default)]
struct SlotTable {
    all: Vec<Arc<Slot>>,
    free: Vec<usize>,
}

impl Default for Stalls {
    fn default() -> Self {
        Self {
            clock: Arc::new(Clock {
                base: std::time::Instant::now(),
                now_ms: AtomicU64::new(0),
            }),
            slots: Mutex::default(),
        }
    }
}

impl Stalls {
    fn table(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn claim(&self) -> (usize, Arc<Slot>) {
        let mut t = self.table();
        let index = match t.free.pop() {
            Some(i) => i,
            None => {
                t.all.push(Arc::new(Slot {
                    state: AtomicU64::new(FREE),
                    clock: self.clock.clone(),
                    outer: Mutex::new(None),
                }));
                t.all.len() - 1
            }
        };
        let slot = t.all[index].clone();
        slot.state.store(HEAD, Ordering::Relaxed);
        (index, slot)
    }

    fn release(&self, index: usize, slot: &Slot) {
        slot.state.store(FREE, Ordering::Relaxed);
        drop(
            slot.outer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        self.table().free.push(index);
    }
}

/// A response body that keeps its request counted in flight until it is done.
/// Over HTTP/2 it also records when it waits for the server to poll it.
pub struct Tracked<B> {
    inner: B,
    /// HTTP/2: the slot, and the same as a waker for `inner`.
    stall: Option<(Arc<Slot>, Waker)>,
    _guard: InFlightGuard,
}

impl<B> Tracked<B> {
    /// Wraps `inner`, holding `guard` as long as it lives.
    pub fn new(inner: B, guard: InFlightGuard) -> Self {
        let stall = guard.slot.as_ref().map(|(_, slot)| {
            // The response is handed to the server: it is to poll it now.
            slot.state.store(slot.clock.waiting(), Ordering::Relaxed);
            (slot.clone(), Waker::from(slot.clone()))
        });
        Self {
            inner,
            stall,
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
        let this = self.get_mut();
        let Some((slot, waker)) = &this.stall else {
            return Pin::new(&mut this.inner).poll_frame(cx);
        };
        // Asked for data: the body now waits for its source, until it has a
        // frame (or its source wakes it), and then for the server again.
        slot.register(cx.waker());
        slot.state.store(SOURCE, Ordering::Relaxed);
        let polled = Pin::new(&mut this.inner).poll_frame(&mut Context::from_waker(waker));
        if polled.is_ready() {
            slot.state.store(slot.clock.waiting(), Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How often the [`StallWatch`] looks, and so its precision.
const STALL_TICK: Duration = Duration::from_millis(500);

/// Fires when an HTTP/2 response body has waited for the server to poll it
/// (the client takes none of its data: no flow-control window) for longer
/// than the send timeout. hyper does not poll such a body at all, so neither
/// the upstream's idle timeout (in the body) nor the send timeout (on socket
/// writes) nor the idle timeout (the request is in flight) would ever end it.
/// HTTP/1 needs no watch: its body is polled and the socket write blocks.
pub struct StallWatch {
    of: Arc<InFlight>,
    timeout_ms: u64,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Requests have been in flight since this time on the clock.
    active_since: Option<u64>,
}

impl StallWatch {
    /// A watch on `of`; `Duration::ZERO` never fires.
    pub fn new(of: Arc<InFlight>, timeout: Duration) -> Self {
        Self {
            of,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX / 4),
            sleep: None,
            active_since: None,
        }
    }

    /// True when a response has stalled. Costs two atomic loads while no
    /// HTTP/2 request is in flight; otherwise wakes the task every tick.
    pub fn poll_stalled(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timeout_ms == 0
            || !self.of.h2.load(Ordering::Relaxed)
            || self.of.count.load(Ordering::Acquire) == 0
        {
            self.active_since = None;
            return false;
        }
        let clock = &self.of.stalls.clock;
        let since = match self.active_since {
            Some(t) => t,
            None => {
                // The clock may be stale from an earlier busy period: stamps
                // older than now count from now.
                let now = clock.advance();
                self.active_since = Some(now);
                self.arm(cx);
                return false;
            }
        };
        let Some(sleep) = &mut self.sleep else {
            self.arm(cx);
            return false;
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        let now = clock.advance();
        self.arm(cx);
        // Stamps lag the clock by up to a tick.
        let bound = self
            .timeout_ms
            .saturating_add(u64::try_from(STALL_TICK.as_millis()).unwrap_or(0));
        self.of.stalls.table().all.iter().any(|slot| {
            let state = slot.state.load(Ordering::Relaxed);
            state >= WAITING && now.saturating_sub((state - WAITING).max(since)) > bound
        })
    }

    fn arm(&mut self, cx: &mut Context<'_>) {
        let deadline = Instant::now() + STALL_TICK;
        let sleep = match &mut self.sleep {
            Some(s) => {
                s.as_mut().reset(deadline);
                s
            }
            slot => slot.insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        // Registers the waker; a tick never elapses this early.
        let _ = sleep.as_mut().poll(cx);
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
    fn an_ipv6_slash_64_is_one_client_and_mapped_ipv4_is_ipv4() {
        let caps = Arc::new(ConnCaps::default());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _p1 = caps.admit(a, 0, 1).unwrap();
        assert_eq!(caps.admit(b, 0, 1).err(), Some(Refusal::PerIp));
        let _p2 = caps.admit(other, 0, 1).unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let _p3 = caps.admit(v4, 0, 1).unwrap();
        assert_eq!(caps.admit(mapped, 0, 1).err(), Some(Refusal::PerIp));
    }

    /// A body whose source is ready only when `ready` is set.
    struct Source {
        ready: bool,
        waker: Option<Waker>,
    }

    impl Body for Source {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            if self.ready {
                return Poll::Ready(Some(Ok(Frame::data(bytes::Bytes::from_static(b"x")))));
            }
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[test]
    fn a_body_waits_for_the_server_unless_it_waits_for_its_source() {
        let of = Arc::new(InFlight::default());
        let guard = of.enter(true);
        let slot = guard.slot.as_ref().unwrap().1.clone();
        assert_eq!(slot.state.load(Ordering::Relaxed), HEAD);
        let mut body = Tracked::new(
            Source {
                ready: false,
                waker: None,
            },
            guard,
        );
        // Handed to the server: waiting for it.
        assert!(slot.state.load(Ordering::Relaxed) >= WAITING);
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut body).poll_frame(cx).is_pending());
        // Polled, and its source has nothing: not the client's doing.
        assert_eq!(slot.state.load(Ordering::Relaxed), SOURCE);
        // The source has data: waiting for the server again.
        body.inner.waker.take().unwrap().wake();
        assert!(slot.state.load(Ordering::Relaxed) >= WAITING);
        body.inner.ready = true;
        assert!(Pin::new(&mut body).poll_frame(cx).is_ready());
        assert!(slot.state.load(Ordering::Relaxed) >= WAITING);
        drop(body);
        assert_eq!(slot.state.load(Ordering::Relaxed), FREE);
        assert_eq!(of.count.load(Ordering::Relaxed), 0);
        // The slot is reused.
        let again = of.enter(true);
        assert!(Arc::ptr_eq(&again.slot.as_ref().unwrap().1, &slot));
        // HTTP/1 requests get none.
        assert!(of.enter(false).slot.is_none());
    }

    #[test]
    fn the_ip_table_is_bounded() {
        let caps = Arc::new(ConnCaps::default());
        let mut held = Vec::new();
        let mut refused = None;
        for i in 0..=(SHARDS * IPS_PER_SHARD) as u32 {
            match caps.admit(
                IpAddr::from(std::net::Ipv4Addr::from((10u32 << 24) | i)),
                0,
                1,
            ) {
                Ok(p) => held.push(p),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        // Some shard fills first: never before it holds its share.
        assert_eq!(refused, Some(Refusal::IpTableFull));
        assert!(held.len() >= IPS_PER_SHARD, "{}", held.len());
        assert!(held.len() <= SHARDS * IPS_PER_SHARD);
    }
}
