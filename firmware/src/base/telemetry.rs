//! Counters and gauges shared between the real-time threads and everything
//! that reports on them (logs, status page, `/metrics`, the watchdog).
//!
//! Writers are the audio-path threads; they only do relaxed atomic stores and
//! adds, which never block and never allocate. Readers take a
//! [`AudioSnapshot`] whenever they like.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the process's first call, monotonic. Heartbeats use it.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Health of the microphone as the capture thread sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum CaptureState {
    /// Not started yet.
    Starting = 0,
    /// Delivering audio.
    Running = 1,
    /// Lost the device; reopening with backoff.
    Degraded = 2,
    /// A simulated source reached its end, or capture was stopped.
    Ended = 3,
    /// Gave up: the device cannot be used (see logs).
    Failed = 4,
}

impl CaptureState {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Running,
            2 => Self::Degraded,
            3 => Self::Ended,
            4 => Self::Failed,
            _ => Self::Starting,
        }
    }

    /// Lower-case name for logs, JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Degraded => "degraded",
            Self::Ended => "ended",
            Self::Failed => "failed",
        }
    }
}

/// Everything the audio path counts. One instance per process, in an `Arc`.
#[derive(Debug)]
pub struct AudioStats {
    /// Device frames read by the capture thread.
    pub frames_captured: AtomicU64,
    /// Device frames dropped because the capture→audio queue was full.
    pub frames_dropped: AtomicU64,
    /// Overruns recovered by the capture backend.
    pub xruns: AtomicU64,
    /// Times the device delivered nothing within its read timeout.
    pub stalls: AtomicU64,
    /// Attempts to reopen a lost device.
    pub reopen_attempts: AtomicU64,
    /// 16 kHz mono samples produced by the audio thread.
    pub samples_processed: AtomicU64,
    /// Most frames ever waiting in the capture→audio queue.
    pub queue_high_water: AtomicU64,
    /// RMS level of the last meter window, dBFS, as `f32` bits.
    level_rms_dbfs: AtomicU32,
    /// Peak level of the last meter window, dBFS, as `f32` bits.
    level_peak_dbfs: AtomicU32,
    capture_state: AtomicU8,
    /// [`now_ms`] of the capture thread's last loop iteration.
    pub capture_beat_ms: AtomicU64,
    /// [`now_ms`] of the audio thread's last loop iteration.
    pub audio_beat_ms: AtomicU64,
}

/// The quietest level reported, for digital silence.
pub const SILENCE_DBFS: f32 = -120.0;

impl Default for AudioStats {
    fn default() -> Self {
        Self {
            frames_captured: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            xruns: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            reopen_attempts: AtomicU64::new(0),
            samples_processed: AtomicU64::new(0),
            queue_high_water: AtomicU64::new(0),
            level_rms_dbfs: AtomicU32::new(SILENCE_DBFS.to_bits()),
            level_peak_dbfs: AtomicU32::new(SILENCE_DBFS.to_bits()),
            capture_state: AtomicU8::new(CaptureState::Starting as u8),
            capture_beat_ms: AtomicU64::new(0),
            audio_beat_ms: AtomicU64::new(0),
        }
    }
}

/// A consistent-enough copy of [`AudioStats`] for reporting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AudioSnapshot {
    pub frames_captured: u64,
    pub frames_dropped: u64,
    pub xruns: u64,
    pub stalls: u64,
    pub reopen_attempts: u64,
    pub samples_processed: u64,
    pub queue_high_water: u64,
    pub level_rms_dbfs: f32,
    pub level_peak_dbfs: f32,
    pub capture_state: CaptureState,
}

impl AudioStats {
    pub fn set_level(&self, rms_dbfs: f32, peak_dbfs: f32) {
        self.level_rms_dbfs.store(rms_dbfs.to_bits(), Relaxed);
        self.level_peak_dbfs.store(peak_dbfs.to_bits(), Relaxed);
    }

    pub fn set_capture_state(&self, s: CaptureState) {
        self.capture_state.store(s as u8, Relaxed);
    }

    pub fn capture_state(&self) -> CaptureState {
        CaptureState::from_u8(self.capture_state.load(Relaxed))
    }

    pub fn snapshot(&self) -> AudioSnapshot {
        AudioSnapshot {
            frames_captured: self.frames_captured.load(Relaxed),
            frames_dropped: self.frames_dropped.load(Relaxed),
            xruns: self.xruns.load(Relaxed),
            stalls: self.stalls.load(Relaxed),
            reopen_attempts: self.reopen_attempts.load(Relaxed),
            samples_processed: self.samples_processed.load(Relaxed),
            queue_high_water: self.queue_high_water.load(Relaxed),
            level_rms_dbfs: f32::from_bits(self.level_rms_dbfs.load(Relaxed)),
            level_peak_dbfs: f32::from_bits(self.level_peak_dbfs.load(Relaxed)),
            capture_state: self.capture_state(),
        }
    }
}

