//! The service as a library: [`Service::start`] brings talkie up inside
//! the caller's tokio runtime and returns a [`ServiceHandle`] that gives the
//! bound status address, asks for a reload or a shutdown and waits for the
//! end. The binary ([`crate::cmd::run`]) adds what only a process has: the
//! runtime, signal handlers and exit codes. Tests start services in-process
//! the same way (two in one test process, each on `127.0.0.1:0`).
//!
//! Start order: the status port answers first (`/healthz` at once,
//! `/readyz` once everything runs), then the agent link (transcripts
//! already queued are delivered while the models load), then the models
//! are loaded, checked and warmed (slow, and a visitor must never pay for
//! it), then GPIO, the audio path and the push-to-talk threads
//! (`wiring`). Threads:
//!
//! | thread          | job                                                |
//! |-----------------|----------------------------------------------------|
//! | `talkie-capture`, `talkie-audio` | the audio path ([`crate::audio`]) |
//! | `talkie-listen` | pre-roll, utterance capture, auto stop ([`crate::ptt::listener`]) |
//! | `talkie-stt`    | VAD trim + Whisper ([`crate::ptt::worker`])        |
//! | `talkie-button` | debounced button edges                             |
//! | `talkie-leds`   | indicator patterns ([`crate::ptt::indicator`])     |
//!
//! tokio runs the controller (state machine), the periodic report and the
//! watchdog (`watchdog`); nothing blocking runs on it: joins happen in
//! `spawn_blocking` with a bound (`shutdown`).

mod report;
mod shutdown;
mod watchdog;
mod wiring;

use crate::agent::{AgentError, AgentStats};
use crate::audio::PipelineError;
use crate::base::config::reload::{Loader, ReloadReport, ReloadRequest};
use crate::base::config::{Config, GpioBackend};
use crate::base::supervisor::{self, Notice, Notifier};
use crate::base::telemetry::{now_ms, AudioStats, CaptureState, PttStats};
use crate::base::threads::JoinError;
use crate::ptt::{ControlEvent, RecentTranscripts};
use crate::status;
use crate::stt::RecognizeError;
use crate::vad::VadError;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use talkie_hal::audio::AudioError;
use talkie_hal::gpio::GpioError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the service logs the audio level and counters.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long each thread and task gets to stop at shutdown.
const STOP_BUDGET: Duration = Duration::from_secs(5);

pub use crate::EXIT_RESTART;

/// How a service ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Shut down (a signal, [`ServiceControl::shutdown`], the end of a
    /// simulated session).
    Stopped,
    /// A technician asked for a restart (`POST /api/v1/restart`); the
    /// binary exits with [`EXIT_RESTART`].
    Restart,
}

/// Failures before a [`ServiceHandle`] exists.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("--until-script-done needs gpio.backend = \"script\"")]
    NotScripted,
    #[error(transparent)]
    Agent(#[from] AgentError),
}

/// Failures that end a started service ([`ServiceHandle::wait`]).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Models(#[from] RecognizeError),
    #[error(transparent)]
    Vad(#[from] VadError),
    #[error(transparent)]
    Gpio(#[from] GpioError),
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("cannot start thread: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Join(#[from] JoinError),
    /// A task on tokio's blocking pool panicked or was cancelled.
    #[error("{what} did not complete: {source}")]
    Task {
        what: &'static str,
        source: tokio::task::JoinError,
    },
}

/// How a service runs besides its configuration.
#[derive(Clone)]
pub struct ServiceOptions {
    /// Re-reads the configuration on a reload (SIGHUP in the binary,
    /// `POST /api/v1/reload`, [`ServiceControl::reload`]).
    pub loader: Loader,
    /// With `gpio.backend = "script"`: end once the last scripted event has
    /// been fully handled (and, with an agent, the outbox is empty).
    pub until_script_done: bool,
    /// End when a simulated source (the file backend) ends, as `talkie
    /// run` does; false keeps the service (its API, its agent link) up
    /// until [`ServiceControl::shutdown`].
    pub end_with_source: bool,
}

impl std::fmt::Debug for ServiceOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceOptions")
            .field("until_script_done", &self.until_script_done)
            .field("end_with_source", &self.end_with_source)
            .finish_non_exhaustive()
    }
}

