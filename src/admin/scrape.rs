//! What a metrics scrape reads at that moment rather than counts as it goes:
//! the loaded config's hash, the process's memory, and the upstreams' own
//! counters and gauges (which live in the snapshot, see `upstream/state.rs`).

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::TypedMetric;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::atomic::Ordering::Relaxed;

use crate::gateway::Gateway;
use crate::upstream::Upstream;
use crate::upstream::state::Cap;

/// The snapshot-derived metrics of one scrape.
pub struct Scrape {
    gw: Arc<Gateway>,
}

impl Scrape {
    /// Reads from `gw`, the snapshot current when the scrape arrived.
    pub fn new(gw: Arc<Gateway>) -> Self {
        Self { gw }
    }
}

impl fmt::Debug for Scrape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scrape").finish_non_exhaustive()
    }
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let gw = &*self.gw;
        family(
            &mut enc,
            "config_hash",
            "Hash of the loaded config (of what GET /config shows), as a 53-bit integer",
            [(NoLabels, ConstGauge::new(config_hash(gw) as i64))],
        )?;
        if let Some(memory) = Memory::read() {
            family(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident memory size",
                [(NoLabels, ConstGauge::new(memory.resident))],
            )?;
            family(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size",
                [(NoLabels, ConstGauge::new(memory.virtual_))],
            )?;
        }
        if gw.upstreams.is_empty() {
            return Ok(());
        }

        let upstreams = || {
            gw.upstreams
                .iter()
                .map(|(n, u)| ([("upstream", n.as_str())], u))
        };
        family(
            &mut enc,
            "upstream_request_duration_seconds",
            "Time from sending a request upstream until its response head, by upstream",
            upstreams().map(|(l, u)| (l, &u.stats.request_duration)),
        )?;
        family(
            &mut enc,
            "upstream_connect_duration_seconds",
            "Time to open a connection to an upstream endpoint, by upstream",
            upstreams().map(|(l, u)| (l, &u.stats.connect_duration)),
        )?;
        for (name, help, read) in UPSTREAM_GAUGES {
            family(
                &mut enc,
                name,
                help,
                upstreams().map(|(l, u)| (l, ConstGauge::new(read(u)))),
            )?;
        }
        for (name, help, read) in UPSTREAM_COUNTERS {
            family(
                &mut enc,
                name,
                help,
                upstreams().map(|(l, u)| (l, ConstCounter::new(read(u)))),
            )?;
        }
        family(
            &mut enc,
            "upstream_circuit_breaker_rejections",
            "Requests refused by a circuit breaker, by upstream and cap",
            upstreams().flat_map(|([l], u)| {
                Cap::ALL.map(|cap| {
                    let n = u.stats.rejected[cap as usize].load(Relaxed);
                    ([l, ("cap", cap.key())], ConstCounter::new(n))
                })
            }),
        )?;

        let endpoints = || {
            upstreams().flat_map(|([l], u)| {
                u.endpoints
                    .iter()
                    .zip(u.states.iter())
                    .map(move |(e, s)| ([l, ("endpoint", &*e.address)], s))
            })
        };
        family(
            &mut enc,
            "upstream_endpoint_healthy",
            "1 when active health checks pass for the endpoint (or there are none)",
            endpoints().map(|(l, s)| (l, ConstGauge::new(i64::from(s.is_healthy())))),
        )?;
        family(
            &mut enc,
            "upstream_endpoint_ejected",
            "1 while outlier detection has the endpoint ejected",
            endpoints().map(|(l, s)| (l, ConstGauge::new(i64::from(s.ejected_until().is_some())))),
        )?;
        family(
            &mut enc,
            "upstream_endpoint_active_requests",
            "Requests to the endpoint in flight now",
            endpoints().map(|(l, s)| (l, ConstGauge::new(i64::from(s.inflight())))),
        )
    }
}

/// Reads one value of an upstream.
type Read = fn(&Upstream) -> u64;

/// Gauges per upstream: name, help, and how to read the value.
const UPSTREAM_GAUGES: [(&str, &str, Read); 6] = [
    (
        "upstream_connections",
        "Connections open to the upstream now, idle ones included",
        |u| u.stats.connections.load(Relaxed).into(),
    ),
    (
        "upstream_idle_connections",
        "Idle connections kept in the upstream's pools now",
        |u| u.idle_connections() as u64,
    ),
    (
        "upstream_active_requests",
        "Requests to the upstream in flight now, retries included",
        |u| u.requests_in_flight().into(),
    ),
    (
        "upstream_pending_requests",
        "Requests waiting for a connection to the upstream now",
        |u| u.stats.pending.load(Relaxed).into(),
    ),
    (
        "upstream_active_retries",
        "Retries to the upstream in flight now",
        |u| u.stats.retries_active.load(Relaxed).into(),
    ),
    (
        "upstream_endpoints_available",
        "Endpoints of the upstream that are healthy and not ejected",
        |u| u.states.iter().filter(|s| s.is_available()).count() as u64,
    ),
];

/// Counters per upstream: name, help, and how to read the value.
const UPSTREAM_COUNTERS: [(&str, &str, Read); 6] = [
    (
        "upstream_connections_opened",
        "Connections opened to the upstream",
        |u| u.stats.connections_opened.load(Relaxed),
    ),
    (
        "upstream_connections_reused",
        "Requests sent over a pooled connection rather than a new one",
        |u| u.stats.connections_reused.load(Relaxed),
    ),
    ("upstream_retries", "Retries made to the upstream", |u| {
        u.stats.retries.load(Relaxed)
    }),
    (
        "upstream_retries_over_budget",
        "Retries not made because the retry budget was spent",
        |u| u.stats.retries_over_budget.load(Relaxed),
    ),
    (
        "upstream_ejections",
        "Endpoints ejected by outlier detection",
        |u| u.stats.ejections.load(Relaxed),
    ),
    (
        "upstream_health_transitions",
        "Active health check verdicts that changed, either way",
        |u| u.stats.health_transitions.load(Relaxed),
    ),
];

/// Writes one metric family: its descriptor, then each series.
fn family<S: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, M)>,
) -> fmt::Result {
    let help = format!("{help}.");
    let mut family = enc.encode_descriptor(name, &help, None, M::TYPE)?;
    for (labels, metric) in series {
        metric.encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The label set of a family without labels.
struct NoLabels;

impl EncodeLabelSet for NoLabels {
    fn encode(&self, _: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        Ok(())
    }
}

/// FNV-1a over the redacted config's JSON, cut to 53 bits so that the gauge's
/// float64 holds it exactly. The redacted config, so that no secret is
/// hashed where a guess could be checked against it; a changed secret alone
/// therefore leaves the hash as it was.
fn config_hash(gw: &Gateway) -> u64 {
    let json = super::views::config(&gw.config).to_string();
    let hash = json.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    hash & ((1 << 53) - 1)
}

/// The process's memory, from `/proc/self/status` (in kB there, so no page
/// size is needed). `None` off Linux.
struct Memory {
    resident: u64,
    virtual_: u64,
}

impl Memory {
    fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let bytes = |field: &str| -> Option<u64> {
            let value = status.lines().find_map(|l| l.strip_prefix(field))?;
            let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some(kib * 1024)
        };
        Some(Self {
            resident: bytes("VmRSS:")?,
            virtual_: bytes("VmSize:")?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_proc() {
        let m = Memory::read().unwrap();
        assert!(m.resident > 0 && m.virtual_ >= m.resident);
    }
}
