//! Range, path and cross-key checks that serde's types cannot express.
//! Each problem is `(section.key, message naming what is allowed)`.

use super::schema::{AudioBackend, Config, GpioBackend, LedKind};
use std::fmt::Display;
use std::ops::RangeInclusive;

type Problems = Vec<(String, String)>;

fn range<T: PartialOrd + Display + Copy>(
    p: &mut Problems,
    key: &str,
    value: T,
    allowed: RangeInclusive<T>,
) {
    if !allowed.contains(&value) {
        p.push((
            key.to_owned(),
            format!(
                "{value} is out of range (allowed: {} to {})",
                allowed.start(),
                allowed.end()
            ),
        ));
    }
}

fn check(p: &mut Problems, key: &str, ok: bool, message: impl Into<String>) {
    if !ok {
        p.push((key.to_owned(), message.into()));
    }
}

fn existing_file(p: &mut Problems, key: &str, path: Option<&std::path::Path>, needed_for: &str) {
    match path {
        None => p.push((key.to_owned(), format!("must be set {needed_for}"))),
        Some(f) if !f.is_file() => p.push((
            key.to_owned(),
            format!("{} does not exist or is not a file", f.display()),
        )),
        Some(_) => {}
    }
}

/// All problems in `c`, in file order.
pub(super) fn validate(c: &Config) -> Problems {
    let mut p = Problems::new();
    device(&mut p, c);
    state_dir(&mut p, c);
    audio(&mut p, c);
    vad(&mut p, c);
    stt(&mut p, c);
    ptt(&mut p, c);
    gpio(&mut p, c);
    agent(&mut p, c);
    outbox(&mut p, c);
    restart_limit(&mut p, c);
    watchdog(&mut p, c);
    board(&mut p, c);
    debug(&mut p, c);
    log(&mut p, c);
    p
}

fn device(p: &mut Problems, c: &Config) {
    let id = &c.device.id;
    check(
        p,
        "device.id",
        !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)),
        format!("{id:?} is not allowed (1 to 64 characters of A-Z a-z 0-9 - _ .)"),
    );
}

fn audio(p: &mut Problems, c: &Config) {
    let a = &c.audio;
    match a.backend {
        AudioBackend::Alsa => check(
            p,
            "audio.device",
            !a.device.trim().is_empty(),
            "must name an ALSA PCM (e.g. \"default\", \"hw:1,0\"; see `talkie devices`)",
        ),
        AudioBackend::File => existing_file(
            p,
            "audio.file",
            a.file.as_deref(),
            "when audio.backend = \"file\" (a WAV file)",
        ),
    }
    range(p, "audio.rate", a.rate, 8_000..=192_000);
    range(p, "audio.channels", a.channels, 1..=2);
    range(p, "audio.period_ms", a.period_ms, 5..=200);
    range(p, "audio.preroll_ms", a.preroll_ms, 0..=5_000);
    range(p, "audio.max_utterance_s", a.max_utterance_s, 1..=120);
    range(p, "audio.rt_priority", a.rt_priority, 0..=99);
}

fn vad(p: &mut Problems, c: &Config) {
    let v = &c.vad;
    check(
        p,
        "vad.threshold",
        v.threshold > 0.0 && v.threshold < 1.0,
        format!(
            "{} is out of range (allowed: between 0 and 1, exclusive)",
            v.threshold
        ),
    );
    range(p, "vad.min_speech_ms", v.min_speech_ms, 0..=10_000);
    range(p, "vad.min_silence_ms", v.min_silence_ms, 0..=10_000);
    range(p, "vad.speech_pad_ms", v.speech_pad_ms, 0..=1_000);
    check(
        p,
        "vad.model",
        !v.model.as_os_str().is_empty(),
        "must be a path",
    );
}

fn stt(p: &mut Problems, c: &Config) {
    check(
        p,
        "stt.model_dir",
        !c.stt.model_dir.as_os_str().is_empty(),
        "must be a directory path",
    );
    range(p, "stt.max_tokens", c.stt.max_tokens, 1..=448);
    range(
        p,
        "stt.latency_budget_ms",
        c.stt.latency_budget_ms,
        50..=60_000,
    );
    if let super::schema::Threads::Fixed(n) = c.stt.threads {
        range(p, "stt.threads", n, 1..=16);
    }
    check(
        p,
        "stt.calibration_file",
        !c.stt.calibration_file.as_os_str().is_empty(),
        "must be a file path",
    );
    range(
        p,
        "stt.encoder_margin_frames",
        c.stt.encoder_margin_frames,
        128..=2000,
    );
}

fn ptt(p: &mut Problems, c: &Config) {
    range(p, "ptt.min_press_ms", c.ptt.min_press_ms, 0..=5_000);
    range(
        p,
        "ptt.finish_on_stop_ms",
        c.ptt.finish_on_stop_ms,
        0..=20_000,
    );
    check(
        p,
        "ptt.vad_auto_stop_ms",
        c.ptt.vad_auto_stop_ms == 0 || (200..=10_000).contains(&c.ptt.vad_auto_stop_ms),
        format!(
            "{} is out of range (allowed: 0 = off, or 200 to 10000)",
            c.ptt.vad_auto_stop_ms
        ),
    );
    range(
        p,
        "ptt.speculate_after_ms",
        c.ptt.speculate_after_ms,
        100..=5_000,
    );
}

