//! `/metrics`: Prometheus text exposition (version 0.0.4), written from the
//! snapshots every loop already keeps. The counters live in lock-free
//! atomics owned by the loops; a metrics crate would keep a second copy, so
//! the few lines of the text format are written here and checked by a
//! parser in the tests.

use super::Shared;
use crate::agent::link::FailureClass;
use crate::base::telemetry::{HistogramSnapshot, LATENCY_BUCKETS_MS};
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; label values are escaped as the text format says
    /// (`\\`, `\"`, `\n`), whatever they hold.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        let _ = write!(self.0, "{name}");
        for (i, (k, value)) in labels.iter().enumerate() {
            let _ = write!(self.0, "{}{k}=\"", if i == 0 { "{" } else { "," });
            for c in value.chars() {
                match c {
                    '\\' => self.0.push_str("\\\\"),
                    '"' => self.0.push_str("\\\""),
                    '\n' => self.0.push_str("\\n"),
                    c => self.0.push(c),
                }
            }
            self.0.push('"');
        }
        let _ = writeln!(self.0, "{}{v}", if labels.is_empty() { " " } else { "} " });
    }

    fn counter(&mut self, name: &str, help: &str, v: u64) {
        self.counter_f64(name, help, v as f64);
    }

    fn counter_f64(&mut self, name: &str, help: &str, v: f64) {
        self.family(name, "counter", help);
        self.sample(name, &[], v);
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], v);
    }

    /// A histogram in seconds from a snapshot in milliseconds.
    fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        for (i, b) in LATENCY_BUCKETS_MS.iter().enumerate() {
            let le = b / 1000.0;
            let c = h.cumulative.get(i).copied().unwrap_or(0);
            self.sample(
                &format!("{name}_bucket"),
                &[("le", &le.to_string())],
                c as f64,
            );
        }
        self.sample(&format!("{name}_bucket"), &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum_ms / 1000.0);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

/// The whole exposition.
pub fn render(s: &Shared) -> String {
    let mut o = Out(String::with_capacity(8192));
    service(&mut o, s);
    audio(&mut o, s);
    ptt(&mut o, s);
    process(&mut o, s);
    board(&mut o, s);
    clock(&mut o);
    if let Some(g) = &s.agent {
        agent(&mut o, g);
    }
    o.0
}

/// Build, recognition settings, uptime, readiness.
fn service(o: &mut Out, s: &Shared) {
    o.family(
        "talkie_build_info",
        "gauge",
        "Firmware version and git revision.",
    );
    o.sample("talkie_build_info", &[("version", crate::VERSION)], 1.0);
    if let Some(c) = s.calibration.get() {
        o.family(
            "talkie_stt_info",
            "gauge",
            "Recognition settings in use (stt.model/precision/threads, measured or fixed).",
        );
        o.sample(
            "talkie_stt_info",
            &[
                ("model", &c.model),
                ("precision", &c.chosen.precision.to_string()),
                ("decoder_precision", &c.chosen.forms().decoder.to_string()),
                ("threads", &c.chosen.threads.to_string()),
                ("decoder_threads", &c.chosen.decoder_threads().to_string()),
                ("source", c.source()),
                ("vocab_kernel", &c.cpu.vocab_kernel),
            ],
            1.0,
        );
        o.gauge(
            "talkie_stt_calibration_seconds",
            "Wall time of the start-up calibration that chose them (0 when reused or fixed).",
            if c.reused {
                0.0
            } else {
                c.calibration_ms / 1000.0
            },
        );
    }
    o.gauge(
        "talkie_uptime_seconds",
        "Seconds since the service started.",
        s.started.elapsed().as_secs_f64(),
    );
    if let Some(r) = s.runs.get() {
        o.gauge(
            "talkie_service_starts_24h",
            "Starts of the service in the last 24 h, this one included (runs.json).",
            r.starts_24h as f64,
        );
        if let Some(end) = r.previous_end {
            o.family(
                "talkie_previous_run_end",
                "gauge",
                "How the previous run ended: clean, restart, failed, or killed (no end recorded: watchdog, OOM, kill -9, power).",
            );
            o.sample("talkie_previous_run_end", &[("how", end.as_str())], 1.0);
        }
    }
    o.gauge(
        "talkie_ready",
        "1 when models are loaded, audio is open and the outbox is open.",
        f64::from(u8::from(super::readiness(s).is_empty())),
    );
}

