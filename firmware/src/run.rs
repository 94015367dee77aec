//! `talkie run`: the service.
//!
//! Start order: models are loaded, checked and warmed first (slow, and a
//! visitor must never pay for it), then GPIO is opened, then the audio path
//! and the push-to-talk threads start. Threads:
//!
//! | thread          | job                                                |
//! |-----------------|----------------------------------------------------|
//! | `talkie-capture`, `talkie-audio` | the audio path ([`crate::audio`]) |
//! | `talkie-listen` | pre-roll, utterance capture, auto stop ([`crate::ptt::listener`]) |
//! | `talkie-stt`    | VAD trim + Whisper ([`crate::ptt::worker`])        |
//! | `talkie-button` | debounced button edges                             |
//! | `talkie-leds`   | indicator patterns ([`crate::ptt::indicator`])     |
//!
//! tokio runs the controller (state machine), signals and the periodic
//! report; nothing blocking runs on it: joins happen in `spawn_blocking`
//! with a bound.

use crate::agent::{AgentError, AgentStats};
use crate::audio::{open_source, AudioPipeline, PipelineEnd, PipelineError, PipelineOptions};
use crate::config::{AudioBackend, Config, GpioBackend};
use crate::offline::stt_model_dir;
use crate::ptt::indicator::{self, LedMsg};
use crate::ptt::listener::{self, Command, Listener, ListenerOptions, ListenerWiring};
use crate::ptt::machine::Machine;
use crate::ptt::{self, worker, ControlEvent, Controller, RecentTranscripts, SinkWiring};
use crate::reload::Loader;
use crate::status;
use crate::stt::{RecognizeError, Recognizer};
use crate::supervisor::{self, Beat, Notice, Notifier};
use crate::telemetry::now_ms;
use crate::telemetry::{AudioStats, CaptureState, HistogramSnapshot, PttStats};
use crate::threads::{self, JoinError, Tracked};
use crate::vad::{SileroVad, VadError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use talkie_hal::audio::AudioError;
use talkie_hal::gpio::GpioError;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often `run` logs the audio level and counters.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// Start-up time granted to systemd while models load (EXTEND_TIMEOUT_USEC).
const MODEL_LOAD_BUDGET_USEC: u32 = 120_000_000;
/// Exit code when a second signal cuts shutdown short.
const EXIT_SECOND_SIGNAL: i32 = 130;
/// How long each thread gets to stop after a signal.
const STOP_BUDGET: Duration = Duration::from_secs(5);

/// Errors that end `talkie run`.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("--until-script-done needs gpio.backend = \"script\"")]
    NotScripted,
    #[error(transparent)]
    Models(#[from] RecognizeError),
    #[error(transparent)]
    Vad(#[from] VadError),
    #[error(transparent)]
    Gpio(#[from] GpioError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Status(#[from] status::BindError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot start thread: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error("threads could not be joined: {0}")]
    Blocking(String),
}

/// How `run` ends besides signals (the command line's `talkie run` flags,
/// without clap types).
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// With `gpio.backend = "script"`: exit once the last scripted event
    /// has been fully handled.
    pub until_script_done: bool,
}

/// Run the service until SIGINT/SIGTERM, until a simulated source ends, or
/// (with `--until-script-done`) until the button script is fully handled.
pub fn run(config: &Config, args: &RunOptions, loader: Loader) -> Result<(), RunError> {
    if args.until_script_done && config.gpio.backend != GpioBackend::Script {
        return Err(RunError::NotScripted);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Bounded (the unit's TasksMax=128): outbox writes and model
        // loading are the only blocking work.
        .max_blocking_threads(16)
        .thread_name("talkie-rt")
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    rt.block_on(serve(config, args, loader))
}

/// The threads of a running service.
struct Threads {
    button_stop: Arc<AtomicBool>,
    button: Tracked<()>,
    listener: Tracked<()>,
    listener_tx: mpsc::SyncSender<Command>,
    stt: Tracked<()>,
    leds: Tracked<()>,
    leds_tx: mpsc::SyncSender<LedMsg>,
}

async fn serve(config: &Config, args: &RunOptions, loader: Loader) -> Result<(), RunError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut running = config.clone();
    let audio_stats = Arc::new(AudioStats::default());
    let ptt_stats = Arc::new(PttStats::default());
    let cancel = CancellationToken::new();
    let tasks = TaskTracker::new();
    let agent_stats = Arc::new(AgentStats::default());
    // The local API answers from the start: /healthz at once, /readyz once
    // models are loaded and everything runs.
    let source_name = config
        .audio
        .file
        .as_ref()
        .map_or_else(|| config.audio.device.clone(), |f| f.display().to_string());
    let recent = RecentTranscripts::default();
    let shared = Arc::new(status::Shared::new(
        config,
        source_name.clone(),
        Arc::clone(&audio_stats),
        Arc::clone(&ptt_stats),
        config.agent.url.is_some().then(|| Arc::clone(&agent_stats)),
        crate::logring::global().clone(),
        recent.clone(),
        cancel.clone(),
    ));
    let (listener, bound) = status::bind(config.status.listen).await?;
    tracing::info!(listen = %bound, "status server listening");
    tasks.spawn(status::serve(listener, Arc::clone(&shared), cancel.clone()));
    let http_beat = Arc::clone(&shared);
    tasks.spawn(status::probe(
        bound,
        move || http_beat.http_beat_ms.store(now_ms(), Ordering::Relaxed),
        supervisor::probe_interval(config.watchdog.stall_ms),
        cancel.clone(),
    ));

    // The agent link before the models: transcripts already queued are
    // delivered while the models load (seconds on a Pi), so a service that
    // restarts faster than it loads still empties its outbox.
    let outbox_sink = match &config.agent.url {
        Some(url) => {
            let (link, sink) = crate::agent::open(config, url, Arc::clone(&agent_stats)).await?;
            tasks.spawn(link.run(cancel.clone()));
            Some(sink)
        }
        None => {
            tracing::info!("agent.url not set: transcripts are logged and kept in memory only");
            None
        }
    };
    if let Some(h) = &outbox_sink {
        let _ = shared.outbox.set(h.clone());
    }

    // Models next: verified, loaded and warmed before anything listens.
    let notifier = Notifier::start();
    notifier.send(Notice {
        status: Some("loading models".into()),
        extend_timeout_usec: Some(MODEL_LOAD_BUDGET_USEC),
        ..Notice::default()
    });
    let dir = stt_model_dir(config, None);
    let cfg = crate::offline::with_vad_resolved(config, None);
    let models_shown = Arc::clone(&shared);
    let (recognizer, auto_stop_vad) = tokio::task::spawn_blocking(move || {
        supervisor::test_hold_models();
        let t0 = Instant::now();
        let mut r = Recognizer::load(&dir, &cfg)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let warm_ms = r.warm_up()?;
        tracing::info!(dir = %dir.display(), load_ms = format_args!("{load_ms:.0}"), warm_up_ms = format_args!("{warm_ms:.0}"), "models loaded");
        let chosen = r.calibration().chosen.precision;
        let _ = models_shown.models.set(crate::models::in_use(&dir, chosen.as_str()));
        let _ = models_shown.calibration.set(r.calibration().clone());
        let vad = if cfg.ptt.vad_auto_stop_ms > 0 {
            Some(SileroVad::load(&cfg.vad.model)?)
        } else {
            None
        };
        Ok::<_, RunError>((r, vad))
    })
    .await
    .map_err(|e| RunError::Blocking(e.to_string()))??;

    let epoch = Instant::now();
    // A simulated session's own clock (audio.sim_clock, file backend only).
    let clock = (config.audio.sim_clock && config.audio.backend == AudioBackend::File)
        .then(talkie_hal::sim_clock::SimClock::new);
    let gpio = ptt::gpio::open(&config.gpio, epoch, clock.clone())?;
    let timeline = gpio.timeline.clone();
    let source = open_source(&config.audio, clock.clone())?;
    tracing::info!(
        device_id = %config.device.id,
        source = source.name(),
        format = %source.format(),
        gpio = ?config.gpio.backend,
        "audio source open"
    );
    let _ = shared.format.set(source.format().to_string());

    let (events_tx, mut events) = tokio::sync::mpsc::channel(ptt::EVENT_QUEUE);
    let _ = shared.control.set(events_tx.clone());
    let (reload_tx, mut reloads) = tokio::sync::mpsc::channel::<status::ReloadRequest>(1);
    let _ = shared.reload.set(reload_tx);
    let (tap_sink, tap_rx) = listener::tap(Arc::clone(&ptt_stats));
    let (listener_tx, listener_rx) = mpsc::sync_channel(16);
    let _ = shared.listener.set(listener_tx.clone());
    let (stt_tx, stt_rx) = mpsc::sync_channel(worker::QUEUE);
    let (leds_tx, leds_rx) = mpsc::sync_channel(indicator::QUEUE);
    let (listener, pool) = Listener::new(
        &ListenerOptions {
            preroll_ms: config.audio.preroll_ms,
            max_utterance_s: config.audio.max_utterance_s,
            vad_auto_stop_ms: config.ptt.vad_auto_stop_ms,
            vad_threshold: config.vad.threshold,
        },
        ListenerWiring {
            tap: tap_rx,
            commands: listener_rx,
            events: events_tx.clone(),
            recognizer: stt_tx,
            clock,
        },
        auto_stop_vad,
        Arc::clone(&ptt_stats),
    );
    let spawn_err = RunError::Spawn;
    let leds = {
        let stats = Arc::clone(&ptt_stats);
        let ind = gpio.indicators;
        threads::spawn("talkie-leds", move || indicator::run(ind, leds_rx, stats))
            .map_err(spawn_err)?
    };
    let stt = {
        let (events, stats) = (events_tx.clone(), Arc::clone(&ptt_stats));
        threads::spawn("talkie-stt", move || {
            worker::run(recognizer, stt_rx, pool, events, stats)
        })
        .map_err(spawn_err)?
    };
    let listener = threads::spawn("talkie-listen", move || listener.run()).map_err(spawn_err)?;
    let pipeline = AudioPipeline::start(
        source,
        tap_sink,
        &PipelineOptions {
            preroll_ms: config.audio.preroll_ms,
            rt_priority: config.audio.rt_priority,
            max_input_frames: None,
        },
        Arc::clone(&audio_stats),
    )?;
    let button_stop = Arc::new(AtomicBool::new(false));
    let button = {
        let (b, stop, stats) = (
            gpio.button,
            Arc::clone(&button_stop),
            Arc::clone(&ptt_stats),
        );
        let ev = events_tx.clone();
        threads::spawn("talkie-button", move || {
            ptt::button_loop(b, ev, stop, stats)
        })
        .map_err(spawn_err)?
    };
    tasks.close();
    let mut controller = Controller::new(
        Machine::new(&config.ptt),
        epoch,
        listener_tx.clone(),
        leds_tx.clone(),
        Arc::clone(&ptt_stats),
        recent,
        SinkWiring {
            device_id: config.device.id.clone(),
            outbox: outbox_sink,
            events: events_tx,
        },
    );
    let threads = Threads {
        button_stop,
        button,
        listener,
        listener_tx,
        stt,
        leds,
        leds_tx,
    };

    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut script_done = false;
    let has_agent = config.agent.url.is_some();
    let wd_every = supervisor::watchdog_interval(config.watchdog.enabled);
    let mut wd_tick = tokio::time::interval(wd_every.unwrap_or(Duration::from_secs(3600)));
    wd_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wedged: Vec<&'static str> = Vec::new();
    let mut status_line = status_line_for(
        &source_name,
        &audio_stats,
        has_agent.then_some(&*agent_stats),
    );
    notifier.send(Notice {
        ready: true,
        status: Some(status_line.clone()),
        ..Notice::default()
    });
    shared.ready.store(true, Ordering::Relaxed);
    let ready_ms = now_ms();
    shared.set_led(controller.shown());
    tracing::info!(watchdog = ?wd_every, status = %status_line, "ready");
    loop {
        let done = if args.until_script_done {
            script_done && controller.is_quiescent() && outbox_drained(&agent_stats, has_agent)
        } else {
            pipeline.is_finished() && controller.is_quiescent()
        };
        if done {
            break;
        }
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ControlEvent::ButtonExhausted) => {
                    tracing::info!("button script finished");
                    script_done = true;
                }
                Some(ev) => {
                    controller.handle(ev);
                    shared.set_led(controller.shown());
                }
                None => break,
            },
            _ = tick.tick() => {
                report(&audio_stats, false);
                let state = audio_stats.capture_state();
                let offline = has_agent
                    && agent_stats.breaker_state.load(Ordering::Relaxed)
                        == crate::agent::breaker::BreakerState::Open.gauge();
                controller.set_health(matches!(state, CaptureState::Degraded | CaptureState::Failed), offline);
                let line = status_line_for(&source_name, &audio_stats, has_agent.then_some(&*agent_stats));
                if line != status_line {
                    status_line = line;
                    notifier.send(Notice { status: Some(status_line.clone()), ..Notice::default() });
                }
            }
            _ = wd_tick.tick(), if wd_every.is_some() => {
                let stale = supervisor::stale(
                    &beats(&audio_stats, &ptt_stats, has_agent.then_some(&*agent_stats), &shared),
                    now_ms(),
                    config.watchdog.stall_ms.into(),
                    ready_ms,
                );
                if stale.is_empty() {
                    notifier.send(Notice { watchdog: true, ..Notice::default() });
                    if !wedged.is_empty() {
                        tracing::warn!(loops = ?wedged, "loops beat again: watchdog pings resumed");
                        notifier.send(Notice { status: Some(status_line.clone()), ..Notice::default() });
                    }
                } else if stale != wedged {
                    tracing::error!(loops = ?stale, "loops are wedged: watchdog pings withheld, systemd will restart the service");
                    notifier.send(Notice {
                        status: Some(format!("wedged: {}; watchdog pings withheld", stale.join(", "))),
                        ..Notice::default()
                    });
                }
                wedged = stale;
            }
            Some(reply) = reloads.recv() => {
                let report = reload(&mut running, &loader, &shared, &notifier, &status_line).await;
                let _ = reply.send(report);
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                reload(&mut running, &loader, &shared, &notifier, &status_line).await;
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: shutting down");
                break;
            }
        }
    }

    notifier.send(Notice {
        stopping: true,
        status: Some("stopping".into()),
        ..Notice::default()
    });
    // No more presses; the utterance already submitted is finished (within
    // a bound) so its transcript reaches the outbox instead of being lost.
    threads.button_stop.store(true, Ordering::Relaxed);
    if controller.in_flight() {
        // ptt.finish_on_stop_ms: how long an utterance already submitted
        // may take to be recognized and committed to the outbox.
        let budget = Duration::from_millis(config.ptt.finish_on_stop_ms.into());
        tracing::info!(?budget, "finishing the utterance in progress");
        let deadline = tokio::time::Instant::now() + budget;
        while controller.in_flight() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(
                    ev @ (ControlEvent::Recognized(_)
                    | ControlEvent::RecognitionFailed
                    | ControlEvent::Stored { .. }
                    | ControlEvent::CaptureEnded),
                )) => controller.handle(ev),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        "the utterance in progress did not finish in time; it is dropped"
                    );
                    break;
                }
            }
        }
    }
    // A second signal ends the process at once.
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
        tracing::warn!("second signal: exiting now");
        std::process::exit(EXIT_SECOND_SIGNAL);
    });
    drop(events);
    drop(controller);
    cancel.cancel();
    if tokio::time::timeout(STOP_BUDGET, tasks.wait())
        .await
        .is_err()
    {
        tracing::error!("agent link did not stop within {STOP_BUDGET:?}");
    }
    pipeline.stop();
    let (end, _) = tokio::task::spawn_blocking(move || pipeline.join(STOP_BUDGET))
        .await
        .map_err(|e| RunError::Blocking(e.to_string()))??;
    tokio::task::spawn_blocking(move || stop_threads(threads))
        .await
        .map_err(|e| RunError::Blocking(e.to_string()))??;
    report(&audio_stats, true);
    summary(&ptt_stats);
    if has_agent {
        agent_stats.log_summary();
    }
    if let Some(t) = timeline {
        let line: Vec<String> = t
            .entries()
            .iter()
            .map(|(ms, s)| format!("{}@{ms}", s.as_str()))
            .collect();
        tracing::info!(timeline = %line.join(" "), "led timeline");
    }
    let _ = tokio::task::spawn_blocking(move || notifier.finish(Duration::from_secs(1))).await;
    match end {
        PipelineEnd::SourceEnded => tracing::info!("audio source ended"),
        other => tracing::info!(end = ?other, "stopped"),
    }
    Ok(())
}