impl ServiceOptions {
    /// Options whose reload re-applies `config` itself (an embedded service
    /// with no file behind it).
    pub fn fixed(config: &Config) -> Self {
        let c = config.clone();
        Self {
            loader: Arc::new(move || Ok(c.clone())),
            until_script_done: false,
            end_with_source: true,
        }
    }
}

/// Drives a running service from anywhere (cheap to clone): the status
/// address, reload, shutdown, readiness.
#[derive(Debug, Clone)]
pub struct ServiceControl {
    status_addr: SocketAddr,
    stop: CancellationToken,
    reloads: mpsc::Sender<ReloadRequest>,
    ready: watch::Receiver<bool>,
    transcripts: RecentTranscripts,
}

impl ServiceControl {
    /// How many transcripts the service has produced, as a receiver that
    /// wakes on each new one (`wait_for(|n| *n >= 3)`).
    pub fn transcript_count(&self) -> watch::Receiver<u64> {
        self.transcripts.count()
    }

    /// The recent transcripts, oldest first (what `GET
    /// /api/v1/transcripts` lists).
    pub fn transcripts(&self) -> Vec<crate::ptt::TranscriptRecord> {
        self.transcripts.list()
    }

    /// Where the status page and API listen (the port the OS chose for
    /// `status.listen = "127.0.0.1:0"`).
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// Ask the service to stop: no more presses, the utterance already
    /// submitted is finished (within `ptt.finish_on_stop_ms`), then every
    /// thread and task is joined. Returns at once;
    /// [`ServiceHandle::wait`] waits.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Re-read the configuration and apply the live keys (what SIGHUP
    /// does). Waits until the service is past start-up; `None` when it has
    /// ended.
    pub async fn reload(&self) -> Option<ReloadReport> {
        let (tx, rx) = oneshot::channel();
        self.reloads.send(tx).await.ok()?;
        rx.await.ok()
    }

    /// Wait until the service is ready (models loaded, threads running):
    /// true then, false when it ended before that.
    pub async fn ready(&self) -> bool {
        let mut rx = self.ready.clone();
        let ready = rx.wait_for(|r| *r).await.is_ok();
        ready
    }
}

/// A running service: its [`ServiceControl`] and its end.
#[derive(Debug)]
pub struct ServiceHandle {
    control: ServiceControl,
    task: tokio::task::JoinHandle<Result<Ended, ServiceError>>,
}

impl std::ops::Deref for ServiceHandle {
    type Target = ServiceControl;
    fn deref(&self) -> &ServiceControl {
        &self.control
    }
}

impl ServiceHandle {
    /// A control that outlives [`Self::wait`]'s borrow of the handle.
    pub fn control(&self) -> ServiceControl {
        self.control.clone()
    }

    /// Wait for the service to end (after [`ServiceControl::shutdown`], or
    /// by itself when a simulated source or script ends).
    pub async fn wait(self) -> Result<Ended, ServiceError> {
        match self.task.await {
            Ok(r) => r,
            Err(source) => Err(ServiceError::Task {
                what: "the service task",
                source,
            }),
        }
    }
}

/// talkie's service: see the module documentation.
#[derive(Debug)]
pub struct Service;

/// What the service task owns besides the configuration.
struct Context {
    config: Config,
    options: ServiceOptions,
    shared: Arc<status::Shared>,
    audio_stats: Arc<AudioStats>,
    ptt_stats: Arc<PttStats>,
    agent_stats: Arc<AgentStats>,
    outbox: Option<crate::agent::OutboxHandle>,
    recent: RecentTranscripts,
    source_name: String,
    /// Ends the status server, the probe and the agent link.
    cancel: CancellationToken,
    tasks: TaskTracker,
    stop: CancellationToken,
    reloads: mpsc::Receiver<ReloadRequest>,
    reload_tx: mpsc::Sender<ReloadRequest>,
    ready: watch::Sender<bool>,
    /// This run's entry in `runs.json`, ended when the service ends.
    history: Option<crate::base::runs::RunHistory>,
}

