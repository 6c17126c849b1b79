//! Reading files the daemon does not own (configuration, settings, the fallback key file, AWS
//! token files) without ever blocking or growing without bound.
//!
//! Any such path may, for a moment or for good, name something that is not a file: a FIFO
//! (`open` for reading blocks until a writer comes), `/dev/zero` (endless), a directory. The file
//! is opened with `O_NONBLOCK` (a FIFO opens at once, and a character device does not block the
//! open), checked with `fstat` on the descriptor that is then read (no race between the check
//! and the read), and read up to a cap.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Nothing at the path.
    #[error("it does not exist")]
    NotFound,
    /// The daemon's user may not read it.
    #[error("permission denied")]
    PermissionDenied,
    /// A FIFO, socket, device or directory.
    #[error("it is a {0}, not a regular file")]
    NotRegular(&'static str),
    /// Over the cap.
    #[error("it is larger than {0} bytes")]
    TooLarge(u64),
    /// Any other I/O error.
    #[error("{0}")]
    Io(io::Error),
}

impl From<io::Error> for FileError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::NotFound => FileError::NotFound,
            io::ErrorKind::PermissionDenied => FileError::PermissionDenied,
            _ => FileError::Io(e),
        }
    }
}

fn kind_name(ft: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "FIFO (named pipe)"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Reads the regular file at `path` (symlinks followed), at most `limit` bytes.
///
/// # Errors
/// [`FileError`]: missing, unreadable, not a regular file, or larger than `limit`.
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(kind_name(meta.file_type())));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge(limit));
    }
    // The size can change between fstat and read (a file being appended to): the cap holds
    // whatever the file does.
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        zeroize::Zeroize::zeroize(&mut bytes);
        return Err(FileError::TooLarge(limit));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn regular_files_are_read_up_to_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        assert_eq!(read_regular(&p, 5).unwrap(), b"hello");
        assert!(matches!(read_regular(&p, 4), Err(FileError::TooLarge(4))));
        assert!(matches!(
            read_regular(&dir.path().join("missing"), 5),
            Err(FileError::NotFound)
        ));
        assert!(matches!(
            read_regular(dir.path(), 5),
            Err(FileError::NotRegular("directory"))
        ));
    }

    #[test]
    fn fifos_and_endless_devices_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = read_regular(&fifo, 1024).map(|_| ());
            tx.send(r.map_err(|e| e.to_string())).unwrap();
        });
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("reading a FIFO blocked");
        assert_eq!(
            r,
            Err("it is a FIFO (named pipe), not a regular file".into())
        );
        assert!(matches!(
            read_regular(Path::new("/dev/zero"), 1024),
            Err(FileError::NotRegular("character device"))
        ));
    }
}