/// The audio path: frames, drops, xruns, level, capture state.
fn audio(o: &mut Out, s: &Shared) {
    let a = s.audio.snapshot();
    o.counter(
        "talkie_audio_frames_captured_total",
        "Device frames read by the capture thread.",
        a.frames_captured,
    );
    o.counter(
        "talkie_audio_frames_dropped_total",
        "Device frames dropped because the audio thread was behind.",
        a.frames_dropped,
    );
    o.counter(
        "talkie_audio_xruns_total",
        "Capture overruns recovered.",
        a.xruns,
    );
    o.counter(
        "talkie_audio_stalls_total",
        "Capture waits that timed out.",
        a.stalls,
    );
    o.counter(
        "talkie_audio_reopen_attempts_total",
        "Attempts to reopen a lost microphone.",
        a.reopen_attempts,
    );
    o.counter(
        "talkie_audio_samples_processed_total",
        "16 kHz samples out of the resampler.",
        a.samples_processed,
    );
    o.gauge(
        "talkie_audio_level_rms_dbfs",
        "Recent RMS level of the microphone.",
        f64::from(a.level_rms_dbfs),
    );
    o.gauge(
        "talkie_audio_level_peak_dbfs",
        "Recent peak level of the microphone.",
        f64::from(a.level_peak_dbfs),
    );
    o.family(
        "talkie_audio_capture_state",
        "gauge",
        "1 for the current capture state.",
    );
    for st in ["starting", "running", "degraded", "ended", "failed"] {
        o.sample(
            "talkie_audio_capture_state",
            &[("state", st)],
            f64::from(u8::from(a.capture_state.as_str() == st)),
        );
    }
}

/// Push-to-talk: presses, utterances, outcomes, latencies.
fn ptt(o: &mut Out, s: &Shared) {
    let p = &s.ptt;
    o.counter(
        "talkie_ptt_presses_total",
        "Debounced button presses.",
        p.presses.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_utterances_total",
        "Utterances submitted for recognition.",
        p.utterances.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_transcripts_total",
        "Transcripts handed to the sink.",
        p.transcripts.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_too_short_total",
        "Presses shorter than ptt.min_press_ms.",
        p.too_short.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_busy_rejected_total",
        "Presses refused while busy.",
        p.busy_rejected.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_no_speech_total",
        "Utterances in which the VAD found no speech.",
        p.no_speech.load(Relaxed),
    );
    o.counter(
        "talkie_stt_failures_total",
        "Recognitions that failed.",
        p.stt_failures.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_tap_dropped_total",
        "16 kHz pieces the listener could not take.",
        p.tap_dropped.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_auto_stopped_total",
        "Utterances ended by length or trailing silence.",
        p.auto_stopped.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_speculative_runs_total",
        "Speculative recognitions started while the button was held.",
        p.spec_runs.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_speculative_hits_total",
        "Speculative results used as the transcript at release.",
        p.spec_hits.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_speculative_misses_total",
        "Speculative results discarded (speech came back after the cut).",
        p.spec_misses.load(Relaxed),
    );
    o.counter(
        "talkie_ptt_speculative_abandoned_total",
        "Speculative runs stopped at a decoder step (speech came back).",
        p.spec_abandoned.load(Relaxed),
    );
    o.counter_f64(
        "talkie_ptt_speculative_wasted_seconds_total",
        "Recognition time spent on speculative runs whose result was not used.",
        p.spec_wasted_us.load(Relaxed) as f64 / 1e6,
    );
    o.counter(
        "talkie_led_commands_dropped_total",
        "LED commands dropped (indicator thread behind).",
        p.led_dropped.load(Relaxed),
    );
    o.counter(
        "talkie_button_errors_total",
        "Button read errors.",
        p.button_errors.load(Relaxed),
    );
    o.histogram(
        "talkie_press_to_led_seconds",
        "Debounced press to the LEDs showing listening.",
        &p.press_to_led.snapshot(),
    );
    o.histogram(
        "talkie_release_to_text_seconds",
        "Release (or auto stop) to transcript ready.",
        &p.release_to_text.snapshot(),
    );
    o.histogram(
        "talkie_stt_seconds",
        "VAD + Whisper time per utterance.",
        &p.stt.snapshot(),
    );
}

