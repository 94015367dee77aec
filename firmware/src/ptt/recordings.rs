#![cfg_attr(not(test), deny(clippy::indexing_slicing))]
//! Opt-in recordings for debugging (`[debug]`, off by default): the last
//! `keep_utterances` utterances' audio as 16 kHz 16-bit WAV, each with a
//! JSON file of its transcript, VAD speech regions and timings, in
//! `device.state_dir`/recordings. Bounded three ways — count, total bytes
//! (`keep_max_mb`) and age (`keep_hours`) — checked at every new recording
//! and every [`PRUNE_EVERY`]; time is a parameter, so tests pass their own
//! clock. Technician-only over HTTP (list, download, delete).
//!
//! What visitors say is kept on the device while this is on; the page
//! shows a banner saying so.

use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// How often old recordings are looked for besides each new one.
pub const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Largest metadata file read back.
const MAX_META: u64 = 64 * 1024;
/// Where recordings live under `device.state_dir`.
pub const DIR_NAME: &str = "recordings";

/// Why a recording could not be kept or served.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("recordings directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Wav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no recording named {0:?}")]
    NotFound(String),
}

/// The `[debug]` limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub keep: usize,
    pub max_bytes: u64,
    pub max_age_ms: u64,
}

impl Limits {
    /// `None` when recordings are off (`keep_utterances = 0`).
    pub fn from_config(d: &crate::base::config::DebugConfig) -> Option<Self> {
        (d.keep_utterances > 0).then(|| Self {
            keep: d.keep_utterances as usize,
            max_bytes: u64::from(d.keep_max_mb) * 1024 * 1024,
            max_age_ms: u64::from(d.keep_hours) * 3_600_000,
        })
    }
}

/// One kept recording.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    /// `utt-<unix ms>-<id>`: the WAV is `<name>.wav`, the facts `<name>.json`.
    pub name: String,
    pub at_ms: u64,
    pub id: u64,
    /// WAV + JSON.
    pub bytes: u64,
    /// The JSON written with it (transcript, VAD regions, timings).
    pub meta: serde_json::Value,
}

/// The recordings directory and its limits.
#[derive(Debug)]
pub struct Recordings {
    dir: PathBuf,
    limits: Limits,
    lock: Mutex<()>,
}

/// `utt-<at_ms>-<id>` → (at_ms, id); anything else is not ours.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix("utt-")?;
    let (at, id) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(at) || !digits(id) {
        return None;
    }
    Some((at.parse().ok()?, id.parse().ok()?))
}

