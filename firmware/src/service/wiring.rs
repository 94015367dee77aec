//! Start-up after the status port and the agent link: the models, then
//! GPIO, the audio path and the push-to-talk threads.

use super::{Context, ServiceError};
use crate::audio::source::open_source_or_wait;
use crate::audio::{AudioPipeline, PipelineOptions};
use crate::base::config::models::{stt_model_dir, with_vad_resolved};
use crate::base::config::{AudioBackend, Config};
use crate::base::supervisor::{self, Notice, Notifier};
use crate::base::threads::{self, Tracked};
use crate::ptt::indicator::{self, LedMsg};
use crate::ptt::listener::{self, Command, Listener, ListenerOptions, ListenerWiring};
use crate::ptt::machine::Machine;
use crate::ptt::{self, worker, ControlEvent, Controller, SinkWiring};
use crate::status;
use crate::stt::Recognizer;
use crate::vad::SileroVad;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// Start-up time granted to systemd for each stage of loading the models
/// (`EXTEND_TIMEOUT_USEC`, sent again as each stage begins: a board that is
/// slow but progressing is not killed, a stage hung this long is). The
/// longest stage measured: loading and timing one model form, 1–2 s on
/// the Xeon of docs/models.md; a Pi is 5–10× slower per core.
const MODEL_STAGE_BUDGET_USEC: u32 = 120_000_000;

/// The threads of a running service.
pub(super) struct Threads {
    pub button_stop: Arc<AtomicBool>,
    pub button: Tracked<()>,
    pub listener: Tracked<()>,
    pub listener_tx: mpsc::SyncSender<Command>,
    pub stt: Tracked<()>,
    pub leds: Tracked<()>,
    pub leds_tx: mpsc::SyncSender<LedMsg>,
}

/// Everything [`start`] set running.
pub(super) struct Started {
    pub controller: Controller,
    pub events: tokio::sync::mpsc::Receiver<ControlEvent>,
    pub threads: Threads,
    pub pipeline: AudioPipeline<listener::TapSink>,
    pub timeline: Option<talkie_hal::gpio::sim::Timeline>,
}

/// Verify, load and warm the models (off the async threads); the
/// capture VAD too when `ptt.vad_auto_stop_ms` or `ptt.speculative` asks for one.
pub(super) async fn load_models(
    config: &Config,
    shared: &Arc<status::Shared>,
    notifier: &Notifier,
) -> Result<(Recognizer, Option<SileroVad>), ServiceError> {
    let sender = notifier.sender();
    let stage = move |what: &str| {
        tracing::info!(stage = what, "loading models");
        sender.send(Notice {
            status: Some(if what.is_empty() {
                "loading models".into()
            } else {
                format!("loading models: {what}")
            }),
            extend_timeout_usec: Some(MODEL_STAGE_BUDGET_USEC),
            ..Notice::default()
        });
    };
    stage("");
    let dir = stt_model_dir(config, None);
    let cfg = with_vad_resolved(config, None);
    let shown = Arc::clone(shared);
    let loaded = tokio::task::spawn_blocking(move || {
        supervisor::test_hold_models();
        let t0 = Instant::now();
        let mut r = Recognizer::load_with_progress(&dir, &cfg.recognizer_options(), &stage)?;
        let load_ms = t0.elapsed().as_secs_f64() * 1000.0;
        stage("warming up");
        let warm_ms = r.warm_up()?;
        tracing::info!(dir = %dir.display(), load_ms = format_args!("{load_ms:.0}"), warm_up_ms = format_args!("{warm_ms:.0}"), "models loaded");
        let (whisper, moonshine) = r.model_forms();
        let _ = shown
            .models
            .set(crate::models::in_use(&dir, whisper.map(|f| f.names()), moonshine.map(|f| f.names())));
        let _ = shown.calibration.set(r.calibration().clone());
        let vad = if cfg.ptt.vad_auto_stop_ms > 0 || cfg.ptt.speculative {
            Some(SileroVad::load(&cfg.vad.model)?)
        } else {
            None
        };
        // The calibration tried other precisions: their memory goes back.
        crate::base::telemetry::release_free_memory();
        Ok::<_, ServiceError>((r, vad))
    })
    .await;
    match loaded {
        Ok(r) => r,
        Err(source) => Err(ServiceError::Task {
            what: "model loading",
            source,
        }),
    }
}