/// Upper bounds (milliseconds) of the latency histogram buckets.
pub const LATENCY_BUCKETS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0,
];

/// A latency histogram with Prometheus-style buckets, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; the last slot is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
    last_us: AtomicU64,
}

/// A copy of a [`Histogram`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS_MS`], then `+Inf`.
    pub cumulative: Vec<u64>,
    pub sum_ms: f64,
    pub count: u64,
    pub last_ms: f64,
}

impl HistogramSnapshot {
    /// Upper bound of the bucket holding quantile `q` (0–1), in ms.
    pub fn quantile_upper_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        let i = self.cumulative.iter().position(|&c| c >= rank)?;
        Some(LATENCY_BUCKETS_MS.get(i).copied().unwrap_or(f64::INFINITY))
    }

    pub fn mean_ms(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ms / self.count as f64)
    }
}

impl Histogram {
    pub fn observe_ms(&self, ms: f64) {
        let ms = if ms.is_finite() { ms.max(0.0) } else { 0.0 };
        let i = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        let us = (ms * 1000.0) as u64;
        self.sum_us.fetch_add(us, Relaxed);
        self.last_us.store(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                acc += b.load(Relaxed);
                acc
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            sum_ms: self.sum_us.load(Relaxed) as f64 / 1000.0,
            count: self.count.load(Relaxed),
            last_ms: self.last_us.load(Relaxed) as f64 / 1000.0,
        }
    }
}

/// One debounced button edge, as the page's live button view shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ButtonEvent {
    /// Pressed (true) or released.
    pub down: bool,
    pub unix_ms: u64,
    /// Presses and releases counted so far, this one included.
    pub presses: u64,
    pub releases: u64,
}

/// The button's edges for live viewers (`/api/v1/events`): a bounded
/// broadcast, so a slow viewer loses old edges (and is told how many),
/// never slows the controller.
#[derive(Debug)]
pub struct ButtonFeed(tokio::sync::broadcast::Sender<ButtonEvent>);

/// Edges a live viewer may fall behind by.
const BUTTON_FEED: usize = 64;

impl Default for ButtonFeed {
    fn default() -> Self {
        Self(tokio::sync::broadcast::channel(BUTTON_FEED).0)
    }
}

impl ButtonFeed {
    /// Every edge from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ButtonEvent> {
        self.0.subscribe()
    }
}

/// Counters of the push-to-talk path (button, capture of utterances,
/// recognition, delivery to the sink).
#[derive(Debug, Default)]
pub struct PttStats {
    /// Debounced presses.
    pub presses: AtomicU64,
    /// Debounced releases.
    pub releases: AtomicU64,
    /// The button is held now.
    pub button_down: std::sync::atomic::AtomicBool,
    /// Each debounced edge, for the page's live button view.
    pub button_feed: ButtonFeed,
    /// Unix time of the last press, milliseconds (0 = none yet).
    pub last_press_unix_ms: AtomicU64,
    /// Presses since local midnight (UTC day), and which day that is.
    pub presses_today: AtomicU64,
    pub presses_day: AtomicU64,
    /// Utterances submitted for recognition.
    pub utterances: AtomicU64,
    pub too_short: AtomicU64,
    pub busy_rejected: AtomicU64,
    pub no_speech: AtomicU64,
    pub transcripts: AtomicU64,
    pub stt_failures: AtomicU64,
    /// 16 kHz frames the listener could not take (it fell behind).
    pub tap_dropped: AtomicU64,
    /// Utterances cut at `audio.max_utterance_s` or by `ptt.vad_auto_stop_ms`.
    pub auto_stopped: AtomicU64,
    /// LED commands dropped because the indicator thread was behind.
    pub led_dropped: AtomicU64,
    pub button_errors: AtomicU64,
    /// Speculative recognition (issue 19): runs started while the button
    /// was held; hits (used at release), misses (finished, then discarded
    /// because speech came back), abandoned (stopped at a decoder step
    /// because speech came back), and the recognition time spent on runs
    /// whose result was not used, microseconds.
    pub spec_on: std::sync::atomic::AtomicBool,
    pub spec_runs: AtomicU64,
    pub spec_hits: AtomicU64,
    pub spec_misses: AtomicU64,
    pub spec_abandoned: AtomicU64,
    pub spec_wasted_us: AtomicU64,
    /// Debounced press → indicators show "listening".
    pub press_to_led: Histogram,
    /// Release (or auto stop) → transcript ready.
    pub release_to_text: Histogram,
    /// VAD + encoder + decoder per utterance.
    pub stt: Histogram,
    /// Heartbeats of the listener and recognition threads.
    pub listen_beat_ms: AtomicU64,
    pub stt_beat_ms: AtomicU64,
}

