//! What visitors said stays the service's own: the outbox, the recordings
//! and the run history are created `0600` in `0700` directories, and
//! nothing talkie writes or reads there follows a symlink someone planted
//! (issue 28 row 11).
//!
//! Three layers: the unit's `UMask=0077` and `StateDirectoryMode=0700`;
//! [`restrict_umask`] at the start of every `talkie` process (the same
//! mask outside systemd, and for SQLite's own `-wal`/`-shm` files); and
//! the explicit modes and `O_NOFOLLOW` below where talkie creates files.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// `0077`: new files `0600`, new directories `0700`.
pub fn restrict_umask() {
    // SAFETY: umask(2) only sets this process's file-mode mask.
    unsafe {
        libc::umask(0o077);
    }
}

/// Create `dir` (and its parents) as `0700`; an existing `dir` is made
/// `0700` (a state directory left `0755` by an older release).
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{} is a symlink: refusing to keep visitors' data behind it",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A new file at `path`, `0600`, failing if anything (a symlink included)
/// is already there.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// `path` for reading, refusing a symlink.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Write `bytes` to `path` through a new `0600` temporary beside it and a
/// rename (which replaces a symlink at `path` instead of following it).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = create_new(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_and_directories_and_no_symlink_followed() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/deeper");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&state).unwrap();
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode(&state),
            0o700,
            "an existing 0755 directory is tightened"
        );
        let f = state.join("runs.json");
        write_atomic(&f, b"{}").unwrap();
        assert_eq!(mode(&f), 0o600);
        // A planted symlink is replaced, never written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let planted = state.join("planted.json");
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        assert!(create_new(&planted).is_err());
        assert!(open_nofollow(&planted).is_err());
        write_atomic(&planted, b"mine").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(!std::fs::symlink_metadata(&planted)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