impl Service {
    /// Bind the status port, open the agent link and start the rest in the
    /// background: returns once the status port answers. Must be called
    /// inside a multi-threaded tokio runtime.
    pub async fn start(
        config: Config,
        options: ServiceOptions,
    ) -> Result<ServiceHandle, StartError> {
        if options.until_script_done && config.gpio.backend != GpioBackend::Script {
            return Err(StartError::NotScripted);
        }
        let audio_stats = Arc::new(AudioStats::default());
        let ptt_stats = Arc::new(PttStats::default());
        let agent_stats = Arc::new(AgentStats::default());
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let source_name = config
            .audio
            .file
            .as_ref()
            .map_or_else(|| config.audio.device.clone(), |f| f.display().to_string());
        let recent = RecentTranscripts::default();
        let shared = Arc::new(status::Shared::new(
            &config,
            source_name.clone(),
            Arc::clone(&audio_stats),
            Arc::clone(&ptt_stats),
            config.agent.url.is_some().then(|| Arc::clone(&agent_stats)),
            crate::base::logring::global().clone(),
            recent.clone(),
            cancel.clone(),
        ));
        let port = StatusPort {
            shared: Arc::clone(&shared),
            probe_every: supervisor::probe_interval(config.watchdog.stall_ms),
            tasks: tasks.clone(),
            cancel: cancel.clone(),
        };
        let bound = match status::bind(config.status.listen).await {
            Ok((listener, bound)) => {
                port.serve(listener, bound);
                bound
            }
            Err(e) => {
                // In use, or an address not assigned yet at boot: the
                // kiosk works without its page meanwhile (issue 28 row 7).
                tracing::error!(error = %e, "status port cannot be bound: retrying; the kiosk runs without its page meanwhile");
                port.set_error(Some(e.to_string()));
                tasks.spawn(port.clone().bind_later(config.status.listen));
                config.status.listen
            }
        };
        // The agent link before the models: transcripts already queued are
        // delivered while the models load (seconds on a Pi), so a service
        // that restarts faster than it loads still empties its outbox.
        let outbox = match &config.agent.url {
            Some(url) => {
                let opened = crate::agent::open(&config, url, Arc::clone(&agent_stats)).await;
                let (link, handle) = match opened {
                    Ok(o) => o,
                    Err(e) => {
                        cancel.cancel();
                        return Err(e.into());
                    }
                };
                tasks.spawn(link.run(cancel.clone()));
                // DNS, connect, TLS and the certificate, checked apart from
                // delivery (issue 20 item 2). A URL the link accepted parses.
                match (
                    crate::agent::reach::probe_client(&config.agent),
                    reqwest::Url::parse(url),
                ) {
                    (Ok(client), Ok(base)) => {
                        tasks.spawn(crate::agent::reach::run(
                            client,
                            base,
                            Arc::clone(&agent_stats),
                            cancel.clone(),
                        ));
                    }
                    (Err(e), _) => {
                        tracing::warn!(error = %e, "agent reachability checks off: no client");
                    }
                    (_, Err(e)) => {
                        tracing::warn!(error = %e, "agent reachability checks off: bad URL");
                    }
                }
                let _ = shared.outbox.set(handle.clone());
                Some(handle)
            }
            None => {
                tracing::info!("agent.url not set: transcripts are logged and kept in memory only");
                None
            }
        };
        // Recorded once start-up can no longer fail before the handle.
        let state_dir = config.device.state_dir.clone();
        let history = tokio::task::spawn_blocking(move || {
            crate::base::runs::RunHistory::begin(&state_dir, crate::base::telemetry::unix_ms())
        })
        .await
        .ok();
        if let Some(h) = &history {
            let _ = shared.runs.set(h.summary().clone());
        }
        // The page's level chart and the recordings' age limit.
        tasks.spawn(status::charts::sample_levels(
            Arc::clone(&shared),
            cancel.clone(),
        ));
        tasks.spawn(status::recordings::prune(
            Arc::clone(&shared),
            cancel.clone(),
        ));
        // RAUC's slot and Mender's artifact for the page (issue 20 item 3).
        tasks.spawn(crate::platform::updates::run(
            shared.board.root.clone(),
            Arc::clone(&shared.updates),
            cancel.clone(),
        ));
        let recent_for_handle = recent.clone();
        let stop = CancellationToken::new();
        let _ = shared.stop.set(stop.clone());
        let (reload_tx, reloads) = mpsc::channel(1);
        let (ready_tx, ready) = watch::channel(false);
        let ctx = Context {
            config,
            options,
            shared,
            audio_stats,
            ptt_stats,
            agent_stats,
            outbox,
            recent,
            source_name,
            cancel,
            tasks,
            stop: stop.clone(),
            reloads,
            reload_tx: reload_tx.clone(),
            ready: ready_tx,
            history,
        };
        let task = tokio::spawn(lifecycle(ctx));
        Ok(ServiceHandle {
            control: ServiceControl {
                status_addr: bound,
                stop,
                reloads: reload_tx,
                ready,
                transcripts: recent_for_handle,
            },
            task,
        })
    }
}

