//! The configuration schema: one struct per TOML section, with defaults.
//!
//! Every section is `deny_unknown_fields` and every key has a default, so a
//! minimal file names only what differs. Ranges are checked in
//! [`super::validate`]. `docs/configuration.md` documents every key; keep
//! the two in step.

use super::secret::Secret;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub device: DeviceConfig,
    pub audio: AudioConfig,
    pub vad: VadConfig,
    pub stt: SttConfig,
    pub ptt: PttConfig,
    pub gpio: GpioConfig,
    pub agent: AgentConfig,
    pub outbox: OutboxConfig,
    pub status: StatusConfig,
    pub watchdog: WatchdogConfig,
    pub board: BoardConfig,
    pub debug: DebugConfig,
    pub log: LogConfig,
}

/// `[device]`: who this kiosk is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceConfig {
    /// Identifier sent with every transcript and shown on the status page.
    pub id: String,
    /// Where the service keeps its run history (`runs.json`: starts, how
    /// the previous run ended). `StateDirectory=talkie` in the unit.
    pub state_dir: PathBuf,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            id: "talkie".to_owned(),
            state_dir: PathBuf::from("/var/lib/talkie"),
        }
    }
}

/// Where audio comes from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum AudioBackend {
    /// A real capture device through alsa-lib.
    #[default]
    Alsa,
    /// A WAV file (simulation, demo, tests).
    File,
}

/// `[audio]`: capture and the audio path.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AudioConfig {
    pub backend: AudioBackend,
    /// ALSA PCM name (`alsa` backend).
    pub device: String,
    /// Wanted capture rate in Hz; the device's nearest is used.
    pub rate: u32,
    /// Wanted capture channels (1 or 2); stereo is downmixed.
    pub channels: u16,
    /// Capture period in milliseconds.
    pub period_ms: u32,
    /// WAV file to play (`file` backend).
    pub file: Option<PathBuf>,
    /// `file` backend: deliver at real time (true) or as fast as possible.
    pub realtime: bool,
    /// `file` backend: a simulation clock. A script button's times count on
    /// the file's audio, and the file pauses while an utterance is being
    /// recognized, so a session gives the same events on any CPU.
    pub sim_clock: bool,
    /// `file` backend: play the file again and again (soak runs, a demo
    /// that never ends); a script button's times count on past its length.
    pub file_loop: bool,
    /// Audio kept from before the button press, in milliseconds.
    pub preroll_ms: u32,
    /// Longest utterance in seconds; listening stops by itself after it.
    pub max_utterance_s: u32,
    /// SCHED_FIFO priority for the capture thread (1–99); 0 leaves the
    /// normal scheduler.
    pub rt_priority: u8,
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self {
            backend: AudioBackend::Alsa,
            device: "default".to_owned(),
            rate: 48_000,
            channels: 1,
            period_ms: 20,
            file: None,
            realtime: true,
            sim_clock: false,
            file_loop: false,
            preroll_ms: 500,
            max_utterance_s: 30,
            rt_priority: 0,
        }
    }
}

/// `[vad]`: voice activity detection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VadConfig {
    /// Silero VAD ONNX file.
    pub model: PathBuf,
    /// Speech probability above which a chunk counts as speech.
    pub threshold: f32,
    /// Speech shorter than this is ignored.
    pub min_speech_ms: u32,
    /// Silence shorter than this does not end speech.
    pub min_silence_ms: u32,
    /// Audio kept before and after each speech segment.
    pub speech_pad_ms: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("/usr/share/talkie/models/silero_vad.onnx"),
            threshold: 0.5,
            min_speech_ms: 250,
            min_silence_ms: 300,
            speech_pad_ms: 100,
        }
    }
}

pub use talkie_speech::options::{ModelPrecision, Precision, SttModel, Threads};

/// `[stt]`: speech to text.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SttConfig {
    /// Directory holding the Whisper encoder/decoder ONNX files and tokenizer.
    pub model_dir: PathBuf,
    /// `auto` (default: `agreement` where two cores, 1 GiB of RAM and
    /// `latency_budget_ms` allow it, measured at the first start; else
    /// `whisper-tiny`), `whisper-tiny`, `moonshine-base` or `agreement`
    /// (issue 31).
    pub model: SttModel,
    /// Most tokens decoded for one utterance.
    pub max_tokens: u32,
    /// `model = "auto"`: agreement is chosen only if its measured time for
    /// a 3 s utterance (release to text, no speculation) fits this.
    pub latency_budget_ms: u32,
    /// `auto` (measured at start-up), `fp32` or `int8` model files.
    pub precision: Precision,
    /// Threads for the encoder/decoder matrix products (1 = the worker
    /// thread alone), or `auto` (measured with the precision).
    pub threads: Threads,
    /// Zero-padded mel frames (10 ms each) after the speech. Fewer is
    /// faster; below ~500 Whisper starts to repeat and mishear
    /// (shared/notes/whisper-on-tract.md).
    pub encoder_margin_frames: u32,
    /// Where the calibration of `auto` is kept, so a restart reuses it
    /// (keyed by talkie version, model sha256s, CPU and threads).
    pub calibration_file: PathBuf,
}

