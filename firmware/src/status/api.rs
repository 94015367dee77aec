//! The JSON bodies the status API returns, as types: what a field means is
//! written once, here, and `docs/status-api.md` describes the API from
//! these. The handlers build them from the service's snapshots
//! ([`status_doc`], [`super::charts::charts_doc`]); serialising one is the
//! response.

use super::*;
use crate::agent::reach::Reachability;
use serde::Serialize;

/// `GET /api/v1/status`.
#[derive(Debug, Serialize)]
pub struct StatusDoc {
    pub device_id: String,
    /// `talkie --version`.
    pub version: &'static str,
    pub uptime_s: u64,
    /// Same as `/readyz`.
    pub ready: bool,
    pub not_ready_because: Vec<&'static str>,
    /// The page's health list, each with the reason it fails.
    pub health: Vec<Check>,
    pub board: crate::platform::board::BoardHealth,
    pub time: TimeView,
    /// Starts in the last 24 h and how the previous run ended.
    pub runs: Option<crate::base::runs::RunSummary>,
    /// RAUC's slot and Mender's artifact, where present.
    pub updates: crate::platform::updates::UpdateState,
    pub recordings: RecordingsView,
    /// The LED state: `idle`, `listening`, `processing`, `error`, `offline`…
    pub state: &'static str,
    /// `technician` or `anonymous`.
    pub access: &'static str,
    /// A technician token is configured (the page shows the login form).
    pub login_available: bool,
    pub microphone: Microphone,
    pub push_to_talk: PushToTalk,
    /// Model files in use (file, kind, precision, sha256).
    pub models: serde_json::Value,
    /// Precision, threads, how they were chosen, the timings, the CPU.
    pub stt: Option<serde_json::Value>,
    /// `None` without `agent.url`.
    pub agent: Option<AgentView>,
    /// With the technician token only.
    #[serde(flatten)]
    pub technician: Option<TechnicianView>,
}

/// The clock.
#[derive(Debug, Serialize)]
pub struct TimeView {
    pub now_unix_ms: u64,
    /// The kernel's NTP status (`adjtimex`); `None` where unknown.
    pub synchronized: Option<bool>,
    pub max_error_ms: Option<f64>,
    /// The agent's clock minus ours, from its last `Date` header.
    pub agent_offset_s: Option<f64>,
    /// Why the clock is a problem, when it is.
    pub warning: Option<String>,
}

/// The opt-in recordings (`[debug]`): anyone sees whether they are on (the
/// page's banner), nothing of their content.
#[derive(Debug, Serialize)]
pub struct RecordingsView {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_utterances: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_hours: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_max_bytes: Option<u64>,
}

/// The capture path.
#[derive(Debug, Serialize)]
pub struct Microphone {
    /// The device or file.
    pub source: String,
    /// The negotiated format, once open.
    pub format: Option<String>,
    /// `running`, `degraded` (reopening), `failed`, `ended`…
    pub state: &'static str,
    pub level_rms_dbfs: f32,
    pub level_peak_dbfs: f32,
    pub frames_captured: u64,
    pub frames_dropped: u64,
    pub xruns: u64,
    pub reopen_attempts: u64,
}

/// The button and recognition counters.
#[derive(Debug, Serialize)]
pub struct PushToTalk {
    pub presses: u64,
    pub releases: u64,
    pub button_down: bool,
    pub presses_today: u64,
    pub last_press_unix_ms: Option<u64>,
    pub too_short: u64,
    pub busy_rejected: u64,
    pub transcripts: u64,
    pub no_speech: u64,
    pub stt_failures: u64,
    pub release_to_text_ms_last: Option<f64>,
    /// Upper bound of the histogram bucket holding the 95th percentile.
    pub release_to_text_ms_p95_bucket: Option<f64>,
    pub speculative: SpeculativeView,
}

/// Speculative recognition's counters.
#[derive(Debug, Serialize)]
pub struct SpeculativeView {
    pub enabled: bool,
    pub runs: u64,
    /// Used at release.
    pub hits: u64,
    /// Discarded: speech came back after the cut.
    pub misses: u64,
    /// Stopped at a decoder step.
    pub abandoned: u64,
    /// CPU time spent on runs not used.
    pub wasted_ms: u64,
}

/// The agent link.
#[derive(Debug, Serialize)]
pub struct AgentView {
    /// `closed`, `open`, `half_open`.
    pub breaker: &'static str,
    pub outbox_depth: u64,
    pub outbox_oldest_age_s: Option<u64>,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub dead_letters_kept: u64,
    /// 401/403/404 from the agent: token or URL rejected, nothing sent.
    pub paused_on_status: Option<u16>,
    pub retries: u64,
    pub last_http_status: Option<u16>,
    /// The agent's clock minus ours, from its last `Date` header.
    pub clock_offset_s: Option<f64>,
    /// The last DNS / connect / request check.
    pub reachability: Option<ReachabilityView>,
    /// Technician only: error and reply texts can carry what a visitor said.
    pub last_error: Option<String>,
    pub last_reply: Option<String>,
}

/// A reachability check with its certificate's outlook.
#[derive(Debug, Serialize)]
pub struct ReachabilityView {
    #[serde(flatten)]
    pub check: Reachability,
    pub cert_days_left: Option<i64>,
    pub cert_warning: Option<String>,
}

/// What a technician sees besides.
#[derive(Debug, Serialize)]
pub struct TechnicianView {
    /// The effective configuration, secrets `<redacted>`.
    pub config: serde_json::Value,
    /// Keys changed in the file that wait for a restart.
    pub pending_restart: Vec<String>,
    /// The last warnings and errors.
    pub problems: Vec<crate::base::logring::LogLine>,
    pub warnings_total: u64,
    pub errors_total: u64,
}