/// The process and the status port: memory, descriptors, connections,
/// the outbox filesystem.
fn process(o: &mut Out, s: &Shared) {
    if let Some(rss) = crate::base::telemetry::resident_bytes() {
        o.gauge(
            "talkie_process_resident_memory_bytes",
            "Resident memory of the talkie process.",
            rss as f64,
        );
    }
    if let Some(n) = super::server::open_fds() {
        o.gauge(
            "talkie_process_open_fds",
            "Open file descriptors of the talkie process.",
            n as f64,
        );
    }
    o.gauge(
        "talkie_process_max_fds",
        "The process's open-file limit (RLIMIT_NOFILE, LimitNOFILE= in the unit).",
        super::server::fd_limit() as f64,
    );
    let c = &s.conns;
    o.gauge(
        "talkie_status_connections",
        "Connections to the status port open now.",
        c.open.load(Relaxed) as f64,
    );
    o.gauge(
        "talkie_status_connection_limit",
        "Most LAN connections the status port keeps at once.",
        c.limit.load(Relaxed) as f64,
    );
    o.counter(
        "talkie_status_connections_refused_total",
        "Connections closed at once because a connection cap was reached.",
        c.refused.load(Relaxed),
    );
    o.counter(
        "talkie_status_event_clients_dropped_total",
        "Live-event clients whose connection was closed because they stopped reading.",
        c.stalled_dropped.load(Relaxed),
    );
    o.counter(
        "talkie_status_accept_errors_total",
        "Failures to accept a connection (out of descriptors or buffers).",
        c.accept_errors.load(Relaxed),
    );
    o.counter(
        "talkie_status_auth_failures_total",
        "Wrong technician tokens presented (Bearer or login).",
        s.auth_failures.load(Relaxed),
    );
    if let Some(free) = s
        .outbox_path
        .as_deref()
        .and_then(crate::base::telemetry::free_bytes)
    {
        o.gauge(
            "talkie_outbox_filesystem_free_bytes",
            "Free space on the outbox's filesystem.",
            free as f64,
        );
    }
}

