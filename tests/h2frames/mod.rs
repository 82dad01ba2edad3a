//! Hand-written HTTP/2 frames over TCP, for tests that must send what no
//! well-behaved client library would (floods, resets, CONTINUATION chains).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

pub const ENHANCE_YOUR_CALM: u32 = 0xb;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;

/// Appends one frame to `out`.
pub fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A literal header field without indexing, no Huffman (RFC 7541 §6.2.2).
pub fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0x00);
    string(out, name.as_bytes());
    string(out, value.as_bytes());
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    // 7-bit prefix integer (RFC 7541 §5.1), H bit clear.
    if s.len() < 127 {
        out.push(s.len() as u8);
    } else {
        out.push(127);
        let mut rest = s.len() - 127;
        while rest >= 128 {
            out.push((rest % 128 + 128) as u8);
            rest /= 128;
        }
        out.push(rest as u8);
    }
    out.extend_from_slice(s);
}

/// The header block of `GET {path}` on `host`.
pub fn get_block(host: &str, path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", "GET");
    literal(&mut b, ":scheme", "http");
    literal(&mut b, ":authority", host);
    literal(&mut b, ":path", path);
    b
}

/// Connects and sends the client preface, an empty SETTINGS and an ACK of
/// the server's SETTINGS (sent by the server first, so it waits for one).
pub async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    frame(&mut out, SETTINGS, ACK, 0, &[]);
    s.write_all(&out).await.unwrap();
    s
}

/// One frame read off the wire.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// A GOAWAY's error code.
    pub fn goaway_code(&self) -> Option<u32> {
        (self.kind == GOAWAY && self.payload.len() >= 8)
            .then(|| u32::from_be_bytes(self.payload[4..8].try_into().unwrap()))
    }

    /// A SETTINGS frame's parameters.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

/// Reads the next frame; `None` at EOF, on error or after `limit`.
pub async fn read_frame(s: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Option<Frame> {
    tokio::time::timeout(limit, async {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes(head[5..9].try_into().unwrap()) & 0x7fff_ffff,
            payload,
        })
    })
    .await
    .ok()
    .flatten()
}

/// How a connection's read side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The server sent GOAWAY with this code (and then closed or not).
    GoAway(u32),
    /// EOF or a reset without a GOAWAY.
    Closed,
    /// Still open after the time limit.
    Open,
}

/// Reads and discards frames until a GOAWAY, EOF or `limit`.
pub async fn wait_end(s: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Ended {
    wait_end_at(s, limit).await.0
}

/// [`wait_end`], with a GOAWAY's last stream id: the highest stream the
/// server says it processed.
pub async fn wait_end_at(
    s: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> (Ended, Option<u32>) {
    let mut last = None;
    let ended = wait_end_inner(s, limit, &mut last).await;
    (ended, last)
}

async fn wait_end_inner(
    s: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
    last: &mut Option<u32>,
) -> Ended {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Ended::Open;
        }
        let mut head = [0u8; 9];
        match tokio::time::timeout(left, s.read_exact(&mut head)).await {
            Err(_) => return Ended::Open,
            Ok(Err(_)) => return Ended::Closed,
            Ok(Ok(_)) => {}
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        match tokio::time::timeout(left, s.read_exact(&mut payload)).await {
            Err(_) => return Ended::Open,
            Ok(Err(_)) => return Ended::Closed,
            Ok(Ok(_)) => {}
        }
        if head[3] == GOAWAY && len >= 8 {
            *last = Some(u32::from_be_bytes(payload[0..4].try_into().unwrap()) & 0x7fff_ffff);
            return Ended::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
        }
    }
}