/// The status document (`/api/v1/status`); `technician` adds the
/// effective configuration, the recent warnings and the agent's texts.
pub fn status_doc(s: &Shared, technician: bool) -> StatusDoc {
    let a = s.audio.snapshot();
    let p = &s.ptt;
    let why = readiness(s);
    let now = unix_ms();
    let agent = s.agent.as_ref().map(|g| {
        let oldest = g.oldest_created_ms.load(Relaxed);
        let nonzero = |v: u16| (v != 0).then_some(v);
        AgentView {
            breaker: BreakerState::from_u8(g.breaker_state.load(Relaxed)).as_str(),
            outbox_depth: g.outbox_depth.load(Relaxed),
            outbox_oldest_age_s: (oldest > 0).then(|| now.saturating_sub(oldest) / 1000),
            delivered: g.delivered.load(Relaxed),
            dead_lettered: g.dead_lettered.load(Relaxed),
            dead_letters_kept: g.dead_letter_depth.load(Relaxed),
            paused_on_status: nonzero(g.paused_status.load(Relaxed)),
            retries: g.retries_total(),
            last_http_status: nonzero(g.last_http_status.load(Relaxed)),
            clock_offset_s: g.clock_offset_s(),
            reachability: g.reachability().map(|check| {
                let days = check.cert_days_left(i64::try_from(now / 1000).unwrap_or(i64::MAX));
                ReachabilityView {
                    check,
                    cert_days_left: days,
                    cert_warning: cert_warning(days),
                }
            }),
            last_error: if technician { g.last_error() } else { None },
            last_reply: if technician { g.last_reply() } else { None },
        }
    });
    let rtt = p.release_to_text.snapshot();
    let last_press = p.last_press_unix_ms.load(Relaxed);
    let technician = technician.then(|| {
        let (warnings, errors) = s.logs.totals();
        TechnicianView {
            config: s
                .config
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            pending_restart: s
                .pending_restart
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            problems: s.logs.problems(),
            warnings_total: warnings,
            errors_total: errors,
        }
    });
    StatusDoc {
        device_id: s.device_id.clone(),
        version: crate::VERSION,
        uptime_s: s.started.elapsed().as_secs(),
        ready: why.is_empty(),
        not_ready_because: why,
        health: checks(s),
        board: s.board_health(),
        time: time_view(s),
        runs: s.runs.get().cloned(),
        updates: s
            .updates
            .read()
            .map(|u| u.clone().unwrap_or_default())
            .unwrap_or_default(),
        recordings: recordings::summary(s),
        state: s.led().as_str(),
        access: if technician.is_some() {
            "technician"
        } else {
            "anonymous"
        },
        login_available: s.auth().configured(),
        microphone: Microphone {
            source: s.source.clone(),
            format: s.format.get().cloned(),
            state: a.capture_state.as_str(),
            level_rms_dbfs: a.level_rms_dbfs,
            level_peak_dbfs: a.level_peak_dbfs,
            frames_captured: a.frames_captured,
            frames_dropped: a.frames_dropped,
            xruns: a.xruns,
            reopen_attempts: a.reopen_attempts,
        },
        push_to_talk: PushToTalk {
            presses: p.presses.load(Relaxed),
            releases: p.releases.load(Relaxed),
            button_down: p.button_down.load(Relaxed),
            presses_today: p.presses_on(now),
            last_press_unix_ms: (last_press > 0).then_some(last_press),
            too_short: p.too_short.load(Relaxed),
            busy_rejected: p.busy_rejected.load(Relaxed),
            transcripts: p.transcripts.load(Relaxed),
            no_speech: p.no_speech.load(Relaxed),
            stt_failures: p.stt_failures.load(Relaxed),
            release_to_text_ms_last: (rtt.count > 0).then_some(rtt.last_ms),
            release_to_text_ms_p95_bucket: rtt.quantile_upper_ms(0.95),
            speculative: SpeculativeView {
                enabled: p.spec_on.load(Relaxed),
                runs: p.spec_runs.load(Relaxed),
                hits: p.spec_hits.load(Relaxed),
                misses: p.spec_misses.load(Relaxed),
                abandoned: p.spec_abandoned.load(Relaxed),
                wasted_ms: p.spec_wasted_us.load(Relaxed) / 1000,
            },
        },
        models: s
            .models
            .get()
            .cloned()
            .unwrap_or_else(|| serde_json::json!([])),
        stt: s
            .calibration
            .get()
            .map(crate::stt::calibrate::Calibration::to_json),
        agent,
        technician,
    }
}

/// The clock: synchronized or not, its offset from the agent's.
pub fn time_view(s: &Shared) -> TimeView {
    let clock = crate::platform::board::clock_sync();
    let offset = s.agent.as_ref().and_then(|g| g.clock_offset_s());
    let warning = if clock.is_some_and(|c| !c.synchronized) {
        Some("the system clock is not synchronized (no NTP): TLS certificates and timestamps may be wrong; check network time (timedatectl)".to_owned())
    } else {
        offset.filter(|o| o.abs() > 60.0).map(|o| {
            format!(
                "the clock differs from the agent's by {o:.0} s: check network time (timedatectl)"
            )
        })
    };
    TimeView {
        now_unix_ms: unix_ms(),
        synchronized: clock.map(|c| c.synchronized),
        max_error_ms: clock.map(|c| c.max_error_us as f64 / 1000.0),
        agent_offset_s: offset,
        warning,
    }
}