/// The board ([`crate::platform::board`]); a figure the board does not offer is
/// left out, not reported as 0.
fn board(o: &mut Out, s: &Shared) {
    let h = s.board_health();
    if let Some(t) = h.cpu_temp_c {
        o.gauge(
            "talkie_board_cpu_temperature_celsius",
            "Hottest thermal zone.",
            t,
        );
    }
    if let Some(t) = h.throttled {
        o.family(
            "talkie_board_throttled",
            "gauge",
            "Raspberry Pi firmware flags (get_throttled): 1 when set, now or since boot.",
        );
        for (flag, now, since) in [
            (
                "under_voltage",
                t.under_voltage_now,
                t.under_voltage_since_boot,
            ),
            ("freq_capped", t.freq_capped_now, t.freq_capped_since_boot),
            ("throttled", t.throttled_now, t.throttled_since_boot),
            (
                "soft_temp_limit",
                t.soft_temp_limit_now,
                t.soft_temp_limit_since_boot,
            ),
        ] {
            o.sample(
                "talkie_board_throttled",
                &[("flag", flag), ("when", "now")],
                f64::from(u8::from(now)),
            );
            o.sample(
                "talkie_board_throttled",
                &[("flag", flag), ("when", "since_boot")],
                f64::from(u8::from(since)),
            );
        }
    }
    if let Some(v) = h.mem_available_bytes {
        o.gauge(
            "talkie_board_memory_available_bytes",
            "MemAvailable of /proc/meminfo.",
            v as f64,
        );
    }
    if let Some(v) = h.mem_total_bytes {
        o.gauge(
            "talkie_board_memory_total_bytes",
            "MemTotal of /proc/meminfo.",
            v as f64,
        );
    }
    if let Some([l1, _, _]) = h.load_avg {
        o.gauge("talkie_board_load1", "1-minute load average.", l1);
    }
    if let Some(v) = h.uptime_s {
        o.gauge("talkie_board_uptime_seconds", "Seconds since boot.", v);
    }
    o.family(
        "talkie_board_warning",
        "gauge",
        "1 for each board figure past its [board] limit (temperature, power, throttling, disk, memory, file descriptors).",
    );
    for w in &h.warnings {
        o.sample("talkie_board_warning", &[("name", w.name)], 1.0);
    }
}

/// The agent link and its outbox.
fn agent(o: &mut Out, g: &crate::agent::AgentStats) {
    o.counter(
        "talkie_outbox_enqueued_total",
        "Transcripts committed to the outbox.",
        g.enqueued.load(Relaxed),
    );
    o.counter(
        "talkie_outbox_refused_total",
        "Transcripts the outbox refused (full or disk error).",
        g.enqueue_failed.load(Relaxed),
    );
    o.counter(
        "talkie_outbox_corrupt_recovered_total",
        "Corrupt outbox files moved aside.",
        g.corrupt_recovered.load(Relaxed),
    );
    o.gauge(
        "talkie_outbox_depth",
        "Transcripts waiting for the agent.",
        g.outbox_depth.load(Relaxed) as f64,
    );
    let oldest = g.oldest_created_ms.load(Relaxed);
    let age = if oldest == 0 {
        0.0
    } else {
        crate::agent::outbox::unix_ms().saturating_sub(oldest) as f64 / 1000.0
    };
    o.gauge(
        "talkie_outbox_oldest_age_seconds",
        "Age of the oldest waiting transcript.",
        age,
    );
    o.counter(
        "talkie_agent_deliveries_total",
        "Transcripts the agent acknowledged (2xx or 409).",
        g.delivered.load(Relaxed),
    );
    o.counter(
        "talkie_agent_duplicates_total",
        "Acknowledgements that were 409 (already delivered).",
        g.already_delivered.load(Relaxed),
    );
    o.counter(
        "talkie_agent_dead_letters_total",
        "Transcripts moved to the dead-letter table (refused with a 4xx, too many server errors, too old).",
        g.dead_lettered.load(Relaxed),
    );
    o.counter(
        "talkie_agent_dead_letters_max_attempts_total",
        "Of those: the agent failed on them outbox.max_attempts times.",
        g.poisoned.load(Relaxed),
    );
    o.counter(
        "talkie_agent_dead_letters_expired_total",
        "Of those: older than outbox.max_age_h.",
        g.expired.load(Relaxed),
    );
    o.gauge(
        "talkie_outbox_dead_letters",
        "Dead letters kept (talkie outbox dead-letter list).",
        g.dead_letter_depth.load(Relaxed) as f64,
    );
    o.gauge(
        "talkie_agent_delivery_paused",
        "The HTTP status delivery is paused on (401, 403, 404: token or URL rejected); 0 = delivering.",
        f64::from(g.paused_status.load(Relaxed)),
    );
    o.counter(
        "talkie_agent_paused_total",
        "Times delivery paused because the agent rejected the token or URL.",
        g.paused.load(Relaxed),
    );
    o.family(
        "talkie_agent_retries_total",
        "counter",
        "Failed attempts that will be retried, by class.",
    );
    for (i, c) in FailureClass::ALL.iter().enumerate() {
        o.sample(
            "talkie_agent_retries_total",
            &[("class", c.as_str())],
            g.retries[i].load(Relaxed) as f64,
        );
    }
    o.counter(
        "talkie_agent_breaker_opened_total",
        "Times the circuit breaker opened.",
        g.breaker_opened.load(Relaxed),
    );
    o.gauge(
        "talkie_agent_breaker_state",
        "Circuit breaker: 0 closed, 1 open, 2 half-open.",
        f64::from(g.breaker_state.load(Relaxed)),
    );
    o.histogram(
        "talkie_agent_request_seconds",
        "Agent request latency.",
        &g.latency.snapshot(),
    );
    o.gauge(
        "talkie_agent_last_http_status",
        "HTTP status of the agent's last answer to a delivery (0: none yet).",
        f64::from(g.last_http_status.load(Relaxed)),
    );
    if let Some(off) = g.clock_offset_s() {
        o.gauge(
            "talkie_agent_clock_offset_seconds",
            "The agent's clock minus this board's, from its last Date header.",
            off,
        );
    }
    if let Some(r) = g.reachability() {
        o.gauge(
            "talkie_agent_reachable",
            "1 when the last reachability check (DNS, connect, request) passed every step.",
            if r.failed_step.is_none() { 1.0 } else { 0.0 },
        );
        for (name, help, v) in [
            (
                "talkie_agent_dns_seconds",
                "DNS resolution of the agent's host in the last check.",
                r.dns_ms,
            ),
            (
                "talkie_agent_connect_seconds",
                "TCP connect to the agent in the last check.",
                r.connect_ms,
            ),
            (
                "talkie_agent_probe_request_seconds",
                "The check's HEAD request (TLS handshake included).",
                r.request_ms,
            ),
        ] {
            if let Some(ms) = v {
                o.gauge(name, help, ms / 1000.0);
            }
        }
        if let Some(t) = r.cert_not_after_unix_s {
            o.gauge(
                "talkie_agent_cert_expiry_timestamp_seconds",
                "End of validity of the agent's TLS certificate (Unix time).",
                t as f64,
            );
        }
    }
}

