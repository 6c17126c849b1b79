//! File sinks (product §2.2 `sinks`, §9): an instance's key written to a file for consumers that
//! only read files (Vector, the OTel Collector's `${file:…}`, scripts).
//!
//! A write happens only when the served value changes, and always atomically: a temporary file
//! is created next to the target (`O_EXCL | O_NOFOLLOW`, the final mode from the start), written,
//! fsynced, given its group, then renamed over the target and the directory fsynced. A reader
//! therefore sees either the old key or the new one, never a partial file. The target must not
//! be a symlink: a planted link could otherwise redirect the key anywhere the daemon can write.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::keystore::Slot;
use crate::secret::Secret;

/// A resolved sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkSpec {
    /// Instance whose key is written.
    pub instance: String,
    /// Target file.
    pub path: PathBuf,
    /// File mode (e.g. 0o640).
    pub mode: u32,
    /// Group id to give the file, if any.
    pub gid: Option<u32>,
}

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The target is a symlink.
    #[error(
        "{path} is a symbolic link; refusing to write a key through it. Remove the link or point the sink at a regular file path"
    )]
    Symlink {
        /// Target.
        path: PathBuf,
    },
    /// The target's directory is missing.
    #[error(
        "the directory of {path} does not exist; create it (owned by this daemon's user, not writable by others)"
    )]
    NoDirectory {
        /// Target.
        path: PathBuf,
    },
    /// An I/O step failed.
    #[error("cannot {op} for sink {path}: {source}")]
    Io {
        /// Step.
        op: &'static str,
        /// Target.
        path: PathBuf,
        /// Cause.
        source: io::Error,
    },
}

/// Serializes sink writes within the process. On a reload the old sink task (woken by the new
/// key) and its replacement can both find the file out of date; under the lock the second one
/// finds it current and writes nothing, instead of replacing the file a second time.
static WRITE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes `key` to the sink's file if it differs from what is there. Returns whether it wrote.
pub fn write_if_changed(spec: &SinkSpec, key: &Secret) -> Result<bool, SinkError> {
    let _serialized = WRITE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let path = &spec.path;
    let io = |op: &'static str| {
        move |source: io::Error| SinkError::Io {
            op,
            path: path.clone(),
            source,
        }
    };
    remove_stale_temporaries(path);
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Err(SinkError::Symlink { path: path.clone() });
        }
        Ok(m) if m.is_file() => {
            if same_content(path, key).unwrap_or(false)
                && m.permissions().mode() & 0o7777 == spec.mode
            {
                return Ok(false);
            }
        }
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspect the target")(e)),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(SinkError::NoDirectory { path: path.clone() });
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(spec.mode)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io("create the temporary file"))?;
        // The umask may have narrowed the mode given to open().
        f.set_permissions(fs::Permissions::from_mode(spec.mode))
            .map_err(io("set the mode"))?;
        if let Some(gid) = spec.gid {
            nix::unistd::fchown(&f, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| io("set the group")(io::Error::from(e)))?;
        }
        f.write_all(key.expose().as_bytes()).map_err(io("write"))?;
        f.sync_all().map_err(io("fsync"))?;
        fs::rename(&tmp, path).map_err(io("rename the temporary file over"))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync the directory"))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| true)
}

/// Removes temporary files of `path` that a crash between their write and their rename left
/// behind (each holds a whole key): `.<name>.tmp-*` regular files owned by this process's user,
/// next to the target. Called under the write lock, so none of them is in use.
fn remove_stale_temporaries(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let me = nix::unistd::geteuid().as_raw();
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let stale = entry.path();
        // Not followed: only our own regular files, never through a link.
        if fs::symlink_metadata(&stale).is_ok_and(|m| m.is_file() && m.uid() == me) {
            match fs::remove_file(&stale) {
                Ok(()) => {
                    warn!(path = %stale.display(), "Removed a temporary key file left by an interrupted write.");
                }
                Err(e) => {
                    warn!(path = %stale.display(), error = %e, "Cannot remove a temporary key file left by an interrupted write.")
                }
            }
        }
    }
}

fn same_content(path: &Path, key: &Secret) -> io::Result<bool> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let mut buf = Vec::with_capacity(key.expose().len());
    // Read one byte more than the key: a longer file is different.
    Read::by_ref(&mut f)
        .take(key.expose().len() as u64 + 1)
        .read_to_end(&mut buf)?;
    let same = buf == key.expose().as_bytes();
    zeroize::Zeroize::zeroize(&mut buf);
    Ok(same)
}

/// How long to wait before retrying a failed write (disk full, directory missing): the first
/// retry is quick, later ones back off so a broken sink does not spin.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// What the status shows of a sink.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkStatus {
    /// Instance whose key is written.
    pub instance: String,
    /// Target file.
    pub path: String,
    /// Generation last written (or found already current).
    pub generation: Option<u64>,
    /// The last write error, cleared by the next success.
    pub last_error: Option<String>,
}

