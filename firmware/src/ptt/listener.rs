//! From the audio path to utterances.
//!
//! ```text
//! talkie-audio ──[TapSink: 16 kHz pieces in pooled frames]──▶ talkie-listen ──Utterance──▶ talkie-stt
//!                                                                ▲ Start / Submit / Discard (controller)
//! ```
//! The audio thread only copies each 16 kHz piece into a frame taken from
//! a pool and `try_send`s it (bounded `std::sync::mpsc` array channels:
//! no allocation, no blocking; a full pool drops the piece and counts it).
//! The listener thread keeps its own pre-roll ring, so a capture started by
//! a press begins `audio.preroll_ms` before it, and copies captured audio
//! into one of a few utterance buffers allocated at start. It can end a
//! capture by itself: at `audio.max_utterance_s`, or after
//! `ptt.vad_auto_stop_ms` of silence that follows speech (Silero VAD).

use super::ControlEvent;
use crate::audio::frame::{Frame, FrameBox, FRAME_SAMPLES, QUEUE_FRAMES};
use crate::audio::pipeline::{AudioSink, SinkControl};
use crate::audio::preroll::PreRoll;
use crate::audio::PIPELINE_RATE;
use crate::telemetry::{now_ms, PttStats};
use crate::vad::{SileroVad, CHUNK};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Utterance buffers: one capturing, one queued, one being recognized.
pub const UTTERANCE_BUFFERS: usize = 3;

/// Longest the listener waits for audio before looking at its commands.
const POLL: Duration = Duration::from_millis(20);

/// The audio thread's end: forwards every 16 kHz piece to the listener.
pub struct TapSink {
    tx: SyncSender<FrameBox>,
    free: Receiver<FrameBox>,
    spare: Option<FrameBox>,
    stats: Arc<PttStats>,
}

impl std::fmt::Debug for TapSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapSink").finish_non_exhaustive()
    }
}

impl AudioSink for TapSink {
    fn on_audio(&mut self, samples: &[f32], _preroll: &PreRoll) -> SinkControl {
        for piece in samples.chunks(FRAME_SAMPLES) {
            let Some(mut frame) = self.spare.take().or_else(|| self.free.try_recv().ok()) else {
                self.stats.tap_dropped.fetch_add(1, Relaxed);
                continue;
            };
            frame.samples.clear();
            // Cannot fail: a piece is at most FRAME_SAMPLES long.
            let _ = frame.samples.extend_from_slice(piece);
            if let Err(e) = self.tx.try_send(frame) {
                self.stats.tap_dropped.fetch_add(1, Relaxed);
                let (mpsc::TrySendError::Full(f) | mpsc::TrySendError::Disconnected(f)) = e;
                self.spare = Some(f);
            }
        }
        SinkControl::Continue
    }
}

/// The listener's end of the tap.
#[derive(Debug)]
pub struct TapReceiver {
    rx: Receiver<FrameBox>,
    free: SyncSender<FrameBox>,
}

/// The tap between the audio thread and the listener, with its frame pool.
pub fn tap(stats: Arc<PttStats>) -> (TapSink, TapReceiver) {
    let (tx, rx) = mpsc::sync_channel(QUEUE_FRAMES);
    let (free_tx, free_rx) = mpsc::sync_channel(QUEUE_FRAMES);
    for _ in 0..QUEUE_FRAMES {
        // Cannot fail: the channel has room for the whole pool.
        let _ = free_tx.try_send(Box::<Frame>::default());
    }
    (
        TapSink {
            tx,
            free: free_rx,
            spare: None,
            stats,
        },
        TapReceiver { rx, free: free_tx },
    )
}

/// A technician's recording of the live 16 kHz stream (status API).
#[derive(Debug)]
pub struct RecordRequest {
    /// Filled up to its capacity (allocated by the requester, so the
    /// listener never allocates for it).
    pub buf: Vec<f32>,
    pub reply: tokio::sync::oneshot::Sender<Vec<f32>>,
}

