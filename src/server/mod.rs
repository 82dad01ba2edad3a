//! The server: worker runtimes, listeners, reload and graceful shutdown.
//!
//! N workers each run a single-threaded tokio runtime with their own
//! `SO_REUSEPORT` socket per listener and their own upstream pools. Reload,
//! DNS refresh, pool sweeps and signals run on the main thread's runtime.

pub mod conn;
pub mod h1;
pub mod h1_guard;
pub mod limits;
pub mod listener;
pub mod reload;
pub mod send_timeout;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{Mutex, watch};

use crate::config::{self, Config};
use crate::gateway::{self, Gateway};

/// State shared by the workers and the control runtime.
pub struct Shared {
    /// The current snapshot; each request loads it once.
    pub current: ArcSwap<Gateway>,
    /// Open client connections.
    pub active: Arc<AtomicUsize>,
    /// The config file.
    pub config_path: PathBuf,
    workers: Vec<Handle>,
    listeners: Mutex<HashMap<(Arc<str>, SocketAddr), RunningListener>>,
    /// Held for a whole reload, so that reloads from SIGHUP, the file watcher
    /// and the admin API run one after the other, each compiled against the
    /// snapshot the previous one installed.
    reloading: Mutex<()>,
    /// Set (under the `listeners` lock) when shutdown starts: a reload then
    /// binds nothing new.
    stopping: AtomicBool,
}

struct RunningListener {
    bound: SocketAddr,
    drain: watch::Sender<bool>,
}

impl Shared {
    /// Whether the gateway takes traffic: at least one listener accepts and
    /// shutdown has not started.
    pub async fn is_ready(&self) -> bool {
        let running = self.listeners.lock().await;
        !running.is_empty() && !self.stopping.load(Ordering::Relaxed)
    }
}

/// The number of workers to run.
pub fn worker_count(cfg: &Config) -> usize {
    cfg.workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
}

/// Runs the gateway until SIGTERM or SIGINT; returns the process exit code.
pub fn run(path: PathBuf, cfg: Config) -> i32 {
    let file = path.display().to_string();
    let workers = worker_count(&cfg);
    let gw = match gateway::compile(cfg, &file, workers, None) {
        Ok(gw) => gw,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let control = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the control runtime");
            return 1;
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut handles = Vec::with_capacity(workers);
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let (htx, hrx) = std::sync::mpsc::channel();
        let mut stop = stop_rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("portico-worker-{i}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start a worker runtime");
                        return;
                    }
                };
                if htx.send(rt.handle().clone()).is_err() {
                    return;
                }
                rt.block_on(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
                rt.shutdown_timeout(Duration::from_millis(100));
            });
        match spawned.ok().and_then(|t| hrx.recv().ok().map(|h| (t, h))) {
            Some((t, h)) => {
                threads.push(t);
                handles.push(h);
            }
            None => {
                tracing::error!("cannot start worker {i}");
                return 1;
            }
        }
    }
    let shared = Arc::new(Shared {
        current: ArcSwap::from_pointee(gw),
        active: Arc::new(AtomicUsize::new(0)),
        config_path: path,
        workers: handles,
        listeners: Mutex::new(HashMap::new()),
        reloading: Mutex::new(()),
        stopping: AtomicBool::new(false),
    });
    let code = control.block_on(async {
        // Registered before the listeners open, and kept for the life of the
        // process, so that a second signal during the drain is seen.
        let mut signals = StopSignals::new();
        if let Err(e) = crate::admin::start(&shared).await {
            tracing::error!("{e}");
            return 1;
        }
        let gw = shared.current.load_full();
        if let Err(e) = apply_listeners(&shared, gw).await {
            tracing::error!("{e}");
            return 1;
        }
        let reloads = reload::watch(shared.clone());
        tracing::info!(workers, "portico started");
        tokio::spawn(reloads);
        tokio::spawn(crate::tls::watch(shared.clone()));
        #[cfg(feature = "acme")]
        tokio::spawn(crate::acme::run(shared.clone()));
        tokio::spawn(maintain(shared.clone()));
        let snapshot = shared.clone();
        tokio::spawn(crate::upstream::health::supervise(move || {
            snapshot.current.load_full()
        }));
        let snapshot = shared.clone();
        tokio::spawn(crate::auth::supervise(move || snapshot.current.load_full()));
        let snapshot = shared.clone();
        tokio::spawn(crate::ratelimit::supervise(move || {
            snapshot.current.load_full()
        }));
        signals.recv().await;
        tokio::select! {
            () = drain(&shared) => 0,
            signal = signals.recv() => {
                tracing::warn!(
                    signal,
                    connections = shared.active.load(Ordering::Relaxed),
                    "second stop signal; closing every connection now"
                );
                1
            }
        }
    });
    let _ = stop_tx.send(true);
    for t in threads {
        let _ = t.join();
    }
    control.shutdown_timeout(Duration::from_millis(100));
    if let Some(log) = &shared.current.load().access_log {
        log.flush(Duration::from_secs(2));
    }
    if let Some(spans) = &shared.current.load().spans {
        spans.flush(Duration::from_secs(2));
    }
    code
}

