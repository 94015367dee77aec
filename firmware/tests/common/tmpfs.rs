//! A small tmpfs mounted for a test, unmounted on drop (the chaos suite's
//! disk-full case and the supervised kiosk's). Needs root or
//! CAP_SYS_ADMIN; a test without it fails unless `TALKIE_SKIP_TMPFS=1`
//! says to skip ([`Tmpfs::mount_or_skip`]).

use std::path::{Path, PathBuf};

pub(crate) struct Tmpfs(pub(crate) PathBuf);

impl Tmpfs {
    /// Mount `size` (e.g. `16m`) on `dir`; `None` when this process may not.
    pub(crate) fn mount(dir: &Path, size: &str) -> Option<Self> {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }

    /// [`Tmpfs::mount`], failing the test when it cannot, unless
    /// `TALKIE_SKIP_TMPFS` is set (then `None`).
    pub(crate) fn mount_or_skip(dir: &Path, size: &str) -> Option<Self> {
        let fs = Self::mount(dir, size);
        assert!(
            fs.is_some() || std::env::var_os("TALKIE_SKIP_TMPFS").is_some(),
            "cannot mount a tmpfs (needs root or CAP_SYS_ADMIN); set TALKIE_SKIP_TMPFS=1 to skip"
        );
        fs
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