/// Commands from the controller.
#[derive(Debug)]
pub enum Command {
    /// Start capturing (pre-roll first). `pressed_at` is the press time.
    Start {
        pressed_at: Instant,
    },
    /// End capture and send the utterance to recognition.
    Submit {
        released_at: Instant,
    },
    Discard,
    /// Replace the audio of the capture in progress with these samples and
    /// hold it for Submit (technician test: a WAV "spoken" into the button).
    Inject(Vec<f32>),
    /// Copy the next `buf.capacity()` samples of the live stream.
    Record(RecordRequest),
    Stop,
}

/// A captured utterance on its way to recognition.
#[derive(Debug)]
pub struct Utterance {
    pub id: u64,
    /// 16 kHz mono; pre-roll included. A pooled buffer: give it back with
    /// the [`Listener::pool`] sender when done.
    pub samples: Vec<f32>,
    pub pressed_at: Instant,
    /// Release, or the moment capture ended by itself.
    pub ended_at: Instant,
    /// Capture ended by itself (length limit or trailing silence).
    pub auto_stopped: bool,
    /// A simulated microphone waits until this is dropped, after
    /// recognition (see [`talkie_hal::sim_clock`]); `None` with real audio.
    pub hold: Option<talkie_hal::sim_clock::Hold>,
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    pub preroll_ms: u32,
    pub max_utterance_s: u32,
    /// 0 = off.
    pub vad_auto_stop_ms: u32,
    pub vad_threshold: f32,
}

enum Capture {
    Idle,
    Recording {
        buf: Vec<f32>,
        pressed_at: Instant,
    },
    /// Ended by itself; waiting for the controller's Submit.
    Held {
        buf: Vec<f32>,
        pressed_at: Instant,
        ended_at: Instant,
    },
}

/// Hands-free end of an utterance: silence after speech.
struct AutoStop {
    vad: SileroVad,
    threshold: f32,
    limit_samples: usize,
    chunk: [f32; CHUNK],
    fill: usize,
    speech_seen: bool,
    silence: usize,
}

impl AutoStop {
    fn reset(&mut self) {
        self.vad.reset();
        self.fill = 0;
        self.speech_seen = false;
        self.silence = 0;
    }

    /// Feed captured samples; true once trailing silence is long enough.
    fn push(&mut self, mut samples: &[f32]) -> bool {
        while !samples.is_empty() {
            let n = (CHUNK - self.fill).min(samples.len());
            self.chunk[self.fill..self.fill + n].copy_from_slice(&samples[..n]);
            self.fill += n;
            samples = &samples[n..];
            if self.fill == CHUNK {
                self.fill = 0;
                match self.vad.prob(&self.chunk) {
                    Ok(p) if p >= self.threshold => {
                        self.speech_seen = true;
                        self.silence = 0;
                    }
                    Ok(_) => self.silence += CHUNK,
                    Err(e) => {
                        tracing::warn!(error = %e, "auto-stop VAD failed; capture continues until release");
                        self.speech_seen = false;
                    }
                }
                if self.speech_seen && self.silence >= self.limit_samples {
                    return true;
                }
            }
        }
        false
    }
}

/// The listener thread's state.
pub struct Listener {
    tap: TapReceiver,
    commands: Receiver<Command>,
    events: tokio::sync::mpsc::Sender<ControlEvent>,
    recognizer: SyncSender<Utterance>,
    pool: Receiver<Vec<f32>>,
    pool_tx: SyncSender<Vec<f32>>,
    preroll: PreRoll,
    capture: Capture,
    max_samples: usize,
    auto_stop: Option<AutoStop>,
    next_id: u64,
    recording: Option<RecordRequest>,
    stats: Arc<PttStats>,
    /// A simulated microphone's clock: each submitted utterance holds it.
    clock: Option<talkie_hal::sim_clock::SimClock>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener").finish_non_exhaustive()
    }
}

