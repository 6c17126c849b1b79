//! The socket supervisor: the socket file this daemon bound, kept where consumers expect it.
//!
//! A removed socket file (or directory) is bound again with the same mode and group; a changed
//! `socket.mode` or `socket.group` replaces the socket with one carrying the new permissions;
//! something else at the path is left alone and reported once. Only the socket this daemon
//! bound is ever removed: by then the path may hold another daemon's.

use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::control::{self, Control};
use crate::server::{self, BindError};

/// The socket as bound, and the channel that hands a new listener to the server.
pub(crate) struct SocketBinding {
    /// The socket path in force (fixed until restart).
    path: PathBuf,
    /// Permission bits of the socket file.
    mode: u32,
    /// Group owning the socket file.
    gid: Option<u32>,
    /// (device, inode) of the socket file this daemon bound.
    id: Option<(u64, u64)>,
    /// Hands a new listener to the server.
    rebind: mpsc::Sender<UnixListener>,
    /// Something else sits at the path and was already reported.
    foreign_reported: bool,
    /// The watch on the socket's directory ([`control::watch_socket`]).
    watch: Option<control::Watch>,
}

/// The socket file this daemon bound, by path and identity: what may be removed at exit.
#[derive(Clone, Debug)]
pub(crate) struct OwnSocket {
    path: PathBuf,
    id: Option<(u64, u64)>,
}

impl OwnSocket {
    /// Removes the socket file if it is still the one this daemon bound.
    pub(crate) fn remove(&self) {
        if self.id.is_some() && file_id(&self.path) == self.id {
            remove_socket(&self.path);
        }
    }
}

impl SocketBinding {
    /// Binds `path` with `mode` and `gid`; new listeners (rebinds) go to `rebind`.
    ///
    /// # Errors
    ///
    /// When the socket cannot be bound (see [`server::bind`]).
    pub(crate) fn bind(
        path: &Path,
        mode: u32,
        gid: Option<u32>,
        rebind: mpsc::Sender<UnixListener>,
    ) -> Result<(Self, UnixListener), BindError> {
        let listener = server::bind(path, mode, gid)?;
        let binding = SocketBinding {
            path: path.to_path_buf(),
            mode,
            gid,
            id: file_id(path),
            rebind,
            foreign_reported: false,
            watch: None,
        };
        Ok((binding, listener))
    }

    /// Ends the watch (at shutdown).
    pub(crate) fn unwatch(&mut self) {
        self.watch = None;
    }

    /// The socket file bound now, to remove at exit.
    pub(crate) fn own(&self) -> OwnSocket {
        OwnSocket {
            path: self.path.clone(),
            id: self.id,
        }
    }

    /// Watches the socket file (again: a watch ends with the directory it was on); a failure
    /// leaves SIGHUP as the way to bind a removed socket again.
    pub(crate) fn watch(&mut self, tx: &mpsc::Sender<Control>) {
        drop(self.watch.take());
        self.watch = match control::watch_socket(&self.path, tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(error = %e, "Cannot watch the socket file; if it is removed, SIGHUP binds it again.");
                None
            }
        };
    }

    /// [`Self::ensure`], and a new watch when the socket was bound again.
    pub(crate) async fn check(&mut self, tx: &mpsc::Sender<Control>) {
        if self.ensure().await {
            self.watch(tx);
        }
    }

    /// Checks that the socket file this daemon bound is still at its path, and binds it again
    /// when it (or its directory) was removed: consumers find the daemon where they expect it
    /// without a restart. Something else at the path is left alone and reported once. Returns
    /// whether the socket was bound again.
    async fn ensure(&mut self) -> bool {
        let path = self.path.clone();
        match std::fs::symlink_metadata(&path) {
            Ok(meta) => {
                use std::os::unix::fs::{FileTypeExt, MetadataExt};
                let ours =
                    meta.file_type().is_socket() && self.id == Some((meta.dev(), meta.ino()));
                if !ours && !self.foreign_reported {
                    error!(path = %path.display(), "The socket path now holds a file this daemon did not create; leaving it alone. Consumers cannot reach this daemon there: remove that file (the socket is then bound again) or restart the daemon.");
                    self.foreign_reported = true;
                }
                false
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match server::bind(&path, self.mode, self.gid) {
                    Ok(listener) => {
                        self.id = file_id(&path);
                        self.foreign_reported = false;
                        if self.rebind.send(listener).await.is_err() {
                            return false;
                        }
                        warn!(path = %path.display(), "The socket file was removed; bound it again. Consumers can connect again.");
                        true
                    }
                    Err(e) => {
                        error!(path = %path.display(), "The socket file was removed and cannot be bound again: {e}. Consumers cannot connect until this is fixed; the next SIGHUP tries again.");
                        false
                    }
                }
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "Cannot check the socket file.");
                false
            }
        }
    }

    /// Applies a changed `socket.mode` or `socket.group`: a new socket with the new permissions
    /// replaces the old one at the same path (see [`server::rebind`]); connections already
    /// open are served to their end.
    ///
    /// # Errors
    ///
    /// When the new socket cannot be bound, or the server has stopped; the old socket then
    /// stays as it was.
    pub(crate) async fn apply_permissions(
        &mut self,
        mode: u32,
        gid: Option<u32>,
    ) -> Result<(), String> {
        if (mode, gid) == (self.mode, self.gid) {
            return Ok(());
        }
        let path = self.path.clone();
        let listener = server::rebind(&path, mode, gid).map_err(|e| {
            format!("socket.mode/socket.group: the new permissions cannot be applied: {e}")
        })?;
        self.mode = mode;
        self.gid = gid;
        self.id = file_id(&path);
        self.foreign_reported = false;
        if self.rebind.send(listener).await.is_err() {
            return Err("the server has stopped".to_owned());
        }
        info!(path = %path.display(), mode = format!("{mode:04o}"), gid = ?gid, "Applied the new socket mode and group.");
        Ok(())
    }
}

/// (device, inode) of the file at `path`, without following a symlink.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn remove_socket(path: &Path) {
    if let Err(e) = std::fs::remove_file(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %e, "Cannot remove the socket file.");
    }
}