impl Default for SttConfig {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::from("/usr/share/talkie/models"),
            model: SttModel::Auto,
            max_tokens: 96,
            latency_budget_ms: talkie_speech::options::DEFAULT_LATENCY_BUDGET_MS,
            precision: Precision::Auto,
            threads: Threads::Auto,
            encoder_margin_frames: 512,
            calibration_file: PathBuf::from("/var/lib/talkie/calibration.json"),
        }
    }
}

/// How a press maps to an utterance.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PttMode {
    /// Speak while the button is held.
    #[default]
    Hold,
    /// Press to start, press again to stop.
    Toggle,
}

/// What a press does while the previous utterance is still being handled.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BusyPolicy {
    /// Keep one utterance queued.
    #[default]
    Queue,
    /// Refuse with a busy blink.
    Reject,
}

/// `[ptt]`: push-to-talk interaction rules.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PttConfig {
    pub mode: PttMode,
    /// Presses shorter than this are ignored.
    pub min_press_ms: u32,
    pub busy: BusyPolicy,
    /// End the utterance after this much trailing silence; 0 = off.
    pub vad_auto_stop_ms: u32,
    /// On SIGTERM, how long an utterance already submitted may take to be
    /// recognized and committed to the outbox before shutdown goes on.
    pub finish_on_stop_ms: u32,
    /// Recognize while the button is still held, from the first pause
    /// after speech (issue 19): the transcript is ready at release.
    pub speculative: bool,
    /// Silence after speech before a speculative run starts.
    pub speculate_after_ms: u32,
}

impl Default for PttConfig {
    fn default() -> Self {
        Self {
            mode: PttMode::Hold,
            min_press_ms: 150,
            busy: BusyPolicy::Queue,
            vad_auto_stop_ms: 0,
            finish_on_stop_ms: 5_000,
            speculative: true,
            speculate_after_ms: 100,
        }
    }
}

/// Where the button and LEDs are.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum GpioBackend {
    /// Real GPIO on a Raspberry Pi.
    Rppal,
    /// A scripted timeline of button events (simulation).
    Script,
    /// No button, no LEDs.
    #[default]
    None,
}

/// Pull resistor on the button pin.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    #[default]
    Up,
    Down,
    Off,
}

/// Which status LEDs `gpio.backend = "rppal"` drives.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LedKind {
    /// Three plain LEDs on `gpio.led_pins` (ready, activity, fault).
    #[default]
    Pins,
    /// APA102 RGB LEDs on SPI (ReSpeaker 2-Mic Pi HAT).
    Apa102,
    /// No LEDs.
    None,
}

/// `[gpio]`: button and LEDs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GpioConfig {
    pub backend: GpioBackend,
    /// Button timeline (`script` backend).
    pub script: Option<PathBuf>,
    /// BCM pin of the push-to-talk button.
    pub button_pin: u8,
    /// The button pulls the pin low when pressed.
    pub button_active_low: bool,
    pub button_pull: Pull,
    /// Edges closer together than this are bounces.
    pub debounce_ms: u32,
    pub leds: LedKind,
    /// BCM pins of the ready (green), activity (amber) and fault (red) LEDs.
    pub led_pins: [u8; 3],
    /// SPI bus and chip select of the APA102 LEDs (`/dev/spidev{bus}.{cs}`).
    pub apa102_spi_bus: u8,
    pub apa102_spi_cs: u8,
    /// Number of APA102 LEDs on the chain.
    pub apa102_count: u8,
    /// APA102 global brightness, 0–31.
    pub apa102_brightness: u8,
}

impl Default for GpioConfig {
    fn default() -> Self {
        Self {
            backend: GpioBackend::None,
            script: None,
            button_pin: 17,
            button_active_low: true,
            button_pull: Pull::Up,
            debounce_ms: 20,
            leds: LedKind::Pins,
            led_pins: [22, 23, 24],
            apa102_spi_bus: 0,
            apa102_spi_cs: 1,
            apa102_count: 3,
            apa102_brightness: 8,
        }
    }
}

