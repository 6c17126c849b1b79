//! Everything that asks the daemon to do something: OS signals and configuration file changes
//! become one [`Control`] stream, so the main loop has a single place to react.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use inotify::{Inotify, WatchMask};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use tokio::sync::mpsc;
use tracing::{debug, warn};

/// A request to the main loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// SIGTERM or SIGINT: stop gracefully (a second one stops at once).
    Shutdown,
    /// Re-read the configuration.
    Reload(Trigger),
    /// The socket file or its directory changed (removed by hand, or by a tmpfiles/systemd
    /// cleanup of the runtime directory): check the socket is still ours, bind it again if gone.
    CheckSocket,
}

/// Why a reload was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP (or `systemctl reload`): always re-read, as the operator asked.
    Signal,
    /// Events on a watched file: re-read only if the content changed.
    FileEvent,
}

impl Trigger {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileEvent => "file change",
        }
    }
}

/// Forwards SIGTERM/SIGINT/SIGHUP until the receiver is dropped.
pub fn spawn_signals(tx: mpsc::Sender<Control>) -> std::io::Result<()> {
    let mut signals = signal_hook_tokio::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    tokio::spawn(async move {
        while let Some(sig) = signals.next().await {
            let control = match sig {
                SIGHUP => Control::Reload(Trigger::Signal),
                _ => Control::Shutdown,
            };
            if tx.send(control).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// How long file events are collected before one request is sent: editors and `kubectl apply`
/// produce bursts of events for one logical change.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// Events that can change what a configuration file holds. Not `OPEN`, `ACCESS` or
/// `CLOSE_NOWRITE`: every read of the files (the Agent's, `cat`, a CLI command, the daemon's own
/// reload) raises those, and reacting to them made each reload trigger the next. Not `ATTRIB`
/// either: a `touch` or `chmod` changes no content. (The `notify` crate always adds `OPEN` and
/// `CLOSE_NOWRITE` to its inotify mask, hence the `inotify` crate it is built on.)
const CONFIG_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MODIFY)
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// Events that can take the socket file away or put something else in its place.
const SOCKET_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// A directory watch; it ends when dropped.
#[derive(Debug)]
pub struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Watches the directories of `files` (not the files: `sed -i`, editors and Kubernetes ConfigMap
/// swaps replace the inode, which would silently end a watch on the file itself) and sends
/// [`Control::Reload`] with [`Trigger::FileEvent`] after a debounced burst of changes touching
/// one of them. Whether the content really changed is decided by the receiver
/// ([`fingerprint`]). Must be called inside the runtime.
pub fn watch_files(files: &[PathBuf], tx: mpsc::Sender<Control>) -> std::io::Result<Watch> {
    watch_paths(
        files,
        CONFIG_EVENTS,
        Control::Reload(Trigger::FileEvent),
        tx,
    )
}

/// Watches the socket file through its directory, and the directory itself (inotify reports the
/// removal of a watched directory to its own watch), and sends [`Control::CheckSocket`] after a
/// debounced burst of events touching either. Call again after the directory was re-created:
/// a watch ends with the directory it was on.
///
/// The directory's parent is not watched: it is typically `/run`, where other daemons create
/// and remove files all day, and every such event would wake an otherwise idle daemon.
pub fn watch_socket(socket: &Path, tx: mpsc::Sender<Control>) -> std::io::Result<Watch> {
    watch_paths(
        &[socket.to_path_buf()],
        SOCKET_EVENTS,
        Control::CheckSocket,
        tx,
    )
}

/// Watches the directories of `files` for `mask` events touching their names (or the
/// directory itself), and sends `control` after each debounced burst. Events arrive through
/// the runtime's reactor: no thread of its own, and no wake-up for events outside `mask`.
fn watch_paths(
    files: &[PathBuf],
    mask: WatchMask,
    control: Control,
    tx: mpsc::Sender<Control>,
) -> std::io::Result<Watch> {
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
    let inotify = Inotify::init()?;
    for dir in &dirs {
        inotify.watches().add(dir, mask | WatchMask::ONLYDIR)?;
        debug!(dir = %dir.display(), "Watching for changes.");
    }
    let mut events = inotify.into_event_stream(vec![0u8; 4096])?;
    Ok(Watch(tokio::spawn(async move {
        let relevant = |e: &inotify::Event<OsString>| {
            // No name: the event is about a watched directory itself (removed, moved away),
            // or the queue overflowed and anything may have happened.
            e.name.as_ref().is_none_or(|n| relevant(n, &names))
        };
        loop {
            // Wait for the first relevant event of a burst.
            loop {
                match events.next().await {
                    Some(Ok(e)) if relevant(&e) => break,
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        warn!(error = %e, "The file watcher failed; reload with SIGHUP instead.");
                        return;
                    }
                    None => return,
                }
            }
            let deadline = tokio::time::sleep(WATCH_DEBOUNCE);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => break,
                    more = events.next() => if more.is_none() { return },
                }
            }
            if tx.send(control).await.is_err() {
                return;
            }
        }
    })))
}

/// Our files, or the `..data` symlink Kubernetes swaps to update a mounted ConfigMap.
fn relevant(name: &OsStr, names: &HashSet<OsString>) -> bool {
    names.contains(name) || name.to_string_lossy().starts_with("..data")
}

/// Bound on each watched file read for a fingerprint (above the largest file the
/// configuration accepts, so an over-long file still changes the fingerprint).
const FINGERPRINT_READ_LIMIT: u64 = 8 * 1024 * 1024;

/// What `files` hold now, as one hash: a file event whose files still hold the same bytes
/// (a `touch`, an editor saving unchanged text, the burst of one rename) is not a change.
/// A file that cannot be read contributes why, so a file appearing, vanishing or becoming
/// unreadable is a change too. Blocking I/O: call from a blocking thread.
pub fn fingerprint(files: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        match crate::files::read_regular(f, FINGERPRINT_READ_LIMIT) {
            Ok(mut bytes) => {
                bytes.hash(&mut h);
                // The fallback key file is among them.
                zeroize::Zeroize::zeroize(&mut bytes);
            }
            Err(e) => e.to_string().hash(&mut h),
        }
    }
    h.finish()
}
