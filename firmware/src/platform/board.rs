#![cfg_attr(not(test), deny(clippy::indexing_slicing))]
//! Board health for the technician: what the kernel says about the board
//! the service runs on, read from `/proc` and `/sys` under a root that
//! tests point at a fake tree (`board.root`).
//!
//! - CPU temperature: the hottest `/sys/class/thermal/thermal_zone*/temp`
//!   (millidegrees Celsius);
//! - Raspberry Pi throttling: the firmware's `get_throttled` value
//!   (`/sys/devices/platform/soc/soc:firmware/get_throttled`, hex) decoded
//!   into now / since boot for under-voltage, frequency capped, throttled
//!   and soft temperature limit;
//! - memory (`/proc/meminfo`), load average (`/proc/loadavg`), uptime
//!   (`/proc/uptime`).
//!
//! A missing source (not a Pi, no thermal zone) is `None`, shown as "not
//! available", never an error. Thresholds turn figures into warnings with
//! a reason; warnings do not fail readiness. Every read is bounded (a few
//! small files, at most [`MAX_FILE`] bytes each).

use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Most bytes read from one kernel file.
pub const MAX_FILE: u64 = 64 * 1024;
/// Thermal zones looked at, at most.
const MAX_ZONES: usize = 16;
/// Where the Raspberry Pi firmware driver publishes `get_throttled`.
pub const THROTTLED_FILE: &str = "sys/devices/platform/soc/soc:firmware/get_throttled";

/// When a figure becomes a warning (`[board]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub temp_c: f64,
    pub disk_free_pct: f64,
    pub mem_available_pct: f64,
    pub fd_used_pct: f64,
}

impl Thresholds {
    /// The `[board]` section's warning limits.
    pub fn from_config(b: &crate::base::config::BoardConfig) -> Self {
        Self {
            temp_c: b.temp_warn_c,
            disk_free_pct: b.disk_warn_pct,
            mem_available_pct: b.mem_warn_pct,
            fd_used_pct: b.fd_warn_pct,
        }
    }
}

/// The Raspberry Pi firmware's throttling flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Throttled {
    pub raw: u32,
    pub under_voltage_now: bool,
    pub freq_capped_now: bool,
    pub throttled_now: bool,
    pub soft_temp_limit_now: bool,
    pub under_voltage_since_boot: bool,
    pub freq_capped_since_boot: bool,
    pub throttled_since_boot: bool,
    pub soft_temp_limit_since_boot: bool,
}

impl Throttled {
    /// Decode the bits documented for `vcgencmd get_throttled`.
    pub fn decode(raw: u32) -> Self {
        let bit = |n: u32| raw & (1 << n) != 0;
        Self {
            raw,
            under_voltage_now: bit(0),
            freq_capped_now: bit(1),
            throttled_now: bit(2),
            soft_temp_limit_now: bit(3),
            under_voltage_since_boot: bit(16),
            freq_capped_since_boot: bit(17),
            throttled_since_boot: bit(18),
            soft_temp_limit_since_boot: bit(19),
        }
    }
}

/// A figure past its threshold, with what to do about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Warning {
    pub name: &'static str,
    pub reason: String,
}

/// One reading of the board.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BoardHealth {
    pub cpu_temp_c: Option<f64>,
    pub throttled: Option<Throttled>,
    pub mem_total_bytes: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    pub load_avg: Option<[f64; 3]>,
    pub uptime_s: Option<f64>,
    /// The outbox's filesystem: available and total bytes.
    pub disk_free_bytes: Option<u64>,
    pub disk_total_bytes: Option<u64>,
    pub fds_open: Option<u64>,
    pub fds_max: Option<u64>,
    pub warnings: Vec<Warning>,
}

/// What the process knows that the board tree does not.
#[derive(Debug, Clone, Default)]
pub struct ProcessFacts {
    /// Available and total bytes of the outbox's filesystem.
    pub disk: Option<(u64, u64)>,
    pub fds_open: Option<u64>,
    pub fds_max: Option<u64>,
}

/// A small kernel or system file as text (at most [`MAX_FILE`] bytes);
/// `None` when it is missing, not a regular file or unreadable.
pub fn read_small(path: &Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(MAX_FILE).read_to_string(&mut s).ok()?;
    Some(s)
}

