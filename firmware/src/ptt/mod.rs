//! Push-to-talk: the interaction state machine and the threads around it.
//!
//! ```text
//! talkie-button ─┐                                   ┌─▶ talkie-leds (indicators)
//! talkie-listen ─┼─ControlEvent─▶ Controller (tokio) ─┼─▶ talkie-listen (Start/Submit/Discard)
//! talkie-stt ────┘        Machine::handle → Actions   └─▶ transcript sink
//! ```
//! The [`machine::Machine`] decides; the [`Controller`] only carries
//! events in and actions out, so every rule is unit-tested without threads.

pub mod gpio;
pub mod indicator;
pub mod listener;
pub mod machine;
pub mod recordings;
pub mod trace;
pub mod worker;

use crate::agent::{new_id, OutboxHandle, UtterancePayload};
use crate::base::telemetry::PttStats;
use indicator::LedMsg;
use listener::Command;
use machine::{Action, Input, Machine};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use talkie_hal::gpio::{Button, ButtonEvent, ButtonPoll, Edge, IndicatorState};
use worker::Recognized;

/// Events the controller reacts to.
#[derive(Debug)]
pub enum ControlEvent {
    Button(ButtonEvent),
    /// A scripted button has played its last event.
    ButtonExhausted,
    /// The listener ended a capture by itself.
    CaptureEnded,
    Recognized(Box<Recognized>),
    RecognitionFailed,
    /// The outbox committed (or refused) the transcript being delivered.
    Stored {
        ok: bool,
    },
    /// A technician asked to see every LED pattern (status API).
    TestLeds,
    /// A technician's WAV (16 kHz mono) to run as if spoken during a press.
    TestUtterance {
        samples: Vec<f32>,
        reply: tokio::sync::oneshot::Sender<Result<(), &'static str>>,
    },
}

/// Events queued for the controller.
pub const EVENT_QUEUE: usize = 64;

/// Why a [`PttControl`] request was not carried out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("controller busy; try again")]
    ControllerBusy,
    #[error("listener busy; try again")]
    ListenerBusy,
    /// The state machine refused (a press or an utterance in progress).
    #[error("{0}")]
    Refused(&'static str),
    #[error("another capture is running")]
    CaptureRunning,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// What the status API may ask of push-to-talk: one narrow handle, so no
/// other module builds the controller's or the listener's messages.
#[derive(Debug, Clone)]
pub struct PttControl {
    events: tokio::sync::mpsc::Sender<ControlEvent>,
    listener: SyncSender<Command>,
}

impl PttControl {
    pub fn new(
        events: tokio::sync::mpsc::Sender<ControlEvent>,
        listener: SyncSender<Command>,
    ) -> Self {
        Self { events, listener }
    }

    /// Cycle every LED pattern once (never waits).
    pub fn test_leds(&self) -> Result<(), ControlError> {
        self.events
            .try_send(ControlEvent::TestLeds)
            .map_err(|_| ControlError::ControllerBusy)
    }

    /// Run 16 kHz mono `samples` through recognition and delivery as if
    /// spoken during a press; returns once the controller took it.
    pub async fn test_utterance(
        &self,
        samples: Vec<f32>,
        wait: Duration,
    ) -> Result<(), ControlError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.events
            .try_send(ControlEvent::TestUtterance { samples, reply })
            .map_err(|_| ControlError::ControllerBusy)?;
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(why))) => Err(ControlError::Refused(why)),
            _ => Err(ControlError::Timeout(wait)),
        }
    }

    /// The next `seconds` of the live microphone after the audio path
    /// (16 kHz mono); waits at most `seconds` + `slack`.
    pub async fn capture(&self, seconds: u32, slack: Duration) -> Result<Vec<f32>, ControlError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let req = listener::RecordRequest {
            buf: Vec::with_capacity(seconds as usize * crate::audio::PIPELINE_RATE as usize),
            reply,
        };
        self.listener
            .try_send(Command::Record(req))
            .map_err(|_| ControlError::ListenerBusy)?;
        let wait = Duration::from_secs(u64::from(seconds)) + slack;
        match tokio::time::timeout(wait, answer).await {
            Ok(Ok(samples)) => Ok(samples),
            Ok(Err(_)) => Err(ControlError::CaptureRunning),
            Err(_) => Err(ControlError::Timeout(wait)),
        }
    }
}

