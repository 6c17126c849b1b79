//! Everything that asks the daemon to do something: OS signals and configuration file changes
//! become one [`Control`] stream, so the main loop has a single place to react.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use notify::{RecursiveMode, Watcher};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// A request to the main loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM or SIGINT: stop gracefully (a second one stops at once).
    Shutdown,
    /// SIGHUP or a change of a watched file: re-read the configuration.
    Reload(&'static str),
    /// The socket file or its directory changed (removed by hand, or by a tmpfiles/systemd
    /// cleanup of the runtime directory): check the socket is still ours, bind it again if gone.
    CheckSocket,
}

/// Forwards SIGTERM/SIGINT/SIGHUP until the receiver is dropped.
pub fn spawn_signals(tx: mpsc::Sender<Control>) -> std::io::Result<()> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            let control = match sig {
                SIGHUP => Control::Reload("SIGHUP"),
                _ => Control::Shutdown,
            };
            if tx.send(control).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// How long file events are collected before one reload is requested: editors and
/// `kubectl apply` produce bursts of events for one logical change.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// Watches the directories of `files` (not the files: `sed -i`, editors and Kubernetes ConfigMap
/// swaps replace the inode, which would silently end a watch on the file itself) and asks for a
/// reload after a debounced burst of events touching one of them. The watcher lives as long as
/// the returned value.
pub fn watch_files(
    files: &[PathBuf],
    tx: mpsc::Sender<Control>,
) -> notify::Result<notify::RecommendedWatcher> {
    watch_paths(files, Control::Reload("file change"), tx)
}

/// Watches the socket file through its directory, and the directory itself (inotify reports the
/// removal of a watched directory to its own watch), and asks for a [`Control::CheckSocket`]
/// after a debounced burst of events touching either. Call again after the directory was
/// re-created: a watch ends with the directory it was on.
///
/// The directory's parent is not watched: it is typically `/run`, where other daemons create
/// and remove files all day, and every such event would wake the watcher thread of an
/// otherwise idle daemon.
pub fn watch_socket(
    socket: &Path,
    tx: mpsc::Sender<Control>,
) -> notify::Result<notify::RecommendedWatcher> {
    watch_paths(&[socket.to_path_buf()], Control::CheckSocket, tx)
}

/// Watches the directories of `files` for events touching their names, and sends `control`
/// after each debounced burst.
fn watch_paths(
    files: &[PathBuf],
    control: Control,
    tx: mpsc::Sender<Control>,
) -> notify::Result<notify::RecommendedWatcher> {
    let names: HashSet<OsString> = files
        .iter()
        .filter_map(|f| f.file_name().map(OsString::from))
        .collect();
    let dirs: HashSet<PathBuf> = files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        })
        .collect();
    // Events on a watched directory itself (removed, moved away) concern us too.
    let watched = dirs.clone();
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if event
                    .paths
                    .iter()
                    .any(|p| relevant(p, &names) || watched.contains(p))
                {
                    let _ = raw_tx.send(());
                }
            }
            Err(e) => warn!(error = %e, "The configuration file watcher reported an error."),
        })?;
    for dir in &dirs {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
        debug!(dir = %dir.display(), "Watching for configuration changes.");
    }
    tokio::spawn(async move {
        while raw_rx.recv().await.is_some() {
            let deadline = tokio::time::sleep(WATCH_DEBOUNCE);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    more = raw_rx.recv() => if more.is_none() { return },
                }
            }
            if tx.send(control).await.is_err() {
                return;
            }
        }
    });
    Ok(watcher)
}

/// Our files, or the `..data` symlink Kubernetes swaps to update a mounted ConfigMap.
fn relevant(path: &Path, names: &HashSet<OsString>) -> bool {
    path.file_name()
        .is_some_and(|n| names.contains(n) || n.to_string_lossy().starts_with("..data"))
}