/// Re-read the configuration, apply the live keys, report the rest
/// (`RELOADING=1` … `READY=1` around it for systemd).
async fn reload(
    running: &mut Config,
    loader: &Loader,
    shared: &status::Shared,
    notifier: &Notifier,
    status_line: &str,
) -> status::ReloadReport {
    notifier.send(Notice {
        reloading: true,
        status: Some("reloading configuration".into()),
        ..Notice::default()
    });
    let load = Arc::clone(loader);
    let loaded = tokio::task::spawn_blocking(move || load())
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
    let report = match loaded {
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the running configuration stays");
            status::ReloadReport {
                ok: false,
                error: Some(e),
                ..Default::default()
            }
        }
        Ok(new) => {
            let (mut report, effective) = crate::reload::plan(running, &new);
            if report.applied.iter().any(|k| k == "log.level") {
                if let Err(e) = crate::logging::set_level(&effective.log.level) {
                    tracing::warn!(error = %e, "log.level not applied");
                    report.applied.retain(|k| k != "log.level");
                    report.needs_restart.push("log.level".into());
                }
            }
            if report.applied.iter().any(|k| k.starts_with("agent.token")) {
                if let Some(h) = shared.outbox.get() {
                    h.set_token(
                        effective
                            .agent
                            .token
                            .as_ref()
                            .map(|t| t.expose().to_owned()),
                    );
                }
            }
            *running = effective;
            shared.reconfigured(running, report.needs_restart.clone());
            tracing::info!(
                changed = ?report.changed,
                applied = ?report.applied,
                needs_restart = ?report.needs_restart,
                "configuration reloaded"
            );
            report
        }
    };
    notifier.send(Notice {
        ready: true,
        status: Some(status_line.to_owned()),
        ..Notice::default()
    });
    report
}

