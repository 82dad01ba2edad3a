//! Listening sockets: one `SO_REUSEPORT` socket per worker on the same port, so
//! the kernel spreads connections across workers with no hand-off.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `workers` sockets on `addr`. A port of 0 is resolved by the first
/// bind and reused by the others.
///
/// With `exclusive`, a non-zero port is first checked with a socket bound
/// *without* `SO_REUSEPORT`: `SO_REUSEPORT` would otherwise let this process
/// silently share a port another process (of the same user) listens on. The
/// check is skipped only where this process itself already listens on an
/// overlapping address (a listener renamed or moved by a reload).
pub fn bind_reuseport(
    addr: SocketAddr,
    workers: usize,
    exclusive: bool,
) -> io::Result<Vec<std::net::TcpListener>> {
    if exclusive && addr.port() != 0 {
        probe(addr)?;
    }
    let mut out = Vec::with_capacity(workers);
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        addr = listener.local_addr()?;
        out.push(listener);
    }
    Ok(out)
}

/// Binds (and at once closes) a socket on `addr` without `SO_REUSEPORT`; fails
/// with `AddrInUse` when anything listens there. `SO_REUSEADDR` is set so that
/// connections left in TIME_WAIT by a previous process do not count.
fn probe(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    match socket.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address already in use (another process listens on it)",
        )),
        other => other,
    }
}

/// Whether a socket bound on `a` and one bound on `b` would conflict: the same
/// family and port, and the same IP or either one unspecified.
pub fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_port_held_elsewhere_with_reuseport_is_refused() {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let held = bind_reuseport(addr, 2, true).unwrap();
        let e = bind_reuseport(addr, 2, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains("address already in use"), "{e}");
        // Without the check, SO_REUSEPORT shares the port.
        assert_eq!(bind_reuseport(addr, 1, false).unwrap().len(), 1);
        drop(held);
        assert_eq!(bind_reuseport(addr, 2, true).unwrap().len(), 2);
    }

    #[test]
    fn port_zero_is_not_probed() {
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        let socks = bind_reuseport(addr, 3, true).unwrap();
        let port = socks[0].local_addr().unwrap().port();
        assert_ne!(port, 0);
        assert!(socks.iter().all(|s| s.local_addr().unwrap().port() == port));
    }

    #[test]
    fn overlapping_addresses() {
        let p = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(p("127.0.0.1:80"), p("127.0.0.1:80")));
        assert!(overlaps(p("0.0.0.0:80"), p("127.0.0.1:80")));
        assert!(!overlaps(p("127.0.0.1:80"), p("127.0.0.2:80")));
        assert!(!overlaps(p("127.0.0.1:80"), p("127.0.0.1:81")));
        assert!(!overlaps(p("0.0.0.0:80"), p("[::]:80")));
    }
}