impl PttStats {
    /// Count a debounced press at `unix_ms`.
    pub fn note_press(&self, unix_ms: u64) {
        let r = std::sync::atomic::Ordering::Relaxed;
        let presses = self.presses.fetch_add(1, r) + 1;
        self.last_press_unix_ms.store(unix_ms, r);
        let day = unix_ms / 86_400_000;
        if self.presses_day.swap(day, r) != day {
            self.presses_today.store(0, r);
        }
        self.presses_today.fetch_add(1, r);
        self.button_down.store(true, r);
        self.edge(true, unix_ms, presses, self.releases.load(r));
    }

    /// Count a debounced release at `unix_ms`.
    pub fn note_release(&self, unix_ms: u64) {
        let r = std::sync::atomic::Ordering::Relaxed;
        let releases = self.releases.fetch_add(1, r) + 1;
        self.button_down.store(false, r);
        self.edge(false, unix_ms, self.presses.load(r), releases);
    }

    fn edge(&self, down: bool, unix_ms: u64, presses: u64, releases: u64) {
        // No viewer is not an error.
        let _ = self.button_feed.0.send(ButtonEvent {
            down,
            unix_ms,
            presses,
            releases,
        });
    }

    /// Presses on the UTC day of `unix_ms` (0 once that day has passed).
    pub fn presses_on(&self, unix_ms: u64) -> u64 {
        let r = std::sync::atomic::Ordering::Relaxed;
        if self.presses_day.load(r) == unix_ms / 86_400_000 {
            self.presses_today.load(r)
        } else {
            0
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The process's resident memory in bytes (`/proc/self/statm`).
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok().filter(|p| *p > 0)?)
}

/// Give the heap's free pages back to the kernel (glibc's `malloc_trim`).
/// Recognition allocates and frees tens of MB per utterance on its own
/// thread (tract's buffers, the decoder's caches); glibc keeps what was
/// freed in that thread's arena, so without this RSS only ever grows
/// toward the worst utterance and the start-up calibration's peak, which
/// is what a 512 MB board and `MemoryMax=` see (issue 28, "Memory that
/// stays put"). Called after model loading and after each recognition
/// job: a few milliseconds, never on the audio path.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`
/// (or its nearest existing ancestor).
pub fn free_bytes(path: &std::path::Path) -> Option<u64> {
    disk_space(path).map(|(free, _)| free)
}

/// Bytes available to this user and total bytes of the filesystem holding
/// `path` (or its nearest existing ancestor).
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let existing = path.ancestors().find(|p| p.exists())?;
    let existing = if existing.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        existing
    };
    let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path; statvfs fills `st`.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // The fields are 32 bits wide on armv7: widen before multiplying.
    #[allow(clippy::useless_conversion)]
    let (avail, blocks, frsize) = (
        u64::from(st.f_bavail),
        u64::from(st.f_blocks),
        u64::from(st.f_frsize),
    );
    Some((avail.saturating_mul(frsize), blocks.saturating_mul(frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presses_today_reset_at_the_day_boundary() {
        let s = PttStats::default();
        let day = 20_000 * 86_400_000;
        s.note_press(day + 1_000);
        s.note_press(day + 2_000);
        assert_eq!(s.presses_on(day + 3_000), 2);
        assert_eq!(s.presses_on(day + 86_400_000), 0, "next day, no press yet");
        s.note_press(day + 86_400_000 + 5);
        assert_eq!(s.presses_on(day + 86_400_000 + 6), 1);
        assert_eq!(s.presses.load(std::sync::atomic::Ordering::Relaxed), 3);
        assert_eq!(
            s.last_press_unix_ms
                .load(std::sync::atomic::Ordering::Relaxed),
            day + 86_400_000 + 5
        );
    }

    #[test]
    fn histogram_buckets_and_quantiles() {
        let h = Histogram::default();
        assert_eq!(h.snapshot().quantile_upper_ms(0.95), None);
        for ms in [0.5, 3.0, 3.0, 15.0, 400.0, 1e9] {
            h.observe_ms(ms);
        }
        let s = h.snapshot();
        assert_eq!(s.count, 6);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[2], 3, "≤ 5 ms");
        assert_eq!(*s.cumulative.last().unwrap(), 6);
        assert_eq!(s.quantile_upper_ms(0.5), Some(5.0));
        assert_eq!(s.quantile_upper_ms(0.8), Some(500.0));
        assert_eq!(s.quantile_upper_ms(1.0), Some(f64::INFINITY));
        assert_eq!(s.last_ms, 1e9);
    }
}