/// Stop and join every push-to-talk thread, each within [`STOP_BUDGET`].
fn stop_threads(t: Threads) -> Result<(), RunError> {
    t.button_stop.store(true, Ordering::Relaxed);
    let _ = t.listener_tx.try_send(Command::Stop);
    // The listener owns the recognition queue's sender: once it is gone,
    // the worker finishes the utterance in hand and ends.
    t.listener.join(STOP_BUDGET)?;
    t.stt.join(STOP_BUDGET)?;
    t.button.join(STOP_BUDGET)?;
    let _ = t.leds_tx.send(LedMsg::Stop);
    t.leds.join(STOP_BUDGET)?;
    Ok(())
}

/// The heartbeats the watchdog checks (see [`crate::supervisor`]).
fn beats(
    audio: &AudioStats,
    ptt: &PttStats,
    agent: Option<&AgentStats>,
    shared: &status::Shared,
) -> Vec<Beat> {
    let r = Ordering::Relaxed;
    let running = audio.capture_state() != CaptureState::Ended;
    vec![
        Beat {
            name: "capture",
            last_ms: audio.capture_beat_ms.load(r),
            expected: running,
        },
        Beat {
            name: "audio",
            last_ms: audio.audio_beat_ms.load(r),
            expected: running,
        },
        Beat {
            name: "listen",
            last_ms: ptt.listen_beat_ms.load(r),
            expected: true,
        },
        Beat {
            name: "stt",
            last_ms: ptt.stt_beat_ms.load(r),
            expected: true,
        },
        Beat {
            name: "agent",
            last_ms: agent.map_or(0, |a| a.beat_ms.load(r)),
            expected: agent.is_some(),
        },
        Beat {
            name: "http",
            last_ms: shared.http_beat_ms.load(r),
            expected: true,
        },
    ]
}