/// `[agent]`: the remote agent transcripts are forwarded to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Base URL (`http://` or `https://`); unset = keep transcripts local.
    /// A password in it is shown as `<redacted>` wherever the
    /// configuration is printed ([`super::redact_url`]).
    #[serde(serialize_with = "super::secret::serialize_url")]
    pub url: Option<String>,
    /// Bearer token. Prefer `token_file` or the `agent-token` credential.
    pub token: Option<Secret>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
    /// Extra CA certificate (PEM) trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout_ms: u32,
    pub request_timeout_ms: u32,
    pub backoff_min_ms: u32,
    pub backoff_max_ms: u32,
    /// Consecutive failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// Seconds the breaker stays open before a trial request.
    pub breaker_open_s: u32,
    /// Longest `Retry-After` honoured, in seconds: an agent asking for
    /// more is asked again after this long.
    pub retry_after_max_s: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            url: None,
            token: None,
            token_file: None,
            ca_file: None,
            connect_timeout_ms: 3_000,
            request_timeout_ms: 10_000,
            backoff_min_ms: 500,
            backoff_max_ms: 60_000,
            breaker_failures: 5,
            breaker_open_s: 30,
            retry_after_max_s: 300,
        }
    }
}

/// `[outbox]`: durable queue of transcripts awaiting delivery.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    pub path: PathBuf,
    pub max_items: u32,
    /// Times the agent may answer one item with a server error (5xx but
    /// 503) before it moves to the dead-letter table, so the items behind
    /// it keep flowing. Connection errors, timeouts, 429 and 503 do not
    /// count: an agent that is down must not empty the outbox.
    pub max_attempts: u32,
    /// Hours an item may wait before it moves to the dead-letter table;
    /// 0 = no limit (the default: an outage never empties the outbox).
    pub max_age_h: u32,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/var/lib/talkie/outbox.db"),
            max_items: 10_000,
            max_attempts: 10,
            max_age_h: 0,
        }
    }
}

/// `[status]`: the technician's status page and local API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StatusConfig {
    pub listen: SocketAddr,
    /// Technician token. Prefer `token_file` or the `status-token` credential.
    pub token: Option<Secret>,
    pub token_file: Option<PathBuf>,
    /// `POST /api/v1/restart` is refused until the service has run this
    /// long (so a script cannot restart it into systemd's start limit).
    pub restart_min_uptime_s: u32,
}

impl Default for StatusConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            token: None,
            token_file: None,
            restart_min_uptime_s: 60,
        }
    }
}

/// `[watchdog]`: health-gated systemd watchdog.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Send `WATCHDOG=1` when systemd asks for it (`WatchdogSec=`).
    pub enabled: bool,
    /// A loop whose heartbeat is older than this counts as wedged.
    pub stall_ms: u32,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stall_ms: 5_000,
        }
    }
}

/// `[board]`: the board health the status page shows (`crate::platform::board`).
/// Figures past these limits are warnings, not readiness failures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BoardConfig {
    /// Where `/proc` and `/sys` are read from (`/` on a device; tests point
    /// it at a fake tree).
    pub root: PathBuf,
    /// CPU temperature that is a warning, °C.
    pub temp_warn_c: f64,
    /// Free space on the outbox's filesystem under which it is a warning, %.
    pub disk_warn_pct: f64,
    /// Available memory under which it is a warning, %.
    pub mem_warn_pct: f64,
    /// Share of the open-file limit in use over which it is a warning, %.
    pub fd_warn_pct: f64,
}

impl Default for BoardConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            temp_warn_c: 80.0,
            disk_warn_pct: 10.0,
            mem_warn_pct: 10.0,
            fd_warn_pct: 80.0,
        }
    }
}

/// `[debug]`: opt-in recordings for debugging (`crate::ptt::recordings`). Off
/// by default: with it on, what visitors say is kept on the device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DebugConfig {
    /// Keep the last N utterances' audio (16 kHz WAV) with transcript, VAD
    /// segments and timings in `device.state_dir`/recordings; 0 = off.
    pub keep_utterances: u32,
    /// Recordings older than this are deleted, hours.
    pub keep_hours: u32,
    /// The recordings' total size never passes this, MiB (oldest go first).
    pub keep_max_mb: u32,
}

impl Default for DebugConfig {
    fn default() -> Self {
        Self {
            keep_utterances: 0,
            keep_hours: 24,
            keep_max_mb: 64,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
    /// Native journald records with structured fields (under systemd).
    Journald,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `tracing` filter: `info`, `debug`, `talkie=debug,warn`, …
    /// `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Pretty,
        }
    }
}
