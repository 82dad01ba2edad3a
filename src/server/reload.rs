//! Reload triggers: SIGHUP, and a watch on the config file's folder (editors
//! and Kubernetes replace files by rename, so the folder is watched, and a
//! change counts only when the file's content changed).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Shared, reload};

/// Sets up the reload triggers at once (so that a change made right after
/// startup is not missed), and returns the task that runs them until the
/// process ends.
pub fn watch(shared: Arc<Shared>) -> impl Future<Output = ()> + Send + 'static {
    let (tx, rx) = mpsc::channel::<()>(1);
    let watcher = start_watcher(&shared.config_path, tx);
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP");
            None
        }
    };
    let last = content_hash(&shared.config_path);
    run(shared, watcher, rx, hup, last)
}

async fn run(
    shared: Arc<Shared>,
    _watcher: Option<notify::RecommendedWatcher>,
    mut rx: mpsc::Receiver<()>,
    mut hup: Option<tokio::signal::unix::Signal>,
    mut last: Option<u64>,
) {
    loop {
        let forced = tokio::select! {
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            Some(()) = rx.recv() => false,
        };
        if !forced {
            // Let a burst of events (write, rename, chmod) settle.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while rx.try_recv().is_ok() {}
            let now = content_hash(&shared.config_path);
            if now == last || now.is_none() {
                continue;
            }
        }
        last = content_hash(&shared.config_path);
        let trigger = if forced { "SIGHUP" } else { "file change" };
        match reload(&shared).await {
            Ok(()) => tracing::info!(trigger, "config reloaded"),
            Err(e) => tracing::error!(
                trigger,
                "config reload failed; still serving the previous config:\n{e}"
            ),
        }
    }
}

fn content_hash(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    Some(h.finish())
}

fn start_watcher(path: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP"))
    .ok()?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config folder; reload with SIGHUP"))
        .ok()?;
    Some(watcher)
}