/// The one-line `STATUS=` for systemctl status.
fn status_line_for(source: &str, audio: &AudioStats, agent: Option<&AgentStats>) -> String {
    let r = Ordering::Relaxed;
    let mic = match audio.capture_state() {
        CaptureState::Running | CaptureState::Starting => format!("listening on {source}"),
        other => format!("microphone {} ({source})", other.as_str()),
    };
    match agent {
        Some(a) => format!(
            "{mic}; agent {}; outbox {}",
            crate::agent::breaker::BreakerState::from_u8(a.breaker_state.load(r)).as_str(),
            a.outbox_depth.load(r)
        ),
        None => format!("{mic}; no agent configured"),
    }
}

/// With `--until-script-done` and an agent, the run also waits for the
/// outbox to drain (bounded by the outbox's own retry policy).
fn outbox_drained(stats: &AgentStats, has_agent: bool) -> bool {
    !has_agent
        || (stats.outbox_depth.load(Ordering::Relaxed) == 0
            && stats.enqueued.load(Ordering::Relaxed)
                <= stats.delivered.load(Ordering::Relaxed)
                    + stats.dead_lettered.load(Ordering::Relaxed))
}

/// Log the audio counters: every second at debug level (the status page
/// shows them live), once at info when the service stops.
fn report(stats: &AudioStats, last: bool) {
    let s = stats.snapshot();
    macro_rules! emit {
        ($lvl:expr) => {
            tracing::event!(
                $lvl,
                state = s.capture_state.as_str(),
                level_rms_dbfs = format_args!("{:.1}", s.level_rms_dbfs),
                level_peak_dbfs = format_args!("{:.1}", s.level_peak_dbfs),
                frames_captured = s.frames_captured,
                frames_dropped = s.frames_dropped,
                xruns = s.xruns,
                reopen_attempts = s.reopen_attempts,
                "audio"
            )
        };
    }
    if last {
        emit!(tracing::Level::INFO);
    } else {
        emit!(tracing::Level::DEBUG);
    }
}

fn summary(s: &PttStats) {
    let fmt = |h: &HistogramSnapshot| match (h.mean_ms(), h.quantile_upper_ms(0.95)) {
        (Some(m), Some(p)) => format!("mean {m:.1} ms, p95 ≤ {p} ms, n {}", h.count),
        _ => "none".to_owned(),
    };
    let r = Ordering::Relaxed;
    tracing::info!(
        presses = s.presses.load(r),
        utterances = s.utterances.load(r),
        transcripts = s.transcripts.load(r),
        too_short = s.too_short.load(r),
        no_speech = s.no_speech.load(r),
        busy_rejected = s.busy_rejected.load(r),
        stt_failures = s.stt_failures.load(r),
        tap_dropped = s.tap_dropped.load(r),
        press_to_led = %fmt(&s.press_to_led.snapshot()),
        release_to_text = %fmt(&s.release_to_text.snapshot()),
        "push-to-talk summary"
    );
}