/// Transcripts kept in memory for the status page.
pub const RECENT_TRANSCRIPTS: usize = 50;

/// One transcript as delivered.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TranscriptRecord {
    pub id: u64,
    pub text: String,
    /// Unix time of the press, milliseconds.
    pub started_at_ms: u64,
    pub audio_ms: u64,
    pub speech_ms: u64,
    pub stt_ms: f64,
    pub release_to_text_ms: f64,
    pub avg_logprob: f32,
    /// Speculative recognition: `hit`, `miss`, `none` or `off`.
    pub speculative: listener::Speculative,
    /// `stt.model = "agreement"`: both models' texts, which won, the
    /// cross-scores (technicians only, like the text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<crate::stt::agreement::Verdict>,
}

/// The last transcripts, newest last, bounded; and how many there have
/// been, to wait on.
#[derive(Debug, Clone)]
pub struct RecentTranscripts {
    list: Arc<Mutex<VecDeque<TranscriptRecord>>>,
    count: Arc<tokio::sync::watch::Sender<u64>>,
    /// The last utterance's picture (waveform, VAD regions, marks).
    trace: Arc<Mutex<Option<Arc<trace::UtteranceTrace>>>>,
}

impl Default for RecentTranscripts {
    fn default() -> Self {
        Self {
            list: Arc::default(),
            count: Arc::new(tokio::sync::watch::channel(0).0),
            trace: Arc::default(),
        }
    }
}

impl RecentTranscripts {
    /// The last recognized utterance as a picture.
    pub fn last_trace(&self) -> Option<Arc<trace::UtteranceTrace>> {
        self.trace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_trace(&self, t: trace::UtteranceTrace) {
        *self.trace.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(t));
    }

    pub fn push(&self, t: TranscriptRecord) {
        {
            let mut q = self.list.lock().unwrap_or_else(PoisonError::into_inner);
            if q.len() == RECENT_TRANSCRIPTS {
                q.pop_front();
            }
            q.push_back(t);
        }
        self.count.send_modify(|n| *n += 1);
    }

    pub fn list(&self) -> Vec<TranscriptRecord> {
        let q = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        q.iter().cloned().collect()
    }

    /// The number of transcripts so far, as a receiver that wakes on each
    /// new one.
    pub fn count(&self) -> tokio::sync::watch::Receiver<u64> {
        self.count.subscribe()
    }
}

/// Carries events into the [`Machine`] and its actions out.
#[derive(Debug)]
pub struct Controller {
    machine: Machine,
    epoch: Instant,
    listener: SyncSender<Command>,
    leds: SyncSender<LedMsg>,
    stats: Arc<PttStats>,
    /// Recognized and waiting for delivery (at most the machine's queue).
    ready: VecDeque<Recognized>,
    recent: RecentTranscripts,
    last_press: Option<Instant>,
    fault: bool,
    /// The agent link's breaker is open (the offline LED pattern).
    offline: bool,
    device_id: String,
    outbox: Option<OutboxHandle>,
    events: tokio::sync::mpsc::Sender<ControlEvent>,
    recordings: Option<Arc<crate::ptt::recordings::Recordings>>,
}

/// Where the controller's transcripts go and how it hears back.
#[derive(Debug)]
pub struct SinkWiring {
    pub device_id: String,
    /// `None`: log and keep in memory only (no `agent.url`).
    pub outbox: Option<OutboxHandle>,
    pub events: tokio::sync::mpsc::Sender<ControlEvent>,
    /// `debug.keep_utterances`: where each utterance's audio is kept.
    pub recordings: Option<Arc<crate::ptt::recordings::Recordings>>,
}

impl Controller {
    pub fn new(
        machine: Machine,
        epoch: Instant,
        listener: SyncSender<Command>,
        leds: SyncSender<LedMsg>,
        stats: Arc<PttStats>,
        recent: RecentTranscripts,
        sink: SinkWiring,
    ) -> Self {
        let mut c = Self {
            machine,
            epoch,
            listener,
            leds,
            stats,
            ready: VecDeque::with_capacity(2),
            recent,
            last_press: None,
            fault: false,
            offline: false,
            device_id: sink.device_id,
            outbox: sink.outbox,
            events: sink.events,
            recordings: sink.recordings,
        };
        let first = c.machine.start();
        let _ = c.act(first, Instant::now());
        c
    }