fn cpu_temp_c(root: &Path) -> Option<f64> {
    let zones = std::fs::read_dir(root.join("sys/class/thermal")).ok()?;
    zones
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .take(MAX_ZONES)
        .filter_map(|e| read_small(&e.path().join("temp")))
        .filter_map(|t| t.trim().parse::<f64>().ok())
        .map(|milli| milli / 1000.0)
        .filter(|c| c.is_finite() && (-60.0..=200.0).contains(c))
        .reduce(f64::max)
}

fn throttled(root: &Path) -> Option<Throttled> {
    let text = read_small(&root.join(THROTTLED_FILE))?;
    let t = text.trim();
    let hex = t.strip_prefix("0x").unwrap_or(t);
    u32::from_str_radix(hex, 16).ok().map(Throttled::decode)
}

/// `MemTotal` and `MemAvailable` in bytes.
fn meminfo(root: &Path) -> (Option<u64>, Option<u64>) {
    let Some(text) = read_small(&root.join("proc/meminfo")) else {
        return (None, None);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

fn load_avg(root: &Path) -> Option<[f64; 3]> {
    let text = read_small(&root.join("proc/loadavg"))?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn uptime_s(root: &Path) -> Option<f64> {
    read_small(&root.join("proc/uptime"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn pct(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 * 100.0 / whole as f64)
}

/// Read the board under `root` (`/` on a device) and judge it.
pub fn read(root: &Path, facts: &ProcessFacts, limits: &Thresholds) -> BoardHealth {
    let (mem_total, mem_avail) = meminfo(root);
    let mut h = BoardHealth {
        cpu_temp_c: cpu_temp_c(root),
        throttled: throttled(root),
        mem_total_bytes: mem_total,
        mem_available_bytes: mem_avail,
        load_avg: load_avg(root),
        uptime_s: uptime_s(root),
        disk_free_bytes: facts.disk.map(|d| d.0),
        disk_total_bytes: facts.disk.map(|d| d.1),
        fds_open: facts.fds_open,
        fds_max: facts.fds_max,
        warnings: Vec::new(),
    };
    h.warnings = judge(&h, limits);
    h
}

/// The warnings for a reading.
pub fn judge(h: &BoardHealth, limits: &Thresholds) -> Vec<Warning> {
    let mut w = Vec::new();
    if let Some(t) = h.cpu_temp_c.filter(|t| *t >= limits.temp_c) {
        w.push(Warning {
            name: "temperature",
            reason: format!(
                "CPU at {t:.0} °C (warning at {:.0} °C): the board throttles soon or already does; give it air or a heatsink",
                limits.temp_c
            ),
        });
    }
    if let Some(t) = h.throttled {
        if t.under_voltage_now || t.under_voltage_since_boot {
            w.push(Warning {
                name: "power",
                reason: format!(
                    "under-voltage {} (get_throttled {:#x}): the power supply is too weak or its cable too thin; use the official 5 V supply",
                    if t.under_voltage_now { "now" } else { "since boot" },
                    t.raw
                ),
            });
        }
        if t.throttled_now || t.freq_capped_now || t.soft_temp_limit_now {
            w.push(Warning {
                name: "throttling",
                reason: format!(
                    "the CPU is slowed down now (get_throttled {:#x}): recognition takes longer",
                    t.raw
                ),
            });
        }
    }
    if let Some(p) = h
        .disk_free_bytes
        .zip(h.disk_total_bytes)
        .and_then(|(f, t)| pct(f, t))
        .filter(|p| *p < limits.disk_free_pct)
    {
        w.push(Warning {
            name: "disk",
            reason: format!(
                "{p:.1} % free on the outbox's filesystem (warning under {:.0} %): transcripts are refused when it is full",
                limits.disk_free_pct
            ),
        });
    }
    if let Some(p) = h
        .mem_available_bytes
        .zip(h.mem_total_bytes)
        .and_then(|(a, t)| pct(a, t))
        .filter(|p| *p < limits.mem_available_pct)
    {
        w.push(Warning {
            name: "memory",
            reason: format!(
                "{p:.1} % of memory available (warning under {:.0} %)",
                limits.mem_available_pct
            ),
        });
    }
    if let Some(p) = h
        .fds_open
        .zip(h.fds_max)
        .and_then(|(o, m)| pct(o, m))
        .filter(|p| *p > limits.fd_used_pct)
    {
        w.push(Warning {
            name: "file descriptors",
            reason: format!(
                "{p:.0} % of the open-file limit in use (warning over {:.0} %): many connections to the status port?",
                limits.fd_used_pct
            ),
        });
    }
    w
}

/// The root a device reads: `/`.
pub fn default_root() -> PathBuf {
    PathBuf::from("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Thresholds {
        Thresholds {
            temp_c: 80.0,
            disk_free_pct: 10.0,
            mem_available_pct: 10.0,
            fd_used_pct: 80.0,
        }
    }

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A Pi at 85 °C that saw under-voltage since boot: two warnings with
    /// reasons; every figure read.
    #[test]
    fn a_hot_under_powered_pi_gives_two_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        put(root, "sys/class/thermal/thermal_zone0/temp", "85012\n");
        put(root, "sys/class/thermal/thermal_zone1/temp", "40000\n");
        put(root, THROTTLED_FILE, "0x50000\n");
        put(
            root,
            "proc/meminfo",
            "MemTotal:        1000000 kB\nMemFree:  1 kB\nMemAvailable:     500000 kB\n",
        );
        put(root, "proc/loadavg", "0.52 0.40 0.30 1/123 4567\n");
        put(root, "proc/uptime", "3600.25 7000.00\n");
        let facts = ProcessFacts {
            disk: Some((50, 100)),
            fds_open: Some(10),
            fds_max: Some(4096),
        };
        let h = read(root, &facts, &limits());
        assert_eq!(h.cpu_temp_c, Some(85.012));
        let t = h.throttled.unwrap();
        assert!(t.under_voltage_since_boot && t.throttled_since_boot && !t.under_voltage_now);
        assert_eq!(h.mem_available_bytes, Some(500_000 * 1024));
        assert_eq!(h.load_avg, Some([0.52, 0.40, 0.30]));
        assert_eq!(h.uptime_s, Some(3600.25));
        let names: Vec<&str> = h.warnings.iter().map(|w| w.name).collect();
        assert_eq!(names, ["temperature", "power"]);
        assert!(h.warnings[0].reason.contains("85 °C"), "{:?}", h.warnings);
        assert!(
            h.warnings[1].reason.contains("since boot"),
            "{:?}",
            h.warnings
        );
    }

    /// Not a Pi, no thermal zone, no /proc: nothing available, no warning,
    /// no error.
    #[test]
    fn missing_sources_are_not_available_not_errors() {
        let dir = tempfile::tempdir().unwrap();
        let h = read(dir.path(), &ProcessFacts::default(), &limits());
        assert_eq!(h, BoardHealth::default(), "every figure None, no warnings");
        // Garbage is not a figure either.
        put(dir.path(), THROTTLED_FILE, "not hex");
        put(dir.path(), "sys/class/thermal/thermal_zone0/temp", "NaN");
        put(dir.path(), "proc/loadavg", "1.0");
        let h = read(dir.path(), &ProcessFacts::default(), &limits());
        assert_eq!((h.throttled, h.cpu_temp_c, h.load_avg), (None, None, None));
    }

    #[test]
    fn disk_memory_and_descriptors_warn_past_their_limits() {
        let h = BoardHealth {
            disk_free_bytes: Some(5),
            disk_total_bytes: Some(100),
            mem_available_bytes: Some(9),
            mem_total_bytes: Some(100),
            fds_open: Some(900),
            fds_max: Some(1000),
            throttled: Some(Throttled::decode(0x4)),
            ..BoardHealth::default()
        };
        let names: Vec<&str> = judge(&h, &limits()).iter().map(|w| w.name).collect();
        assert_eq!(names, ["throttling", "disk", "memory", "file descriptors"]);
    }
}

/// The kernel's view of the system clock (`adjtimex` with no change
/// requested: read only). NTP/chrony/timesyncd set "synchronized"; a board
/// without an RTC that never reached a time server is not, and TLS to the
/// agent fails on certificate dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClockSync {
    pub synchronized: bool,
    /// The kernel's bound on the clock's error, microseconds.
    pub max_error_us: i64,
    pub est_error_us: i64,
}

/// Read the clock's synchronization state; `None` if the kernel refuses.
// `timex` fields are C longs: i64 here, i32 on armv7.
#[allow(clippy::useless_conversion)]
pub fn clock_sync() -> Option<ClockSync> {
    // SAFETY: a zeroed `timex` with `modes = 0` asks for no change; the
    // kernel only fills it in.
    let mut tx: libc::timex = unsafe { std::mem::zeroed() };
    let state = unsafe { libc::adjtimex(&mut tx) };
    if state < 0 {
        return None;
    }
    Some(ClockSync {
        synchronized: state != libc::TIME_ERROR && tx.status & libc::STA_UNSYNC == 0,
        max_error_us: i64::from(tx.maxerror),
        est_error_us: i64::from(tx.esterror),
    })
}