/// The channels a listener is wired to.
pub struct ListenerWiring {
    pub tap: TapReceiver,
    pub commands: Receiver<Command>,
    pub events: tokio::sync::mpsc::Sender<ControlEvent>,
    pub recognizer: SyncSender<Utterance>,
    /// `audio.sim_clock`: the simulated microphone waits while an utterance
    /// is recognized.
    pub clock: Option<talkie_hal::sim_clock::SimClock>,
}

impl Listener {
    /// Allocate the pre-roll and the utterance buffers. Returns the listener
    /// and the sender through which used buffers come back.
    pub fn new(
        opts: &ListenerOptions,
        wiring: ListenerWiring,
        auto_stop_vad: Option<SileroVad>,
        stats: Arc<PttStats>,
    ) -> (Self, SyncSender<Vec<f32>>) {
        let rate = PIPELINE_RATE as usize;
        let preroll = opts.preroll_ms as usize * rate / 1000;
        let max_samples = opts.max_utterance_s as usize * rate;
        let (pool_tx, pool) = mpsc::sync_channel(UTTERANCE_BUFFERS);
        for _ in 0..UTTERANCE_BUFFERS {
            let _ = pool_tx.try_send(Vec::with_capacity(preroll + max_samples));
        }
        let auto_stop = match (opts.vad_auto_stop_ms, auto_stop_vad) {
            (ms, Some(vad)) if ms > 0 => Some(AutoStop {
                vad,
                threshold: opts.vad_threshold,
                limit_samples: ms as usize * rate / 1000,
                chunk: [0.0; CHUNK],
                fill: 0,
                speech_seen: false,
                silence: 0,
            }),
            _ => None,
        };
        (
            Self {
                tap: wiring.tap,
                commands: wiring.commands,
                events: wiring.events,
                recognizer: wiring.recognizer,
                pool,
                pool_tx: pool_tx.clone(),
                preroll: PreRoll::new(preroll),
                capture: Capture::Idle,
                max_samples: preroll + max_samples,
                auto_stop,
                next_id: 1,
                recording: None,
                stats,
                clock: wiring.clock,
            },
            pool_tx,
        )
    }

    /// The thread body: runs until [`Command::Stop`] or the controller goes away.
    pub fn run(mut self) {
        let mut audio_open = true;
        loop {
            self.stats.listen_beat_ms.store(now_ms(), Relaxed);
            loop {
                match self.commands.try_recv() {
                    Ok(Command::Stop) | Err(TryRecvError::Disconnected) => return,
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                }
            }
            if !audio_open {
                match self.commands.recv_timeout(Duration::from_millis(200)) {
                    Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                    Ok(cmd) => self.command(cmd),
                    Err(RecvTimeoutError::Timeout) => {}
                }
                continue;
            }
            match self.tap.rx.recv_timeout(POLL) {
                Ok(frame) => self.frame(frame),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => audio_open = false,
            }
        }
    }

    fn frame(&mut self, frame: FrameBox) {
        self.preroll.push(&frame.samples);
        if let Some(r) = &mut self.recording {
            let n = (r.buf.capacity() - r.buf.len()).min(frame.samples.len());
            r.buf.extend_from_slice(&frame.samples[..n]);
            if r.buf.len() == r.buf.capacity() {
                if let Some(r) = self.recording.take() {
                    let _ = r.reply.send(r.buf);
                }
            }
        }
        let mut ended = false;
        if let Capture::Recording { buf, .. } = &mut self.capture {
            let room = self.max_samples.saturating_sub(buf.len());
            let n = room.min(frame.samples.len());
            buf.extend_from_slice(&frame.samples[..n]);
            ended = buf.len() >= self.max_samples
                || self
                    .auto_stop
                    .as_mut()
                    .is_some_and(|a| a.push(&frame.samples[..n]));
        }
        // Cannot fail: the free channel has room for the whole pool.
        let _ = self.tap.free.try_send(frame);
        if ended {
            if let Capture::Recording { buf, pressed_at } =
                std::mem::replace(&mut self.capture, Capture::Idle)
            {
                self.capture = Capture::Held {
                    buf,
                    pressed_at,
                    ended_at: Instant::now(),
                };
                self.stats.auto_stopped.fetch_add(1, Relaxed);
                self.emit(ControlEvent::CaptureEnded);
            }
        }
    }