    pub fn is_quiescent(&self) -> bool {
        self.machine.is_quiescent()
    }

    pub fn shown(&self) -> IndicatorState {
        self.machine.shown()
    }

    /// Utterances submitted and not yet recognized and stored.
    pub fn in_flight(&self) -> bool {
        self.machine.pending() > 0
    }

    /// A component failed (`fault`) or the agent is unreachable
    /// (`offline`: the breaker is open); the LEDs show it while idle.
    pub fn set_health(&mut self, fault: bool, offline: bool) {
        if fault != self.fault || offline != self.offline {
            self.fault = fault;
            self.offline = offline;
            self.input(Input::Health { fault, offline }, Instant::now());
        }
    }

    pub fn handle(&mut self, ev: ControlEvent) {
        match ev {
            ControlEvent::Button(e) => {
                let at_ms = u64::try_from(e.at.saturating_duration_since(self.epoch).as_millis())
                    .unwrap_or(u64::MAX);
                tracing::debug!(edge = e.edge.as_str(), at_ms, "button");
                let input = match e.edge {
                    Edge::Pressed => {
                        self.stats.note_press(crate::base::telemetry::unix_ms());
                        self.last_press = Some(e.at);
                        Input::Pressed { at_ms }
                    }
                    Edge::Released => {
                        self.stats.note_release(crate::base::telemetry::unix_ms());
                        Input::Released { at_ms }
                    }
                };
                self.input(input, e.at);
            }
            ControlEvent::ButtonExhausted => {}
            ControlEvent::TestUtterance { samples, reply } => {
                let answer = if !self.machine.is_quiescent() {
                    Err("busy: an utterance is being captured or processed")
                } else if self.fault {
                    Err("the microphone or another component is failed")
                } else {
                    let now = Instant::now();
                    let at_ms =
                        u64::try_from(now.saturating_duration_since(self.epoch).as_millis())
                            .unwrap_or(u64::MAX);
                    tracing::info!(
                        samples = samples.len(),
                        "test utterance from the status API"
                    );
                    // Press → the listener starts a capture; the samples
                    // replace it; the capture "ends by itself" → submitted;
                    // the release the machine then expects is consumed.
                    self.input(Input::Pressed { at_ms }, now);
                    self.command(Command::Inject(samples));
                    self.input(Input::CaptureEnded, now);
                    self.input(Input::Released { at_ms }, now);
                    Ok(())
                };
                let _ = reply.send(answer);
            }
            ControlEvent::TestLeds => {
                tracing::info!("LED test cycle requested");
                if self
                    .leds
                    .try_send(indicator::LedMsg::Test {
                        step: indicator::TEST_STEP,
                    })
                    .is_err()
                {
                    indicator::dropped(&self.stats);
                }
            }
            ControlEvent::CaptureEnded => self.input(Input::CaptureEnded, Instant::now()),
            ControlEvent::Recognized(r) => {
                let speech = r.result.has_text();
                if speech {
                    if self.ready.len() >= 2 {
                        // The machine allows two in flight; a third is a bug.
                        tracing::error!(
                            id = r.id,
                            "more recognitions than expected; oldest dropped"
                        );
                        self.ready.pop_front();
                    }
                    self.ready.push_back(*r);
                } else {
                    self.stats.no_speech.fetch_add(1, Relaxed);
                    tracing::info!(
                        id = r.id,
                        audio_ms = r.result.audio_ms(),
                        "no speech found; nothing sent"
                    );
                }
                self.input(Input::Recognized { speech }, Instant::now());
            }
            ControlEvent::RecognitionFailed => {
                self.input(Input::RecognitionFailed, Instant::now());
            }
            ControlEvent::Stored { ok } => {
                let input = if ok {
                    Input::Delivered
                } else {
                    Input::DeliveryFailed
                };
                self.input(input, Instant::now());
            }
        }
    }

    /// Feed `input` and carry out the actions, in order. An action that
    /// produces a new input (delivery) is handled after the current batch,
    /// so the LEDs see every state in the order the machine passed it.
    fn input(&mut self, input: Input, at: Instant) {
        let mut next = Some(input);
        while let Some(input) = next.take() {
            for a in self.machine.handle(input) {
                if let Some(i) = self.act(a, at) {
                    next = Some(i);
                }
            }
        }
    }