/// Makes `gw` the current snapshot and the server's listeners match it:
///
/// 1. binds the listeners that `gw` has and the server does not (an error
///    leaves everything unchanged: no snapshot swap, no listener added or
///    removed);
/// 2. stops the listeners `gw` no longer has (they drain);
/// 3. stores `gw`;
/// 4. starts accepting on the new listeners.
///
/// New sockets queue connections from step 1 but accept none before step 4,
/// so every connection on a new listener is routed by a snapshot that has it.
pub async fn apply_listeners(shared: &Arc<Shared>, gw: Arc<Gateway>) -> Result<(), String> {
    let mut running = shared.listeners.lock().await;
    if shared.stopping.load(Ordering::Relaxed) {
        return Err("shutting down: the new config is not applied".into());
    }
    let mut started = Vec::new();
    for l in gw.listeners.iter() {
        let key = (l.name.clone(), l.address);
        if running.contains_key(&key) {
            continue;
        }
        // Where this process already listens on an overlapping address (a
        // renamed or moved listener), the exclusivity check would find itself.
        let exclusive = !running
            .values()
            .map(|r| r.bound)
            .chain(started.iter().map(|(_, bound, _)| *bound))
            .any(|b| listener::overlaps(b, l.address));
        let sockets = listener::bind_reuseport(l.address, shared.workers.len(), exclusive)
            .map_err(|e| {
                format!(
                    "cannot listen on {} (listener `{}`): {e}",
                    l.address, l.name
                )
            })?;
        let bound = sockets
            .first()
            .and_then(|s| s.local_addr().ok())
            .unwrap_or(l.address);
        started.push((key, bound, sockets));
    }
    running.retain(|key, l| {
        let keep = gw
            .listeners
            .iter()
            .any(|n| n.name == key.0 && n.address == key.1);
        if !keep {
            tracing::info!(listener = %key.0, address = %l.bound, "listener removed; draining");
            let _ = l.drain.send(true);
        }
        keep
    });
    shared.current.store(gw);
    for (key, bound, sockets) in started {
        let (drain_tx, drain_rx) = watch::channel(false);
        // One set of counts for all the listener's workers: the caps are per listener.
        let caps = Arc::new(limits::ConnCaps::default());
        for (worker, (socket, handle)) in sockets.into_iter().zip(&shared.workers).enumerate() {
            let shared = shared.clone();
            let name = key.0.clone();
            let drain = drain_rx.clone();
            let caps = caps.clone();
            handle.spawn(async move {
                match TcpListener::from_std(socket) {
                    Ok(l) => accept_loop(l, name, worker, shared, drain, caps).await,
                    Err(e) => tracing::error!(error = %e, "cannot register listener"),
                }
            });
        }
        tracing::info!(listener = %key.0, address = %bound, "listening");
        running.insert(
            key,
            RunningListener {
                bound,
                drain: drain_tx,
            },
        );
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    worker: usize,
    shared: Arc<Shared>,
    mut drain: watch::Receiver<bool>,
    caps: Arc<limits::ConnCaps>,
) {
    let conn_drain = drain.clone();
    // Looked up once: the metric families outlive snapshots.
    let metrics = shared.current.load().metrics.clone();
    let connections = metrics.listener_connections(&name);
    let refused = limits::Refusal::ALL.map(|r| (r, metrics.listener_refused(&name, r.label())));
    drop(metrics);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // The caps follow reloads: read from the current snapshot.
                    let (max_total, max_per_ip) = shared
                        .current
                        .load()
                        .config
                        .listeners
                        .iter()
                        .find(|l| l.name.value.as_str() == &*name)
                        .map_or((0, 0), |l| (l.max_connections, l.max_connections_per_ip));
                    let permit = match caps.admit(peer.ip(), max_total, max_per_ip) {
                        Ok(permit) => permit,
                        Err(reason) => {
                            // Closed at once, unanswered: an answer would cost
                            // what the cap is there to save.
                            tracing::debug!(listener = %name, %peer, reason = reason.label(), "connection refused");
                            if let Some((_, c)) = refused.iter().find(|(r, _)| *r == reason) {
                                c.inc();
                            }
                            drop(stream);
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let place = conn::Place {
                        peer,
                        listener: name.clone(),
                        worker,
                        // Held while the connection is served, and by a
                        // WebSocket tunnel it turns into.
                        slots: Arc::new(conn::Slots::new(permit, connections.clone())),
                    };
                    tokio::spawn(conn::serve(stream, place, shared.clone(), conn_drain.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = drained(&mut drain) => return,
        }
    }
}

/// Stops accepting, closes connections gracefully, and waits for requests in
/// flight up to the configured deadline.
async fn drain(shared: &Arc<Shared>) {
    let deadline = shared.current.load().config.shutdown_timeout.0;
    tracing::info!(timeout = ?deadline, "shutting down: draining connections");
    let running = shared.listeners.lock().await;
    shared.stopping.store(true, Ordering::Relaxed);
    for l in running.values() {
        let _ = l.drain.send(true);
    }
    drop(running);
    let until = tokio::time::Instant::now() + deadline;
    while shared.active.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = shared.active.load(Ordering::Relaxed);
    if left > 0 {
        tracing::warn!(
            connections = left,
            "shutdown deadline reached; closing the rest"
        );
    } else {
        tracing::info!("all connections drained");
    }
}

/// SIGTERM and SIGINT, kept registered so that each one is seen.
struct StopSignals {
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let unix = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM/SIGINT; stopping on Ctrl-C only");
                None
            }
        };
        Self { unix }
    }

    /// Waits for the next SIGTERM or SIGINT; returns its name.
    async fn recv(&mut self) -> &'static str {
        match self.unix.as_mut() {
            Some((term, int)) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
}

/// Periodic upkeep: DNS re-resolution and closing expired idle connections.
async fn maintain(shared: Arc<Shared>) {
    let mut last_resolve: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let gw = shared.current.load_full();
        let now = tokio::time::Instant::now();
        for (name, up) in &gw.upstreams {
            for w in 0..gw.workers {
                up.sweep(w);
            }
            if !up.endpoints.iter().any(|e| e.is_dns) {
                continue;
            }
            let due = last_resolve
                .get(name)
                .is_none_or(|t| now.duration_since(*t) >= up.config.resolve_interval.0);
            if due {
                last_resolve.insert(name.clone(), now);
                up.refresh_dns().await;
            }
        }
        last_resolve.retain(|n, _| gw.upstreams.contains_key(n));
    }
}

