//! The access log: one JSON line per request, formatted and written on its own
//! thread, fed through a bounded queue so the request path never blocks on I/O.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Record;
use crate::config::AccessLogConfig;

/// What the writer thread receives.
enum Msg {
    Line(Box<Record>),
    /// Write out everything queued before this, then answer.
    Flush(SyncSender<()>),
}

/// A handle to the log writer; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Opens the target and starts the writer thread.
    pub fn start(cfg: &AccessLogConfig) -> io::Result<Self> {
        let out: Box<dyn Write + Send> = match cfg.target.as_str() {
            "stdout" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            path => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let capacity = cfg.buffer.max(1);
        let (tx, rx) = sync_channel(capacity);
        std::thread::Builder::new()
            .name("portico-access-log".into())
            .spawn(move || write_loop(rx, BufWriter::with_capacity(64 * 1024, out), capacity))?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Queues a record; drops it (and counts it) when the queue is full.
    pub fn write(&self, record: Record) {
        match self.tx.try_send(Msg::Line(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(1000)
                {
                    tracing::warn!("access log queue full; lines are being dropped");
                }
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Waits (at most `limit`) until every line queued so far is written out;
    /// called at exit so the last requests' lines are not lost.
    pub fn flush(&self, limit: Duration) {
        let (ack_tx, ack_rx) = sync_channel(1);
        let deadline = Instant::now() + limit;
        let mut msg = Msg::Flush(ack_tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = ack_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

/// How long the writer sleeps between two drains of the queue. The writer
/// never blocks on the queue: a sender then never has to wake it (no futex
/// call, no context switch per request), and lines are written in batches.
const TICK: Duration = Duration::from_millis(20);

fn write_loop(rx: Receiver<Msg>, mut out: BufWriter<Box<dyn Write + Send>>, capacity: usize) {
    let mut line = Vec::with_capacity(512);
    let mut failures = 0u64;
    let mut report = |res: io::Result<()>| {
        if let Err(e) = res {
            if failures.is_multiple_of(1000) {
                tracing::error!(error = %e, "cannot write the access log; lines are being lost");
            }
            failures += 1;
        }
    };
    loop {
        let mut drained = 0;
        let open = loop {
            match rx.try_recv() {
                Ok(Msg::Line(record)) => {
                    drained += 1;
                    line.clear();
                    format_line(&record, &mut line);
                    report(out.write_all(&line));
                }
                Ok(Msg::Flush(ack)) => {
                    report(out.flush());
                    let _ = ack.try_send(());
                }
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        if drained > 0 {
            report(out.flush());
        }
        if !open {
            return;
        }
        // A queue that filled by a quarter within one tick is drained again
        // at once, so that a burst does not overflow it.
        if drained < capacity / 4 {
            std::thread::sleep(TICK);
        }
    }
}

/// Formats one record as a JSON line, keys in alphabetical order.
pub fn format_line(r: &Record, out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.push(b'{');
    let field = |out: &mut Vec<u8>, key: &str| {
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
    };
    // Writing into a Vec cannot fail.
    let string = |out: &mut Vec<u8>, s: &str| {
        let _ = serde_json::to_writer(&mut *out, s);
    };
    let null = |out: &mut Vec<u8>| out.extend_from_slice(b"null");
    field(out, "bytes_in");
    let _ = write!(out, "{}", r.bytes_in);
    field(out, "bytes_out");
    let _ = write!(out, "{}", r.bytes_out);
    field(out, "client");
    match r.client {
        Some(c) => {
            let _ = write!(out, "\"{}\"", c.ip());
        }
        None => null(out),
    }
    field(out, "consumer");
    match &r.consumer {
        Some(c) => string(out, c),
        None => null(out),
    }
    field(out, "duration_ms");
    write_millis(out, r.duration);
    if let Some(e) = &r.error {
        field(out, "error");
        string(out, e);
    }
    field(out, "host");
    string(out, &r.host);
    field(out, "method");
    string(out, &r.method);
    field(out, "path");
    string(out, &r.path);
    field(out, "request_id");
    string(out, &r.request_id);
    field(out, "route");
    match &r.route {
        Some(route) => string(out, route),
        None => null(out),
    }
    field(out, "span_id");
    match r.trace {
        Some(t) => {
            let _ = write!(out, "\"{}\"", t.span_id);
        }
        None => null(out),
    }
    field(out, "status");
    let _ = write!(out, "{}", r.status);
    field(out, "time");
    let _ = write!(
        out,
        "\"{}\"",
        rfc3339(r.time.unwrap_or_else(SystemTime::now))
    );
    field(out, "trace_id");
    match r.trace {
        Some(t) => {
            let _ = write!(out, "\"{}\"", t.trace_id);
        }
        None => null(out),
    }
    field(out, "upstream");
    match r.upstream {
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => null(out),
    }
    field(out, "upstream_duration_ms");
    match r.upstream_duration {
        Some(d) => write_millis(out, d),
        None => null(out),
    }
    out.extend_from_slice(b"}\n");
}

/// Milliseconds with microsecond precision, as a JSON number.
fn write_millis(out: &mut Vec<u8>, d: Duration) {
    use std::io::Write as _;
    let micros = d.as_micros();
    let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
}

/// Formats a time as RFC 3339 in UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, mo, da) = civil_from_days(days as i64);
    format!(
        "{y:04}-{mo:02}-{da:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn line_is_one_json_object() {
        let r = Record {
            request_id: "abc".into(),
            method: "GET".into(),
            path: "/x?y=1".into(),
            status: 200,
            bytes_out: 5,
            ..Record::default()
        };
        let mut out = Vec::new();
        format_line(&r, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/x?y=1");
        assert_eq!(v["bytes_out"], 5);
        assert_eq!(v["trace_id"], Value::Null);
    }

    #[test]
    fn every_field_is_written_as_valid_json() {
        let r = Record {
            time: Some(UNIX_EPOCH + Duration::from_millis(1_795_000_000_123)),
            request_id: "id\"1".into(),
            client: Some("[::1]:5000".parse().unwrap()),
            method: "GET".into(),
            host: "h\u{7f}\\".into(),
            path: "/a\nb".into(),
            status: 502,
            route: Some("r".into()),
            consumer: Some("app\"1".into()),
            upstream: Some("10.0.0.1:80".parse().unwrap()),
            upstream_duration: Some(Duration::from_micros(1_234_567)),
            bytes_in: 7,
            bytes_out: 9,
            duration: Duration::from_micros(5),
            error: Some("upstream-failed: \"x\"".into()),
            trace: None,
        };
        let mut out = Vec::new();
        format_line(&r, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "bytes_in": 7, "bytes_out": 9, "client": "::1", "consumer": "app\"1",
                "duration_ms": 0.005,
                "error": "upstream-failed: \"x\"", "host": "h\u{7f}\\", "method": "GET",
                "path": "/a\nb", "request_id": "id\"1", "route": "r", "span_id": null,
                "status": 502, "time": "2026-11-18T11:06:40.123Z", "trace_id": null,
                "upstream": "10.0.0.1:80", "upstream_duration_ms": 1234.567,
            })
        );
        // Keys come in alphabetical order, as documented in examples.
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("{\"bytes_in\":7,\"bytes_out\":9,\"client\":\"::1\""),
            "{text}"
        );
    }

    #[test]
    fn line_carries_the_trace_ids() {
        use crate::observe::trace::{SpanContext, SpanId, TraceId};
        let r = Record {
            trace: Some(SpanContext {
                trace_id: TraceId([0x0a; 16]),
                span_id: SpanId([0xb0; 8]),
                parent_id: None,
                sampled: false,
            }),
            ..Record::default()
        };
        let mut out = Vec::new();
        format_line(&r, &mut out);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["trace_id"], "0a".repeat(16));
        assert_eq!(v["span_id"], "b0".repeat(8));
    }
}