    /// Carry out one action; returns the input it produced, if any.
    fn act(&mut self, action: Action, at: Instant) -> Option<Input> {
        match action {
            Action::StartCapture => self.command(Command::Start { pressed_at: at }),
            Action::SubmitCapture => self.command(Command::Submit { released_at: at }),
            Action::DiscardCapture => {
                self.stats.too_short.fetch_add(1, Relaxed);
                self.command(Command::Discard);
            }
            Action::Deliver => {
                return match self.ready.pop_front() {
                    Some(r) => self.deliver(r),
                    None => Some(Input::DeliveryFailed),
                };
            }
            Action::Led { show, flash } => {
                if flash == Some(IndicatorState::Busy) {
                    self.stats.busy_rejected.fetch_add(1, Relaxed);
                }
                let pressed_at = (show == IndicatorState::Listening)
                    .then_some(self.last_press)
                    .flatten();
                let msg = LedMsg::Led {
                    show,
                    flash,
                    pressed_at,
                };
                if self.leds.try_send(msg).is_err() {
                    indicator::dropped(&self.stats);
                }
            }
        }
        None
    }

    fn command(&self, cmd: Command) {
        if let Err(e) = self.listener.try_send(cmd) {
            tracing::error!(error = %e, "listener not taking commands");
        }
    }

    /// The utterance's picture for the page, and its audio when recordings
    /// are on (written off the controller's task).
    fn keep(&self, r: &mut Recognized, rec: &TranscriptRecord) {
        let trace = r.trace.take();
        if let (Some(recs), Some(audio)) = (&self.recordings, r.audio.take()) {
            let meta = serde_json::json!({
                "transcript": rec,
                "auto_stopped": r.auto_stopped,
                "vad_speech_ms": trace.as_ref().map(|t| &t.speech_ms),
                "press_ms": trace.as_ref().map(|t| t.press_ms),
                "release_ms": trace.as_ref().map(|t| t.release_ms),
                "firmware_version": crate::VERSION,
            });
            let (recs, id, at) = (Arc::clone(recs), rec.id, rec.started_at_ms);
            tokio::task::spawn_blocking(move || {
                let now = crate::base::telemetry::unix_ms();
                match recs.save(id, at, &audio, &meta, now) {
                    Ok(name) => {
                        tracing::info!(id, recording = %name, "utterance kept (debug.keep_utterances)")
                    }
                    Err(e) => tracing::warn!(id, error = %e, "utterance not kept"),
                }
            });
        }
        if let Some(t) = trace {
            self.recent.set_trace(t);
        }
    }