    /// Process every frame already queued, so a Submit includes all audio
    /// up to the release.
    fn drain(&mut self) {
        while let Ok(frame) = self.tap.rx.try_recv() {
            self.frame(frame);
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Start { pressed_at } => {
                self.drain();
                if let Capture::Recording { buf, .. } | Capture::Held { buf, .. } =
                    std::mem::replace(&mut self.capture, Capture::Idle)
                {
                    self.give_back(buf);
                }
                let Ok(mut buf) = self.pool.try_recv() else {
                    tracing::error!("no free utterance buffer; press ignored");
                    return;
                };
                buf.clear();
                buf.resize(self.preroll.len(), 0.0);
                let n = self.preroll.copy_into(&mut buf);
                buf.truncate(n);
                if let Some(a) = &mut self.auto_stop {
                    a.reset();
                }
                self.capture = Capture::Recording { buf, pressed_at };
            }
            Command::Submit { released_at } => {
                self.drain();
                let (buf, pressed_at, ended_at, auto_stopped) =
                    match std::mem::replace(&mut self.capture, Capture::Idle) {
                        Capture::Idle => {
                            // The capture never started (no free buffer).
                            self.emit(ControlEvent::RecognitionFailed);
                            return;
                        }
                        Capture::Recording { buf, pressed_at } => {
                            (buf, pressed_at, released_at, false)
                        }
                        Capture::Held {
                            buf,
                            pressed_at,
                            ended_at,
                        } => (buf, pressed_at, ended_at, true),
                    };
                let id = self.next_id;
                self.next_id += 1;
                let utt = Utterance {
                    id,
                    samples: buf,
                    pressed_at,
                    ended_at,
                    auto_stopped,
                    hold: self
                        .clock
                        .as_ref()
                        .map(talkie_hal::sim_clock::SimClock::hold),
                };
                self.stats.utterances.fetch_add(1, Relaxed);
                if let Err(e) = self.recognizer.try_send(utt) {
                    tracing::error!(id, "recognition queue full; utterance dropped");
                    let utt = match e {
                        mpsc::TrySendError::Full(u) | mpsc::TrySendError::Disconnected(u) => u,
                    };
                    self.give_back(utt.samples);
                    self.emit(ControlEvent::RecognitionFailed);
                }
            }
            Command::Discard => {
                if let Capture::Recording { buf, .. } | Capture::Held { buf, .. } =
                    std::mem::replace(&mut self.capture, Capture::Idle)
                {
                    self.give_back(buf);
                }
            }
            Command::Inject(samples) => {
                self.drain();
                match std::mem::replace(&mut self.capture, Capture::Idle) {
                    Capture::Recording {
                        mut buf,
                        pressed_at,
                    } => {
                        buf.clear();
                        let n = samples.len().min(self.max_samples);
                        buf.extend_from_slice(&samples[..n]);
                        self.capture = Capture::Held {
                            buf,
                            pressed_at,
                            ended_at: Instant::now(),
                        };
                    }
                    other => {
                        self.capture = other;
                        tracing::warn!("test utterance arrived without a capture; dropped");
                    }
                }
            }
            Command::Record(r) => {
                if self.recording.is_some() {
                    tracing::warn!("a recording is already running; second request refused");
                } else {
                    self.recording = Some(r);
                }
            }
            Command::Stop => {}
        }
    }

    fn give_back(&mut self, buf: Vec<f32>) {
        // Cannot fail: the pool channel has room for every buffer.
        let _ = self.pool_tx.try_send(buf);
    }

    fn emit(&self, ev: ControlEvent) {
        if self.events.blocking_send(ev).is_err() {
            tracing::debug!("controller gone; event dropped");
        }
    }
}