impl Recordings {
    /// Recordings under `state_dir`, or `None` when they are off.
    pub fn new(state_dir: &Path, debug: &crate::base::config::DebugConfig) -> Option<Self> {
        Some(Self {
            dir: state_dir.join(DIR_NAME),
            limits: Limits::from_config(debug)?,
            lock: Mutex::new(()),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keep one utterance: `audio` (16 kHz mono) and `meta`, written
    /// atomically (temporary name, then rename); then apply the limits at
    /// `now_ms`.
    pub fn save(
        &self,
        id: u64,
        at_ms: u64,
        audio: &[i16],
        meta: &serde_json::Value,
        now_ms: u64,
    ) -> Result<String, RecordingError> {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        crate::base::private_files::private_dir(&self.dir).map_err(|source| {
            RecordingError::Dir {
                path: self.dir.clone(),
                source,
            }
        })?;
        let name = format!("utt-{at_ms}-{id}");
        let wav = self.dir.join(format!("{name}.wav"));
        let tmp = self.dir.join(format!("{name}.wav.partial"));
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: crate::audio::PIPELINE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wav_err = |source| RecordingError::Wav {
            path: wav.clone(),
            source,
        };
        // A new 0600 file; a symlink planted under the temporary name is
        // refused, and the rename below replaces rather than follows one.
        let _ = std::fs::remove_file(&tmp);
        let file = crate::base::private_files::create_new(&tmp).map_err(|source| {
            RecordingError::Write {
                path: tmp.clone(),
                source,
            }
        })?;
        let mut w = hound::WavWriter::new(std::io::BufWriter::new(file), spec).map_err(wav_err)?;
        for s in audio {
            w.write_sample(*s).map_err(wav_err)?;
        }
        w.finalize().map_err(wav_err)?;
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| RecordingError::Write { path, source }
        };
        std::fs::rename(&tmp, &wav).map_err(write_err(&wav))?;
        let json = self.dir.join(format!("{name}.json"));
        let body = serde_json::to_vec_pretty(meta).unwrap_or_default();
        crate::base::private_files::write_atomic(&json, &body).map_err(write_err(&json))?;
        self.prune_locked(now_ms);
        Ok(name)
    }

    /// Apply the limits at `now_ms`; how many recordings were deleted.
    pub fn prune(&self, now_ms: u64) -> usize {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune_locked(now_ms)
    }

    fn prune_locked(&self, now_ms: u64) -> usize {
        let mut all = self.scan(false);
        let mut gone = 0;
        let mut total: u64 = all.iter().map(|e| e.bytes).sum();
        // Oldest first.
        all.sort_by_key(|e| (e.at_ms, e.id));
        let count = all.len();
        for (i, e) in all.iter().enumerate() {
            let left = count - i;
            let too_old = now_ms.saturating_sub(e.at_ms) > self.limits.max_age_ms;
            if too_old || left > self.limits.keep || total > self.limits.max_bytes {
                self.remove_files(&e.name);
                total = total.saturating_sub(e.bytes);
                gone += 1;
            }
        }
        if gone > 0 {
            tracing::info!(deleted = gone, "old recordings deleted (debug.keep_*)");
        }
        gone
    }

    fn remove_files(&self, name: &str) {
        for ext in ["wav", "json"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{name}.{ext}")));
        }
    }

    /// Every recording, newest first (with its metadata when `meta`).
    fn scan(&self, meta: bool) -> Vec<Entry> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Entry> = rd
            .filter_map(Result::ok)
            .filter_map(|d| {
                let file = d.file_name().into_string().ok()?;
                let name = file.strip_suffix(".wav")?.to_owned();
                let (at_ms, id) = parse_name(&name)?;
                // Only regular files: a planted symlink is not a recording.
                if !d.file_type().ok()?.is_file() {
                    return None;
                }
                let json = self.dir.join(format!("{name}.json"));
                let bytes = d.metadata().ok()?.len()
                    + std::fs::symlink_metadata(&json)
                        .map(|m| m.len())
                        .unwrap_or(0);
                let meta = if meta {
                    crate::base::private_files::open_nofollow(&json)
                        .ok()
                        .and_then(|f| {
                            let mut t = String::new();
                            std::io::Read::read_to_string(
                                &mut std::io::Read::take(f, MAX_META + 1),
                                &mut t,
                            )
                            .ok()?;
                            Some(t)
                        })
                        .filter(|t| t.len() as u64 <= MAX_META)
                        .and_then(|t| serde_json::from_str(&t).ok())
                        .unwrap_or(serde_json::Value::Null)
                } else {
                    serde_json::Value::Null
                };
                Some(Entry {
                    name,
                    at_ms,
                    id,
                    bytes,
                    meta,
                })
            })
            .collect();
        out.sort_by_key(|e| std::cmp::Reverse((e.at_ms, e.id)));
        out
    }

    /// Every recording, newest first, after applying the limits at `now_ms`.
    pub fn list(&self, now_ms: u64) -> Vec<Entry> {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.prune_locked(now_ms);
        self.scan(true)
    }

    /// The WAV file of recording `name`.
    pub fn wav_path(&self, name: &str) -> Result<PathBuf, RecordingError> {
        parse_name(name)
            .ok_or_else(|| RecordingError::NotFound(name.chars().take(64).collect()))?;
        let p = self.dir.join(format!("{name}.wav"));
        if p.is_file() {
            Ok(p)
        } else {
            Err(RecordingError::NotFound(name.to_owned()))
        }
    }

    /// Delete recording `name`.
    pub fn delete(&self, name: &str) -> Result<(), RecordingError> {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.wav_path(name)?;
        self.remove_files(name);
        tracing::info!(recording = name, "recording deleted by a technician");
        Ok(())
    }

    /// Delete every recording; how many there were.
    pub fn delete_all(&self) -> usize {
        let _g = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let all = self.scan(false);
        for e in &all {
            self.remove_files(&e.name);
        }
        tracing::info!(
            deleted = all.len(),
            "every recording deleted by a technician"
        );
        all.len()
    }

    /// How many are kept and their bytes (for the status banner).
    pub fn summary(&self) -> (usize, u64) {
        let all = self.scan(false);
        (all.len(), all.iter().map(|e| e.bytes).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const HOUR: u64 = 3_600_000;

    fn debug(keep: u32, hours: u32, mb: u32) -> crate::base::config::DebugConfig {
        crate::base::config::DebugConfig {
            keep_utterances: keep,
            keep_hours: hours,
            keep_max_mb: mb,
        }
    }

    #[test]
    fn off_by_default() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            Recordings::new(dir.path(), &crate::base::config::DebugConfig::default()).is_none()
        );
    }

    /// Count, age and bytes each bound what is kept; the clock is a
    /// parameter (no waiting for hours).
    #[test]
    fn kept_recordings_are_bounded_by_count_age_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recordings::new(dir.path(), &debug(3, 2, 1)).unwrap();
        let t0 = 1_700_000_000_000;
        let audio = vec![1000i16; 16_000];
        for id in 1..=5 {
            let meta = serde_json::json!({"id": id, "text": "where is the shop"});
            r.save(id, t0 + id * 1000, &audio, &meta, t0 + id * 1000)
                .unwrap();
        }
        let names: Vec<u64> = r.list(t0 + 6000).iter().map(|e| e.id).collect();
        assert_eq!(names, [5, 4, 3], "the newest 3 of 5");
        let e = &r.list(t0 + 6000)[0];
        assert_eq!(e.meta["text"], "where is the shop");
        let wav = hound::WavReader::open(r.wav_path(&e.name).unwrap()).unwrap();
        assert_eq!((wav.spec().sample_rate, wav.len()), (16_000, 16_000));

        // Two hours and a bit later, all are too old.
        assert_eq!(r.prune(t0 + 5000 + 2 * HOUR + 1), 3);
        assert!(r.list(t0 + 5000 + 2 * HOUR + 1).is_empty());

        // 1 MiB holds 32 one-second recordings (32 KB each), not 40.
        let r = Recordings::new(dir.path(), &debug(1000, 2, 1)).unwrap();
        for id in 1..=40 {
            r.save(id, t0 + id, &audio, &serde_json::json!({}), t0 + 50)
                .unwrap();
        }
        let (n, bytes) = r.summary();
        assert!(n < 40 && bytes <= 1024 * 1024, "{n} kept, {bytes} bytes");
        assert!(n >= 30, "{n}");
        assert_eq!(r.delete_all(), n);
    }

    #[test]
    fn names_are_checked_before_any_file_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let r = Recordings::new(dir.path(), &debug(3, 2, 1)).unwrap();
        let name = r
            .save(9, 1000, &[0; 160], &serde_json::json!({}), 1000)
            .unwrap();
        assert_eq!(name, "utt-1000-9");
        for bad in [
            "../config",
            "utt-1000-9/../../x",
            "utt--9",
            "utt-1000-9.wav",
            "",
        ] {
            assert!(
                matches!(r.wav_path(bad), Err(RecordingError::NotFound(_))),
                "{bad}"
            );
            assert!(r.delete(bad).is_err(), "{bad}");
        }
        r.delete(&name).unwrap();
        assert!(r.list(1000).is_empty());
    }
}