    /// The transcript sink until the agent link lands: log and keep.
    /// Log and keep the transcript, then hand it to the sink. Returns the
    /// outcome when it is known at once (log sink); the outbox reports
    /// back with [`ControlEvent::Stored`].
    fn deliver(&mut self, mut r: Recognized) -> Option<Input> {
        let release_to_text_ms = r
            .done_at
            .saturating_duration_since(r.ended_at)
            .as_secs_f64()
            * 1000.0;
        self.stats.release_to_text.observe_ms(release_to_text_ms);
        self.stats.transcripts.fetch_add(1, Relaxed);
        let started_at = SystemTime::now()
            .checked_sub(r.pressed_at.elapsed())
            .unwrap_or(UNIX_EPOCH);
        let rec = TranscriptRecord {
            id: r.id,
            text: r.result.text.trim().to_owned(),
            started_at_ms: started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            audio_ms: r.result.audio_ms(),
            speech_ms: r.result.speech_ms(),
            stt_ms: r.result.total_ms,
            release_to_text_ms,
            avg_logprob: r.result.transcript.avg_logprob,
            speculative: r.speculative,
            agreement: r.result.agreement.clone(),
        };
        let payload = UtterancePayload {
            id: new_id(),
            device_id: self.device_id.clone(),
            text: rec.text.clone(),
            started_at: humantime::format_rfc3339_millis(started_at).to_string(),
            audio_ms: rec.audio_ms,
            speech_ms: rec.speech_ms,
            stt_ms: rec.stt_ms.round() as u64,
            avg_logprob: rec.avg_logprob,
            firmware_version: crate::VERSION.to_owned(),
        };
        self.keep(&mut r, &rec);
        // Listed before it is logged: whoever reads the log line finds
        // the transcript in `/api/v1/transcripts`.
        self.recent.push(rec.clone());
        // Agreement: which model's text this is, and the sums it won by.
        let (winner, scores) = match &rec.agreement {
            Some(v) => (
                v.winner.as_str(),
                v.scores.map_or_else(String::new, |s| {
                    format!(
                        "whisper text {:.3}, moonshine text {:.3} (scored in {:.0} ms)",
                        s.whisper_text.iter().sum::<f32>(),
                        s.moonshine_text.iter().sum::<f32>(),
                        s.ms
                    )
                }),
            ),
            None => ("", String::new()),
        };
        tracing::info!(
            target: "talkie::transcript",
            id = rec.id,
            text = %rec.text,
            audio_ms = rec.audio_ms,
            speech_ms = rec.speech_ms,
            stt_ms = format_args!("{:.0}", rec.stt_ms),
            release_to_text_ms = format_args!("{:.0}", rec.release_to_text_ms),
            auto_stopped = r.auto_stopped,
            speculative = r.speculative.as_str(),
            agreement = winner,
            scores = %scores,
            "transcript"
        );
        let Some(sink) = &self.outbox else {
            return Some(Input::Delivered);
        };
        let body = match serde_json::to_string(&payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the transcript");
                return Some(Input::DeliveryFailed);
            }
        };
        let sink = sink.clone();
        let events = self.events.clone();
        let local_id = r.id;
        // SQLite with synchronous=FULL waits for the disk: not on the
        // controller's task.
        tokio::task::spawn_blocking(move || {
            let ok = match sink.enqueue_blocking(&payload.id, &body) {
                Ok(()) => {
                    tracing::info!(target: "talkie::outbox", id = %payload.id, local_id, "transcript committed to the outbox");
                    true
                }
                Err(e) => {
                    tracing::error!(error = %e, local_id, "transcript not stored; the visitor sees the error blink");
                    false
                }
            };
            let _ = events.blocking_send(ControlEvent::Stored { ok });
        });
        None
    }
}

/// The button thread body: forwards debounced edges until `stop` is set or
/// a script runs out.
pub fn button_loop(
    mut button: Box<dyn Button>,
    events: tokio::sync::mpsc::Sender<ControlEvent>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    stats: Arc<PttStats>,
) {
    let mut backoff = Duration::from_millis(100);
    while !stop.load(Relaxed) {
        match button.next_event(Duration::from_millis(200)) {
            Ok(ButtonPoll::Event(e)) => {
                backoff = Duration::from_millis(100);
                if events.blocking_send(ControlEvent::Button(e)).is_err() {
                    return;
                }
            }
            Ok(ButtonPoll::Timeout) => {}
            Ok(ButtonPoll::Exhausted) => {
                let _ = events.blocking_send(ControlEvent::ButtonExhausted);
                return;
            }
            Err(e) => {
                stats.button_errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "button read failed");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 18 row 18: an open breaker shows the offline pattern while
    /// idle (the controller used to send `offline: false` always).
    #[test]
    fn an_open_breaker_shows_offline_and_a_fault_wins() {
        let (listener, _l) = std::sync::mpsc::sync_channel(16);
        let (leds, _d) = std::sync::mpsc::sync_channel(32);
        let (events, _e) = tokio::sync::mpsc::channel(8);
        let mut c = Controller::new(
            Machine::new(&crate::base::config::PttConfig::default()),
            Instant::now(),
            listener,
            leds,
            Arc::new(PttStats::default()),
            RecentTranscripts::default(),
            SinkWiring {
                device_id: "t".into(),
                outbox: None,
                events,
                recordings: None,
            },
        );
        assert_eq!(c.shown(), IndicatorState::Idle);
        c.set_health(false, true);
        assert_eq!(c.shown(), IndicatorState::Offline);
        c.set_health(true, true);
        assert_eq!(
            c.shown(),
            IndicatorState::Error,
            "a fault wins over offline"
        );
        c.set_health(false, false);
        assert_eq!(c.shown(), IndicatorState::Idle);
    }
}
