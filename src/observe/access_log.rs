//! The access log: one JSON line per request, formatted and written on its own
//! thread, fed through a bounded queue so the request path never blocks on I/O.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

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
        let (tx, rx) = sync_channel(cfg.buffer.max(1));
        std::thread::Builder::new()
            .name("portico-access-log".into())
            .spawn(move || write_loop(rx, BufWriter::with_capacity(64 * 1024, out)))?;
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

fn write_loop(rx: Receiver<Msg>, mut out: BufWriter<Box<dyn Write + Send>>) {
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
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(record) => {
                    line.clear();
                    format_line(&record, &mut line);
                    report(out.write_all(&line));
                }
                Msg::Flush(ack) => {
                    report(out.flush());
                    let _ = ack.try_send(());
                }
            }
            next = rx.try_recv().ok();
        }
        report(out.flush());
    }
}

/// Formats one record as a JSON line.
pub fn format_line(r: &Record, out: &mut Vec<u8>) {
    let mut m = Map::new();
    m.insert(
        "time".into(),
        Value::String(rfc3339(r.time.unwrap_or_else(SystemTime::now))),
    );
    m.insert("request_id".into(), r.request_id.clone().into());
    m.insert(
        "trace_id".into(),
        r.trace.map(|t| t.trace_id.to_string()).into(),
    );
    m.insert(
        "span_id".into(),
        r.trace.map(|t| t.span_id.to_string()).into(),
    );
    m.insert("client".into(), r.client.map(|c| c.ip().to_string()).into());
    m.insert("method".into(), r.method.clone().into());
    m.insert("host".into(), r.host.clone().into());
    m.insert("path".into(), r.path.clone().into());
    m.insert("status".into(), r.status.into());
    m.insert("bytes_in".into(), r.bytes_in.into());
    m.insert("bytes_out".into(), r.bytes_out.into());
    m.insert("duration_ms".into(), millis(r.duration).into());
    m.insert("route".into(), r.route.as_deref().into());
    m.insert("upstream".into(), r.upstream.map(|a| a.to_string()).into());
    m.insert(
        "upstream_duration_ms".into(),
        r.upstream_duration.map(millis).into(),
    );
    if let Some(e) = &r.error {
        m.insert("error".into(), e.clone().into());
    }
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &Value::Object(m));
    out.push(b'\n');
}

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
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
    use std::time::Duration;

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