/// The system clock as the kernel sees it.
fn clock(o: &mut Out) {
    if let Some(c) = crate::platform::board::clock_sync() {
        o.gauge(
            "talkie_clock_synchronized",
            "1 when the kernel says the system clock is synchronized (NTP).",
            if c.synchronized { 1.0 } else { 0.0 },
        );
        o.gauge(
            "talkie_clock_max_error_seconds",
            "The kernel's bound on the system clock's error.",
            c.max_error_us as f64 / 1e6,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 29: label values were written as they came; a quote, a
    /// backslash or a newline in one (a version string, a board's warning)
    /// broke the exposition. They are escaped, and a parser reads back the
    /// value given.
    #[test]
    fn hostile_label_values_are_escaped_and_read_back() {
        let hostile = "v1\"} 1\nfake_metric 666 \\ end";
        let mut o = Out(String::new());
        o.family("talkie_test_info", "gauge", "A test.");
        o.sample(
            "talkie_test_info",
            &[("version", hostile), ("kind", "plain")],
            1.0,
        );
        o.sample("talkie_test_plain", &[], 2.5);
        assert_eq!(
            o.0.lines().nth(2).unwrap(),
            r#"talkie_test_info{version="v1\"} 1\nfake_metric 666 \\ end",kind="plain"} 1"#
        );
        // The injected text stays inside the one label value: four lines,
        // none of them a sample of its own.
        assert_eq!(o.0.lines().count(), 4, "{}", o.0);
        assert!(
            !o.0.lines().any(|l| l.starts_with("fake_metric")),
            "{}",
            o.0
        );
    }
}