/// The service task: [`run_service`], then this run's end in the history.
async fn lifecycle(mut ctx: Context) -> Result<Ended, ServiceError> {
    let history = ctx.history.take();
    let result = run_service(ctx).await;
    if let Some(h) = history {
        let kind = match &result {
            Ok(Ended::Stopped) => crate::base::runs::EndKind::Clean,
            Ok(Ended::Restart) => crate::base::runs::EndKind::Restart,
            Err(_) => crate::base::runs::EndKind::Failed,
        };
        let _ = tokio::task::spawn_blocking(move || h.end(kind, crate::base::telemetry::unix_ms()))
            .await;
    }
    result
}

/// Models → threads → the control loop → shutdown.
async fn run_service(mut ctx: Context) -> Result<Ended, ServiceError> {
    let notifier = Notifier::start();
    let loaded = tokio::select! {
        r = wiring::load_models(&ctx.config, &ctx.shared, &notifier) => Some(r),
        () = ctx.stop.cancelled() => None,
    };
    let (recognizer, capture_vad) = match loaded {
        Some(Ok(m)) => m,
        Some(Err(e)) => {
            shutdown::end_tasks(&ctx).await;
            return Err(e);
        }
        None => {
            tracing::info!("stopped while the models were loading");
            shutdown::end_tasks(&ctx).await;
            shutdown::finish_notifier(notifier).await;
            return Ok(ctx.ended());
        }
    };
    let started = match wiring::start(&ctx, recognizer, capture_vad) {
        Ok(s) => s,
        Err(e) => {
            shutdown::end_tasks(&ctx).await;
            return Err(e);
        }
    };
    let wiring::Started {
        mut controller,
        mut events,
        threads,
        pipeline,
        timeline,
    } = started;
    ctx.tasks.close();
    let _ = ctx.shared.reload.set(ctx.reload_tx.clone());
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let has_agent = ctx.config.agent.url.is_some();
    let mut dog = watchdog::Watchdog::new(&ctx.config);
    let mut status_line = ctx.status_line();
    notifier.send(Notice {
        ready: true,
        status: Some(status_line.clone()),
        ..Notice::default()
    });
    ctx.shared.ready.store(true, Ordering::Relaxed);
    let _ = ctx.ready.send(true);
    dog.started(now_ms());
    ctx.shared.set_led(controller.shown());
    tracing::info!(watchdog = ?dog.every(), status = %status_line, "ready");
    let mut running = ctx.config.clone();
    let mut script_done = false;
    loop {
        let done = if ctx.options.until_script_done {
            script_done
                && controller.is_quiescent()
                && report::outbox_drained(&ctx.agent_stats, has_agent)
        } else {
            ctx.options.end_with_source && pipeline.is_finished() && controller.is_quiescent()
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
                    ctx.shared.set_led(controller.shown());
                }
                None => break,
            },
            _ = tick.tick() => {
                report::audio(&ctx.audio_stats, false);
                let state = ctx.audio_stats.capture_state();
                let offline = has_agent
                    && ctx.agent_stats.breaker_state.load(Ordering::Relaxed)
                        == crate::agent::breaker::BreakerState::Open.gauge();
                controller.set_health(matches!(state, CaptureState::Degraded | CaptureState::Failed), offline);
                // The page shows what the LEDs show (issue 28 row 6).
                ctx.shared.set_led(controller.shown());
                let line = ctx.status_line();
                if line != status_line {
                    status_line = line;
                    notifier.send(Notice { status: Some(status_line.clone()), ..Notice::default() });
                }
            }
            _ = dog.tick() => dog.check(&ctx, &notifier, &status_line),
            Some(reply) = ctx.reloads.recv() => {
                let report = reload(&mut running, &ctx, &notifier, &status_line).await;
                let _ = reply.send(report);
            }
            () = ctx.stop.cancelled() => break,
        }
    }
    notifier.send(Notice {
        stopping: true,
        status: Some("stopping".into()),
        ..Notice::default()
    });
    shutdown::finish_in_flight(
        &ctx.config,
        &mut controller,
        &mut events,
        &threads.button_stop,
    )
    .await;
    drop(events);
    drop(controller);
    shutdown::end_tasks(&ctx).await;
    let end = shutdown::join_all(pipeline, threads).await?;
    report::audio(&ctx.audio_stats, true);
    report::summary(&ctx.ptt_stats);
    if has_agent {
        ctx.agent_stats.log_summary();
    }
    report::timeline(timeline.as_ref());
    shutdown::finish_notifier(notifier).await;
    match end {
        crate::audio::PipelineEnd::SourceEnded => tracing::info!("audio source ended"),
        other => tracing::info!(end = ?other, "stopped"),
    }
    Ok(ctx.ended())
}