/// Open GPIO and the audio source, start the push-to-talk threads and the
/// audio path, and build the controller.
pub(super) fn start(
    ctx: &Context,
    recognizer: Recognizer,
    capture_vad: Option<SileroVad>,
) -> Result<Started, ServiceError> {
    let config = &ctx.config;
    let epoch = Instant::now();
    // A simulated session's own clock (audio.sim_clock, file backend only).
    let clock = (config.audio.sim_clock && config.audio.backend == AudioBackend::File)
        .then(talkie_hal::sim_clock::SimClock::new);
    let gpio = ptt::gpio::open(&config.gpio, epoch, clock.clone())?;
    let timeline = gpio.timeline.clone();
    let source = open_source_or_wait(&config.audio, clock.clone())?;
    tracing::info!(
        device_id = %config.device.id,
        source = source.name(),
        format = %source.format(),
        gpio = ?config.gpio.backend,
        "audio source open"
    );
    let _ = ctx.shared.format.set(source.format().to_string());

    let (events_tx, events) = tokio::sync::mpsc::channel(ptt::EVENT_QUEUE);
    let (tap_sink, tap_rx) = listener::tap(Arc::clone(&ctx.ptt_stats));
    let (listener_tx, listener_rx) = mpsc::sync_channel(16);
    let _ = ctx
        .shared
        .control
        .set(ptt::PttControl::new(events_tx.clone(), listener_tx.clone()));
    let (stt_tx, stt_rx) = mpsc::sync_channel(worker::QUEUE);
    let spec = Arc::new(listener::SpecShared::default());
    ctx.ptt_stats
        .spec_on
        .store(config.ptt.speculative, std::sync::atomic::Ordering::Relaxed);
    let (leds_tx, leds_rx) = mpsc::sync_channel(indicator::QUEUE);
    let (listener, pool) = Listener::new(
        &ListenerOptions {
            preroll_ms: config.audio.preroll_ms,
            max_utterance_s: config.audio.max_utterance_s,
            vad_auto_stop_ms: config.ptt.vad_auto_stop_ms,
            vad_threshold: config.vad.threshold,
            segmenter: config.vad.segmenter(),
            speculate_after_ms: config
                .ptt
                .speculative
                .then_some(config.ptt.speculate_after_ms),
        },
        ListenerWiring {
            tap: tap_rx,
            commands: listener_rx,
            events: events_tx.clone(),
            recognizer: stt_tx,
            spec: Arc::clone(&spec),
            clock,
        },
        capture_vad,
        Arc::clone(&ctx.ptt_stats),
    );
    let spawn_err = ServiceError::Spawn;
    let leds = {
        let stats = Arc::clone(&ctx.ptt_stats);
        let ind = gpio.indicators;
        threads::spawn("talkie-leds", move || indicator::run(ind, leds_rx, stats))
            .map_err(spawn_err)?
    };
    let stt = {
        let (events, stats) = (events_tx.clone(), Arc::clone(&ctx.ptt_stats));
        let keep_audio = ctx.shared.recordings.is_some();
        threads::spawn("talkie-stt", move || {
            worker::run(recognizer, stt_rx, pool, events, stats, spec, keep_audio)
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
        Arc::clone(&ctx.audio_stats),
    )?;
    let button_stop = Arc::new(AtomicBool::new(false));
    let button = {
        let (b, stop, stats) = (
            gpio.button,
            Arc::clone(&button_stop),
            Arc::clone(&ctx.ptt_stats),
        );
        let ev = events_tx.clone();
        threads::spawn("talkie-button", move || {
            ptt::button_loop(b, ev, stop, stats)
        })
        .map_err(spawn_err)?
    };
    let controller = Controller::new(
        Machine::new(&config.ptt),
        epoch,
        listener_tx.clone(),
        leds_tx.clone(),
        Arc::clone(&ctx.ptt_stats),
        ctx.recent.clone(),
        SinkWiring {
            device_id: config.device.id.clone(),
            outbox: ctx.outbox.clone(),
            events: events_tx,
            recordings: ctx.shared.recordings.clone(),
        },
    );
    Ok(Started {
        controller,
        events,
        threads: Threads {
            button_stop,
            button,
            listener,
            listener_tx,
            stt,
            leds,
            leds_tx,
        },
        pipeline,
        timeline,
    })
}
