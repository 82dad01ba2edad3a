//! Certificate reload from disk: the folders of every TLS listener's
//! certificate and key files are watched (files are often replaced by rename,
//! as certbot and Kubernetes secrets do, so folders rather than files); after
//! a burst of events settles, each listener of the current snapshot reloads
//! the files whose content changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::server::Shared;

/// The task that watches certificate files until the process ends. The set
/// of watched folders follows the current snapshot (a config reload may add
/// or remove listeners or files).
pub async fn watch(shared: Arc<Shared>) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = match notify::recommended_watcher(
        move |res: notify::Result<notify::Event>| {
            if res.is_ok_and(|e| !e.kind.is_access()) {
                let _ = tx.try_send(());
            }
        },
    ) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch certificate files; they reload with the config only");
            None
        }
    };
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            Some(()) = rx.recv() => {
                // Let a burst (write, rename, chmod; cert then key) settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                reload_changed(&shared);
            }
            _ = tick.tick() => {}
        }
        if let Some(w) = watcher.as_mut() {
            sync_folders(&shared, w, &mut watched);
        }
    }
}

/// Watches the folders the current snapshot's certificates live in, and no others.
fn sync_folders(shared: &Shared, watcher: &mut impl Watcher, watched: &mut BTreeSet<PathBuf>) {
    let gw = shared.current.load();
    let wanted: BTreeSet<PathBuf> = gw
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref())
        .flat_map(|t| t.files().map(folder).collect::<Vec<_>>())
        .collect();
    for gone in watched.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    watched.retain(|d| wanted.contains(d));
    for dir in wanted {
        if watched.contains(&dir) {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                watched.insert(dir);
            }
            // Retried at the next tick: the folder may appear later.
            Err(e) => {
                tracing::debug!(error = %e, dir = %dir.display(), "cannot watch certificate folder")
            }
        }
    }
}

fn folder(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

/// Reloads the certificates of every TLS listener whose files changed; a
/// broken file is logged and the old certificates keep serving.
pub fn reload_changed(shared: &Shared) {
    let gw = shared.current.load_full();
    for l in gw.listeners.iter() {
        let Some(tls) = &l.tls else { continue };
        match tls.reload_if_changed() {
            Ok(true) => tracing::info!(listener = %l.name, "certificates reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(
                listener = %l.name,
                "certificate reload failed; still serving the previous certificates: {e}"
            ),
        }
    }
}
