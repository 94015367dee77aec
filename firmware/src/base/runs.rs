#![cfg_attr(not(test), deny(clippy::indexing_slicing))]
//! The service's run history, kept in the state directory
//! (`device.state_dir`/`runs.json`): when it started and how the previous
//! run ended, so the page can say "started 14 times in 24 h" and "the last
//! run did not stop cleanly" instead of a technician guessing.
//!
//! A run writes `running_since` when it starts and its end (`clean`,
//! `restart`, `failed`) when it stops. A start that finds `running_since`
//! still set knows the previous run never recorded its end: it was killed
//! (the watchdog, the OOM killer, `kill -9`) or the power went. The file is
//! small and bounded (the last [`MAX_STARTS`] start times), written
//! atomically (temporary file + rename); a missing, unreadable or corrupt
//! file starts a fresh history, and a state directory that cannot be
//! written only costs the history, never the service.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Start times kept.
pub const MAX_STARTS: usize = 200;
/// Largest history file read.
const MAX_FILE: u64 = 64 * 1024;
const DAY_MS: u64 = 86_400_000;
/// The history's file name in `device.state_dir`.
pub const FILE_NAME: &str = "runs.json";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndKind {
    /// Stopped on request (SIGTERM, `systemctl stop`, end of a simulation).
    Clean,
    /// Stopped for a technician's restart (`POST /api/v1/restart`).
    Restart,
    /// Ended with an error it reported.
    Failed,
    /// Never recorded its end: killed (watchdog, OOM, `kill -9`) or power
    /// lost.
    Killed,
}

impl EndKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndKind::Clean => "clean",
            EndKind::Restart => "restart",
            EndKind::Failed => "failed",
            EndKind::Killed => "killed",
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct HistoryFile {
    starts_ms: Vec<u64>,
    running_since_ms: Option<u64>,
    last_end: Option<EndKind>,
    last_end_ms: Option<u64>,
}

/// What the status page shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    /// Starts in the 24 hours before this one (this one included).
    pub starts_24h: usize,
    /// How the previous run ended; `None` on the first start.
    pub previous_end: Option<EndKind>,
    /// When the previous run ended (Unix ms), when it said so.
    pub previous_end_ms: Option<u64>,
    /// Where the history is kept; `None` when it could not be written.
    pub file: Option<PathBuf>,
}

/// This run's entry in the history.
#[derive(Debug)]
pub struct RunHistory {
    path: PathBuf,
    file: HistoryFile,
    writable: bool,
    summary: RunSummary,
}

fn read(path: &Path) -> HistoryFile {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(path) else {
        return HistoryFile::default();
    };
    let mut text = String::new();
    if f.take(MAX_FILE).read_to_string(&mut text).is_err() {
        return HistoryFile::default();
    }
    serde_json::from_str(&text).unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "run history unreadable; starting a fresh one");
        HistoryFile::default()
    })
}

fn write(path: &Path, file: &HistoryFile) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        crate::base::private_files::private_dir(dir)?;
    }
    let text = serde_json::to_vec(file).map_err(std::io::Error::other)?;
    crate::base::private_files::write_atomic(path, &text)
}

impl RunHistory {
    /// Record a start at `now_ms` in `state_dir`/runs.json.
    pub fn begin(state_dir: &Path, now_ms: u64) -> Self {
        let path = state_dir.join(FILE_NAME);
        let mut file = read(&path);
        let previous_end = match (file.running_since_ms, file.last_end) {
            (Some(_), _) => Some(EndKind::Killed),
            (None, end) => end,
        };
        let previous_end_ms = match previous_end {
            Some(EndKind::Killed) | None => None,
            Some(_) => file.last_end_ms,
        };
        file.starts_ms.push(now_ms);
        let excess = file.starts_ms.len().saturating_sub(MAX_STARTS);
        file.starts_ms.drain(..excess);
        file.running_since_ms = Some(now_ms);
        let writable = match write(&path, &file) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot keep the run history (device.state_dir); the page shows this run only");
                false
            }
        };
        let starts_24h = file
            .starts_ms
            .iter()
            .filter(|t| now_ms.saturating_sub(**t) < DAY_MS)
            .count();
        if previous_end == Some(EndKind::Killed) {
            tracing::warn!(
                "the previous run did not record its end: it was killed (watchdog, out of memory, kill -9) or lost power"
            );
        }
        let summary = RunSummary {
            starts_24h,
            previous_end,
            previous_end_ms,
            file: writable.then(|| path.clone()),
        };
        Self {
            path,
            file,
            writable,
            summary,
        }
    }

    pub fn summary(&self) -> &RunSummary {
        &self.summary
    }

    /// Record how this run ended.
    pub fn end(mut self, kind: EndKind, now_ms: u64) {
        if !self.writable {
            return;
        }
        self.file.running_since_ms = None;
        self.file.last_end = Some(kind);
        self.file.last_end_ms = Some(now_ms);
        if let Err(e) = write(&self.path, &self.file) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record how this run ended");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_and_ends_are_remembered_and_a_missing_end_is_a_kill() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_000 * DAY_MS;
        let first = RunHistory::begin(dir.path(), t0);
        assert_eq!(
            (first.summary().starts_24h, first.summary().previous_end),
            (1, None)
        );
        first.end(EndKind::Clean, t0 + 10);
        let second = RunHistory::begin(dir.path(), t0 + 20);
        assert_eq!(second.summary().previous_end, Some(EndKind::Clean));
        assert_eq!(second.summary().previous_end_ms, Some(t0 + 10));
        assert_eq!(second.summary().starts_24h, 2);
        drop(second); // killed: no end recorded
        let third = RunHistory::begin(dir.path(), t0 + DAY_MS + 15);
        assert_eq!(third.summary().previous_end, Some(EndKind::Killed));
        assert_eq!(
            third.summary().starts_24h,
            2,
            "the first start is a day old"
        );
        third.end(EndKind::Restart, t0 + DAY_MS + 16);
        let fourth = RunHistory::begin(dir.path(), t0 + DAY_MS + 17);
        assert_eq!(fourth.summary().previous_end, Some(EndKind::Restart));
    }

    #[test]
    fn a_corrupt_file_starts_fresh_and_the_history_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("runs.json"), b"{not json").unwrap();
        let h = RunHistory::begin(dir.path(), 5);
        assert_eq!(
            (h.summary().starts_24h, h.summary().previous_end),
            (1, None)
        );
        for i in 0..(MAX_STARTS as u64 + 50) {
            RunHistory::begin(dir.path(), 10 + i).end(EndKind::Clean, 10 + i);
        }
        let text = std::fs::read_to_string(dir.path().join("runs.json")).unwrap();
        let f: HistoryFile = serde_json::from_str(&text).unwrap();
        assert_eq!(f.starts_ms.len(), MAX_STARTS);
    }

    #[test]
    fn an_unwritable_state_directory_costs_only_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("state");
        std::fs::write(&blocker, b"").unwrap();
        let h = RunHistory::begin(&blocker, 5);
        assert_eq!(h.summary().file, None);
        assert_eq!(h.summary().starts_24h, 1);
        h.end(EndKind::Clean, 6);
    }
}