/// The sinks of the configuration in force and how their last write went, for status: a sink
/// that cannot write (a missing directory, a planted symlink, a full disk) must be visible
/// without reading logs.
#[derive(Debug, Default)]
pub struct SinkBoard(std::sync::Mutex<std::collections::BTreeMap<PathBuf, SinkStatus>>);

impl SinkBoard {
    /// Starts over with `specs` (a reload).
    pub fn reset(&self, specs: &[SinkSpec]) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.clear();
        for spec in specs {
            map.insert(
                spec.path.clone(),
                SinkStatus {
                    instance: spec.instance.clone(),
                    path: spec.path.display().to_string(),
                    ..SinkStatus::default()
                },
            );
        }
    }

    fn record(&self, path: &Path, outcome: Result<u64, String>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(status) = map.get_mut(path) {
            match outcome {
                Ok(generation) => {
                    status.generation = Some(generation);
                    status.last_error = None;
                }
                Err(e) => status.last_error = Some(e),
            }
        }
    }

    /// Every sink, sorted by path.
    pub fn list(&self) -> Vec<SinkStatus> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().cloned().collect()
    }
}

/// Follows an instance and keeps its file current until `shutdown`, recording each outcome on
/// `board`.
pub fn spawn(
    spec: SinkSpec,
    slot: Arc<Slot>,
    board: Arc<SinkBoard>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut rx = slot.subscribe();
        let mut written_generation = None;
        let mut retry = RETRY_MIN;
        loop {
            let snap = rx.borrow_and_update().clone();
            if snap.removed {
                return;
            }
            let mut failed = false;
            if let Some(key) = snap
                .served
                .as_ref()
                .filter(|_| written_generation != Some(snap.generation))
            {
                let (spec2, key2) = (spec.clone(), key.value.clone());
                match tokio::task::spawn_blocking(move || write_if_changed(&spec2, &key2)).await {
                    Ok(Ok(wrote)) => {
                        written_generation = Some(snap.generation);
                        board.record(&spec.path, Ok(snap.generation));
                        retry = RETRY_MIN;
                        if wrote {
                            info!(instance = %spec.instance, path = %spec.path.display(), key = %key.value, "Wrote the key to the sink.");
                        }
                    }
                    Ok(Err(e)) => {
                        error!(instance = %spec.instance, retry_in = ?retry, "{e}");
                        board.record(&spec.path, Err(e.to_string()));
                        failed = true;
                    }
                    Err(e) => {
                        warn!(error = %e, "Sink write task failed.");
                        board.record(&spec.path, Err(format!("the write task failed: {e}")));
                        failed = true;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(retry), if failed => {
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn spec(dir: &Path, mode: u32) -> SinkSpec {
        SinkSpec {
            instance: "api_key".into(),
            path: dir.join("api_key"),
            mode,
            gid: None,
        }
    }

    #[test]
    fn temporaries_left_by_a_crash_are_removed_on_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), 0o600);
        let stale = dir.path().join(".api_key.tmp-4242-99");
        fs::write(&stale, "key-from-a-crash-000000000001").unwrap();
        let other = dir.path().join(".other.tmp-4242-99");
        fs::write(&other, "not ours to remove").unwrap();
        let key = Secret::from("key-one-0000000001");
        write_if_changed(&s, &key).unwrap();
        assert!(!stale.exists());
        assert!(other.exists());
        // Also when the file is already current (a restart after the crash).
        fs::write(&stale, "key-from-a-crash-000000000001").unwrap();
        assert!(!write_if_changed(&s, &key).unwrap());
        assert!(!stale.exists());
    }

    #[test]
    fn writes_atomically_with_mode_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), 0o640);
        assert!(write_if_changed(&s, &Secret::from("key-one-0000000001")).unwrap());
        assert_eq!(fs::read_to_string(&s.path).unwrap(), "key-one-0000000001");
        assert_eq!(
            fs::metadata(&s.path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let ino = fs::metadata(&s.path).unwrap().ino();
        assert!(
            !write_if_changed(&s, &Secret::from("key-one-0000000001")).unwrap(),
            "unchanged: no write"
        );
        assert_eq!(fs::metadata(&s.path).unwrap().ino(), ino);
        assert!(write_if_changed(&s, &Secret::from("key-two-0000000002")).unwrap());
        assert_ne!(
            fs::metadata(&s.path).unwrap().ino(),
            ino,
            "replaced by rename, not edited"
        );
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[test]
    fn concurrent_writers_of_the_same_key_write_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), 0o640);
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    write_if_changed(&s, &Secret::from("key-one-0000000001")).unwrap()
                })
            })
            .collect();
        let wrote = writers
            .into_iter()
            .map(|w| w.join().unwrap())
            .filter(|&wrote| wrote)
            .count();
        assert_eq!(wrote, 1);
    }

    #[test]
    fn refuses_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), 0o600);
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, &s.path).unwrap();
        let err = write_if_changed(&s, &Secret::from("key-one-0000000001")).unwrap_err();
        assert!(matches!(err, SinkError::Symlink { .. }), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(!err.to_string().contains("key-one"));
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(&dir.path().join("nope"), 0o600);
        let err = write_if_changed(&s, &Secret::from("key-one-0000000001")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