fn gpio(p: &mut Problems, c: &Config) {
    let g = &c.gpio;
    if g.backend == GpioBackend::Script {
        existing_file(
            p,
            "gpio.script",
            g.script.as_deref(),
            "when gpio.backend = \"script\" (a TOML button timeline)",
        );
    }
    range(p, "gpio.button_pin", g.button_pin, 0..=27);
    range(p, "gpio.debounce_ms", g.debounce_ms, 0..=1_000);
    for (i, pin) in g.led_pins.iter().enumerate() {
        range(p, &format!("gpio.led_pins[{i}]"), *pin, 0..=27);
    }
    if g.leds == LedKind::Pins && g.backend == GpioBackend::Rppal {
        let mut all = g.led_pins.to_vec();
        all.push(g.button_pin);
        all.sort_unstable();
        all.dedup();
        check(
            p,
            "gpio.led_pins",
            all.len() == 4,
            format!(
                "{:?} must be three different pins, none of them gpio.button_pin ({})",
                g.led_pins, g.button_pin
            ),
        );
    }
    range(p, "gpio.apa102_spi_bus", g.apa102_spi_bus, 0..=1);
    range(p, "gpio.apa102_spi_cs", g.apa102_spi_cs, 0..=1);
    range(p, "gpio.apa102_count", g.apa102_count, 1..=64);
    range(p, "gpio.apa102_brightness", g.apa102_brightness, 0..=31);
}

fn agent(p: &mut Problems, c: &Config) {
    let ag = &c.agent;
    if let Some(url) = &ag.url {
        check(
            p,
            "agent.url",
            (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() > "https://".len()
                && !url.contains(char::is_whitespace),
            format!("{url:?} is not allowed (an http:// or https:// URL)"),
        );
    }
    if let Some(ca) = &ag.ca_file {
        existing_file(p, "agent.ca_file", Some(ca), "");
    }
    range(
        p,
        "agent.connect_timeout_ms",
        ag.connect_timeout_ms,
        100..=60_000,
    );
    range(
        p,
        "agent.request_timeout_ms",
        ag.request_timeout_ms,
        100..=300_000,
    );
    range(p, "agent.backoff_min_ms", ag.backoff_min_ms, 10..=600_000);
    range(
        p,
        "agent.backoff_max_ms",
        ag.backoff_max_ms,
        ag.backoff_min_ms.min(3_600_000)..=3_600_000,
    );
    range(p, "agent.breaker_failures", ag.breaker_failures, 1..=1_000);
    range(p, "agent.breaker_open_s", ag.breaker_open_s, 1..=3_600);
    range(
        p,
        "agent.retry_after_max_s",
        ag.retry_after_max_s,
        1..=3_600,
    );
}

fn outbox(p: &mut Problems, c: &Config) {
    check(
        p,
        "outbox.path",
        !c.outbox.path.as_os_str().is_empty(),
        "must be a file path",
    );
    range(p, "outbox.max_items", c.outbox.max_items, 1..=1_000_000);
    range(
        p,
        "outbox.max_attempts",
        c.outbox.max_attempts,
        1..=1_000_000,
    );
    range(p, "outbox.max_age_h", c.outbox.max_age_h, 0..=87_600);
}

fn state_dir(p: &mut Problems, c: &Config) {
    check(
        p,
        "device.state_dir",
        !c.device.state_dir.as_os_str().is_empty(),
        "must be a directory path",
    );
}

fn restart_limit(p: &mut Problems, c: &Config) {
    range(
        p,
        "status.restart_min_uptime_s",
        c.status.restart_min_uptime_s,
        0..=86_400,
    );
}

fn watchdog(p: &mut Problems, c: &Config) {
    range(p, "watchdog.stall_ms", c.watchdog.stall_ms, 100..=600_000);
}

fn debug(p: &mut Problems, c: &Config) {
    let d = &c.debug;
    range(p, "debug.keep_utterances", d.keep_utterances, 0..=1000);
    range(p, "debug.keep_hours", d.keep_hours, 1..=720);
    range(p, "debug.keep_max_mb", d.keep_max_mb, 1..=4096);
}

fn board(p: &mut Problems, c: &Config) {
    let b = &c.board;
    check(
        p,
        "board.root",
        b.root.is_absolute(),
        "must be an absolute path (\"/\" on a device)",
    );
    for (key, v, max) in [
        ("board.temp_warn_c", b.temp_warn_c, 150.0),
        ("board.disk_warn_pct", b.disk_warn_pct, 100.0),
        ("board.mem_warn_pct", b.mem_warn_pct, 100.0),
        ("board.fd_warn_pct", b.fd_warn_pct, 100.0),
    ] {
        check(
            p,
            key,
            v.is_finite() && (0.0..=max).contains(&v),
            format!("{v} is out of range (allowed: 0 to {max})"),
        );
    }
}

fn log(p: &mut Problems, c: &Config) {
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&c.log.level) {
        p.push((
            "log.level".to_owned(),
            format!(
                "{:?} is not a log filter ({e}; allowed: error, warn, info, debug, trace, or target=level lists)",
                c.log.level
            ),
        ));
    }
}
