//! Raw-TCP helpers: a client that writes exact bytes and reads the reply, an
//! upstream that records the exact bytes it receives and answers, stalls,
//! closes or resets on cue.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Bound on every raw read or exchange.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Client

/// A response read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code of the final (non-1xx) response.
    pub status: u16,
    /// Interim (1xx) status codes seen before it.
    pub interim: Vec<u16>,
    /// Header lines, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Body bytes (de-chunked).
    pub body: Vec<u8>,
    /// False when the connection ended before the framing said the body ends.
    pub complete: bool,
}

impl RawResponse {
    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Every value of header `name` (lowercase) among `headers`, in order.
pub fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Reads until `buf` holds `\r\n\r\n`; returns the head length, or None at EOF.
async fn fill_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<usize>> {
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            return Ok(Some(i + 4));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads more bytes into `buf`; false at EOF or on error.
pub async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Takes one message head, through its empty line, off `buf`, reading more
/// from `stream` as needed; `None` at EOF.
pub async fn take_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !read_more(stream, buf).await {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Some(head)
}

/// The header lines of a head, names lowercased, in order.
pub fn parse_headers(head: &str) -> Vec<(String, String)> {
    head.split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

/// Reads one response from `stream` (10 s bound). `head_request`: the request
/// was HEAD, so no body follows. `Err` when the connection ends (or fails)
/// before a complete response head.
pub async fn read_response(
    stream: &mut TcpStream,
    head_request: bool,
) -> Result<RawResponse, String> {
    timeout(RAW_TIMEOUT, read_response_inner(stream, head_request))
        .await
        .map_err(|_| "timed out reading a response".to_string())?
}

async fn read_response_inner(
    stream: &mut TcpStream,
    head_request: bool,
) -> Result<RawResponse, String> {
    let mut buf = Vec::new();
    let mut interim = Vec::new();
    loop {
        let Some(head_len) = fill_head(stream, &mut buf)
            .await
            .map_err(|e| format!("reading the head: {e}"))?
        else {
            return Err(format!(
                "connection closed before a response head ({} bytes: {:?})",
                buf.len(),
                String::from_utf8_lossy(&buf)
            ));
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        buf.drain(..head_len);
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {head:?}"))?;
        if (100..200).contains(&status) && status != 101 {
            interim.push(status);
            continue;
        }
        let headers = parse_headers(&head);
        let mut resp = RawResponse {
            status,
            interim,
            headers,
            body: Vec::new(),
            complete: true,
        };
        if head_request || status == 204 || status == 304 || status == 101 {
            // Anything already read past the head would be a (wrong) body.
            resp.body = buf;
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = resp
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        if chunked {
            resp.complete = read_chunked(stream, &mut buf, &mut resp.body).await;
        } else if let Some(n) = length {
            while buf.len() < n {
                if !read_more(stream, &mut buf).await {
                    resp.complete = false;
                    break;
                }
            }
            buf.truncate(n);
            resp.body = buf;
        } else {
            while read_more(stream, &mut buf).await {}
            resp.body = buf;
        }
        return Ok(resp);
    }
}

/// Decodes a chunked body; false when the stream ended early or was malformed.
async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if !read_more(stream, buf).await {
                return false;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return false;
        };
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                if let Some(i) = find(buf, b"\r\n") {
                    let empty = i == 0;
                    buf.drain(..i + 2);
                    if empty {
                        return true;
                    }
                    continue;
                }
                if !read_more(stream, buf).await {
                    return false;
                }
            }
        }
        while buf.len() < size + 2 {
            if !read_more(stream, buf).await {
                out.extend_from_slice(&buf[..buf.len().min(size)]);
                return false;
            }
        }
        out.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// Connects to `addr` (10 s bound).
pub async fn connect(addr: SocketAddr) -> TcpStream {
    timeout(RAW_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// Writes `bytes` on a new connection and reads one response.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Result<RawResponse, String> {
    let mut s = connect(addr).await;
    s.write_all(bytes).await.map_err(|e| e.to_string())?;
    let head = bytes.starts_with(b"HEAD ");
    read_response(&mut s, head).await
}

/// Reads until EOF (or error), at most `limit` long; returns what was read and
/// whether EOF was reached.
pub async fn read_to_end(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut buf = Vec::new();
    let eof = timeout(limit, async {
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .is_ok();
    (buf, eof)
}

// ---------------------------------------------------------------------------
// Upstream

/// What a raw upstream does after reading each complete request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Writes these bytes and waits for the next request (keep-alive).
    Respond(Vec<u8>),
    /// Waits, then writes these bytes and waits for the next request.
    Delay(Duration, Vec<u8>),
    /// Never answers; keeps reading (and recording) until the peer closes.
    Stall,
    /// Waits until [`RawUpstream::release`], then writes these bytes.
    Hold(Vec<u8>),
    /// Writes these bytes, then closes the connection.
    WriteAndClose(Vec<u8>),
    /// Resets the connection (RST) without answering.
    Reset,
}

/// A TCP upstream speaking just enough HTTP/1.1 to frame requests.
pub struct RawUpstream {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    bytes: Arc<Mutex<Vec<u8>>>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
    /// Complete request heads read so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    /// Every byte received, on all connections, in arrival order.
    pub fn received(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }
    /// The received bytes as text.
    pub fn received_text(&self) -> String {
        String::from_utf8_lossy(&self.received()).into_owned()
    }
    /// Lets [`Action::Hold`] connections answer.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }
    /// Waits (bounded) until at least `n` requests have arrived.
    pub async fn wait_requests(&self, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            if self.requests() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.requests() >= n
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every connection.
        self.task.abort();
    }
}

/// `HTTP/1.1 200 OK` with `body` and a Content-Length.
pub fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Starts a raw upstream on 127.0.0.1:0.
pub async fn upstream(action: Action) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let (release, release_rx) = watch::channel(false);
    let (acc, reqs, rec) = (accepted.clone(), requests.clone(), bytes.clone());
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            acc.fetch_add(1, Ordering::SeqCst);
            conns.spawn(serve_raw(
                stream,
                action.clone(),
                reqs.clone(),
                rec.clone(),
                release_rx.clone(),
            ));
            // Reap finished connections so the set does not grow without bound.
            while conns.try_join_next().is_some() {}
        }
    });
    RawUpstream {
        addr,
        accepted,
        requests,
        bytes,
        release,
        task,
    }
}

/// Reads from `stream`, recording every byte; false at EOF or on error.
async fn recv(stream: &mut TcpStream, buf: &mut Vec<u8>, rec: &Mutex<Vec<u8>>) -> bool {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            rec.lock().unwrap().extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Reads one request (head and a Content-Length or chunked body) out of `buf`
/// and the stream; false when the connection ended first.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, rec: &Mutex<Vec<u8>>) -> bool {
    let head_len = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !recv(stream, buf, rec).await {
            return false;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
    buf.drain(..head_len);
    let headers = parse_headers(&head);
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            if let Some(i) = find(buf, b"0\r\n\r\n")
                && (i == 0 || buf[i - 1] == b'\n')
            {
                buf.drain(..i + 5);
                return true;
            }
            if !recv(stream, buf, rec).await {
                return false;
            }
        }
    }
    let len = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < len {
        if !recv(stream, buf, rec).await {
            return false;
        }
    }
    buf.drain(..len);
    true
}

async fn serve_raw(
    mut stream: TcpStream,
    action: Action,
    requests: Arc<AtomicUsize>,
    rec: Arc<Mutex<Vec<u8>>>,
    mut release: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    loop {
        if !read_request(&mut stream, &mut buf, &rec).await {
            return;
        }
        requests.fetch_add(1, Ordering::SeqCst);
        match &action {
            Action::Respond(bytes) => {
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Action::Delay(d, bytes) => {
                tokio::time::sleep(*d).await;
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Action::Stall => {
                while recv(&mut stream, &mut buf, &rec).await {}
                return;
            }
            Action::Hold(bytes) => {
                let _ = release.wait_for(|r| *r).await;
                if stream.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Action::WriteAndClose(bytes) => {
                let _ = stream.write_all(bytes).await;
                let _ = stream.shutdown().await;
                return;
            }
            Action::Reset => {
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                return;
            }
        }
    }
}