/// Why a reload was refused; the previous snapshot keeps serving either way.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load, validate or compile (`file:line:column` errors).
    #[error("{0}")]
    Invalid(String),
    /// The config is valid but was not applied: a listener cannot be bound,
    /// shutdown has started, or the reload task failed.
    #[error("{0}")]
    Failed(String),
}

/// Loads, compiles and swaps in the config file; the old snapshot keeps
/// serving when anything fails. SIGHUP, the file watcher and the admin API
/// all reload here, so each reload is counted once.
pub async fn reload(shared: &Arc<Shared>) -> Result<(), ReloadError> {
    let _one_at_a_time = shared.reloading.lock().await;
    let result = load_and_apply(shared).await;
    shared.current.load().metrics.reloaded(result.is_ok());
    result
}

async fn load_and_apply(shared: &Arc<Shared>) -> Result<(), ReloadError> {
    let path = shared.config_path.clone();
    let previous = shared.current.load_full();
    let workers = previous.workers;
    let compiled = tokio::task::spawn_blocking(move || {
        let file = path.display().to_string();
        let cfg = config::load_file(&path).map_err(|e| e.to_string())?;
        if worker_count(&cfg) != workers {
            tracing::warn!("`workers` changed; it takes effect at the next restart");
        }
        if cfg.admin.as_ref().map(|a| &a.value) != previous.config.admin.as_ref().map(|a| &a.value)
        {
            tracing::warn!("`admin` changed; it takes effect at the next restart");
        }
        gateway::compile(cfg, &file, workers, Some(&previous)).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| ReloadError::Failed(format!("reload task failed: {e}")))?
    .map_err(ReloadError::Invalid)?;
    apply_listeners(shared, Arc::new(compiled))
        .await
        .map_err(ReloadError::Failed)
}

/// Resolves once `drain` turns true (or its sender is gone).
pub(crate) async fn drained(drain: &mut watch::Receiver<bool>) {
    let _ = drain.wait_for(|d| *d).await;
}