impl Context {
    fn ended(&self) -> Ended {
        if self.shared.restart_requested.load(Ordering::Relaxed) {
            Ended::Restart
        } else {
            Ended::Stopped
        }
    }

    fn has_agent(&self) -> bool {
        self.config.agent.url.is_some()
    }

    /// The one-line `STATUS=` for systemctl status.
    fn status_line(&self) -> String {
        let line = report::status_line(
            &self.source_name,
            &self.audio_stats,
            self.has_agent().then_some(&*self.agent_stats),
        );
        let port = self
            .shared
            .port_error
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        match port {
            Some(e) => format!("{line}; no status page: {e}"),
            None => line,
        }
    }
}

/// The status port: served once bound, its loopback probe beside it.
#[derive(Clone)]
struct StatusPort {
    shared: Arc<status::Shared>,
    probe_every: Duration,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl StatusPort {
    fn set_error(&self, e: Option<String>) {
        *self
            .shared
            .port_error
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = e;
    }

    fn serve(&self, listener: tokio::net::TcpListener, bound: SocketAddr) {
        tracing::info!(listen = %bound, "status server listening");
        self.tasks.spawn(status::serve(
            listener,
            Arc::clone(&self.shared),
            self.cancel.clone(),
        ));
        let http_beat = Arc::clone(&self.shared);
        self.tasks.spawn(status::probe(
            bound,
            move || http_beat.http_beat_ms.store(now_ms(), Ordering::Relaxed),
            self.probe_every,
            self.cancel.clone(),
        ));
        // The probe's first answer is moments away: judged from now.
        self.shared.http_beat_ms.store(now_ms(), Ordering::Relaxed);
        self.shared.serving.store(true, Ordering::Relaxed);
    }

    /// Bind `listen` again every 1 s, backing off to 30 s, until it works
    /// or the service stops.
    async fn bind_later(self, listen: SocketAddr) {
        let mut wait = Duration::from_secs(1);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match status::bind(listen).await {
                Ok((listener, bound)) => {
                    self.set_error(None);
                    self.serve(listener, bound);
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "status port still cannot be bound");
                    self.set_error(Some(e.to_string()));
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// Re-read the configuration, apply the live keys, report the rest
/// (`RELOADING=1` … `READY=1` around it for systemd).
async fn reload(
    running: &mut Config,
    ctx: &Context,
    notifier: &Notifier,
    status_line: &str,
) -> ReloadReport {
    notifier.send(Notice {
        reloading: true,
        status: Some("reloading configuration".into()),
        ..Notice::default()
    });
    let load = Arc::clone(&ctx.options.loader);
    let loaded = match tokio::task::spawn_blocking(move || load()).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the configuration could not be read: {e}")),
    };
    let report = match loaded {
        Err(e) => {
            tracing::error!(error = %e, "reload refused: the running configuration stays");
            ReloadReport {
                ok: false,
                error: Some(e),
                ..Default::default()
            }
        }
        Ok(new) => {
            let (mut report, effective) = crate::base::config::reload::plan(running, &new);
            if report.applied.iter().any(|k| k == "log.level") {
                if let Err(e) = crate::base::logging::set_level(&effective.log.level) {
                    tracing::warn!(error = %e, "log.level not applied");
                    report.applied.retain(|k| k != "log.level");
                    report.needs_restart.push("log.level".into());
                }
            }
            if report.applied.iter().any(|k| k.starts_with("agent.token")) {
                if let Some(h) = &ctx.outbox {
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
            ctx.shared
                .reconfigured(running, report.needs_restart.clone());
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
