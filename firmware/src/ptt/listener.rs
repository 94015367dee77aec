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
//!
//! With `ptt.speculative`, the same VAD follows the trim the recognizer
//! would give the capture ([`SpeechSpan`]); at the first pause after speech,
//! when the worker is idle, a copy of the capture so far goes to it as a
//! speculative job. At release the job *is* the utterance when the trim
//! span has not changed since the cut (no speech came back), otherwise it
//! is dropped (and cancelled at the worker's next decoder step as soon as
//! the span changes) and the whole capture is recognized as usual.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use super::ControlEvent;
use crate::audio::frame::{Frame, FrameBox, FRAME_SAMPLES, QUEUE_FRAMES};
use crate::audio::pipeline::{AudioSink, SinkControl};
use crate::audio::preroll::PreRoll;
use crate::audio::PIPELINE_RATE;
use crate::base::telemetry::{now_ms, PttStats};
use crate::vad::{SegmenterConfig, SileroVad, Span, SpeechSpan, CHUNK};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Utterance buffers: one capturing, one queued, one being recognized,
/// one for a speculative copy.
pub const UTTERANCE_BUFFERS: usize = 4;

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

/// How speculative recognition went for one utterance (its log line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Speculative {
    /// `ptt.speculative = false`.
    Off,
    /// On, but no pause after speech came before the release (or the
    /// worker was busy): recognized after release as usual.
    None,
    /// The speculative result was the utterance: ready at release.
    Hit,
    /// Speech came back after every cut: recognized after release.
    Miss,
}

impl Speculative {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::None => "none",
            Self::Hit => "hit",
            Self::Miss => "miss",
        }
    }
}

/// What the listener and the worker share for speculative recognition.
#[derive(Debug, Default)]
pub struct SpecShared {
    /// Jobs sent to the worker and not yet finished (a speculative one
    /// until it is committed or dropped). Speculation starts only at 0:
    /// a real utterance always goes first.
    pub outstanding: AtomicUsize,
    /// The speculative job the listener still wants (0: none). The worker
    /// abandons a speculative run at its next decoder step when it differs.
    pub wanted: AtomicU64,
}

impl SpecShared {
    /// One outstanding job is done (never below zero).
    pub fn finished(&self) {
        let _ = self
            .outstanding
            .fetch_update(Relaxed, Relaxed, |n| Some(n.saturating_sub(1)));
    }
}

/// What the listener hands the recognition worker.
#[derive(Debug)]
pub enum Job {
    /// An utterance to recognize now.
    Recognize(Utterance),
    /// A copy of the capture so far, cut at a pause (pooled buffer).
    Speculate { spec: u64, samples: Vec<f32> },
    /// The speculative job `spec` is this utterance: use its result.
    Commit {
        spec: u64,
        info: UtteranceInfo,
        /// Length of the whole capture (its `audio_ms`).
        audio_samples: usize,
    },
    /// The speculative job `spec` is stale: drop its result.
    Drop { spec: u64 },
}

/// A captured utterance on its way to recognition.
#[derive(Debug)]
pub struct Utterance {
    pub info: UtteranceInfo,
    /// 16 kHz mono; pre-roll included. A pooled buffer: give it back with
    /// the `Listener::pool` sender when done.
    pub samples: Vec<f32>,
}

/// Everything about an utterance but its audio.
#[derive(Debug)]
pub struct UtteranceInfo {
    pub id: u64,
    pub pressed_at: Instant,
    /// Release, or the moment capture ended by itself.
    pub ended_at: Instant,
    /// Capture ended by itself (length limit or trailing silence).
    pub auto_stopped: bool,
    /// A simulated microphone waits until this is dropped, after
    /// recognition (see [`talkie_hal::sim_clock`]); `None` with real audio.
    pub hold: Option<talkie_hal::sim_clock::Hold>,
    pub speculative: Speculative,
    /// Samples of pre-roll at the start of the capture (where the press
    /// falls, for the technician's waveform).
    pub preroll_samples: usize,
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    pub preroll_ms: u32,
    pub max_utterance_s: u32,
    /// 0 = off.
    pub vad_auto_stop_ms: u32,
    pub vad_threshold: f32,
    /// The recognizer's trim (`[vad]`), followed for speculation.
    pub segmenter: SegmenterConfig,
    /// `ptt.speculative`: the silence after speech before a speculative
    /// run, in milliseconds; `None` = off.
    pub speculate_after_ms: Option<u32>,
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

/// The capture's VAD, from the first sample of the buffer (pre-roll
/// included, in [`CHUNK`]s aligned to it, as the recognizer's trim sees
/// it): hands-free end of an utterance (silence after speech) and the
/// speech span for speculation.
struct CaptureVad {
    vad: SileroVad,
    threshold: f32,
    /// `ptt.vad_auto_stop_ms` in samples; `None` = off.
    auto_stop: Option<usize>,
    chunk: [f32; CHUNK],
    fill: usize,
    speech_seen: bool,
    silence: usize,
    span: SpeechSpan,
    /// The VAD failed this capture: no auto stop, no speculation.
    failed: bool,
}

impl CaptureVad {
    fn reset(&mut self) {
        self.vad.reset();
        self.fill = 0;
        self.speech_seen = false;
        self.silence = 0;
        self.span.reset();
        self.failed = false;
    }

    /// Feed captured samples; true once trailing silence is long enough
    /// for the auto stop.
    fn push(&mut self, mut samples: &[f32]) -> bool {
        let mut stop = false;
        while !samples.is_empty() && !self.failed {
            let n = (CHUNK - self.fill).min(samples.len());
            let (head, rest) = samples.split_at(n);
            if let Some(dst) = self.chunk.get_mut(self.fill..self.fill + n) {
                dst.copy_from_slice(head);
            }
            self.fill += n;
            samples = rest;
            if self.fill == CHUNK {
                self.fill = 0;
                stop |= self.chunk_done();
            }
        }
        stop
    }

    fn chunk_done(&mut self) -> bool {
        match self.vad.prob(&self.chunk) {
            Ok(p) => {
                self.span.push(p);
                if p >= self.threshold {
                    self.speech_seen = true;
                    self.silence = 0;
                } else {
                    self.silence += CHUNK;
                }
                self.auto_stop
                    .is_some_and(|limit| self.speech_seen && self.silence >= limit)
            }
            Err(e) => {
                tracing::warn!(error = %e, "capture VAD failed; no auto stop or speculation until the next press");
                self.failed = true;
                false
            }
        }
    }

    /// The span the recognizer's trim will give the whole capture of
    /// `len` samples (the last partial chunk zero-padded, as the trim does).
    fn final_span(&mut self, len: usize) -> Option<Span> {
        if self.fill > 0 {
            if let Some(rest) = self.chunk.get_mut(self.fill..) {
                rest.fill(0.0);
            }
            self.fill = 0;
            let _ = self.chunk_done();
        }
        self.span.span_at(len as u64)
    }
}

/// The speculative run of the capture in progress.
#[derive(Debug, Clone, Copy)]
struct Cut {
    spec: u64,
    span: Span,
}

/// Speculative recognition's state in the listener.
struct Speculation {
    after: u64,
    next_spec: u64,
    current: Option<Cut>,
    /// A speculative run was made for this capture.
    ran: bool,
    /// This capture's audio is not the microphone's (a test utterance).
    blocked: bool,
}

/// The listener thread's state.
pub struct Listener {
    tap: TapReceiver,
    commands: Receiver<Command>,
    events: tokio::sync::mpsc::Sender<ControlEvent>,
    recognizer: SyncSender<Job>,
    pool: Receiver<Vec<f32>>,
    pool_tx: SyncSender<Vec<f32>>,
    preroll: PreRoll,
    capture: Capture,
    max_samples: usize,
    capture_vad: Option<CaptureVad>,
    speculation: Option<Speculation>,
    /// Jobs outstanding at the worker (shared with it).
    shared: Arc<SpecShared>,
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
    pub recognizer: SyncSender<Job>,
    /// Shared with the worker for speculative recognition.
    pub spec: Arc<SpecShared>,
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
        capture_vad: Option<SileroVad>,
        stats: Arc<PttStats>,
    ) -> (Self, SyncSender<Vec<f32>>) {
        let rate = PIPELINE_RATE as usize;
        let preroll = opts.preroll_ms as usize * rate / 1000;
        let max_samples = opts.max_utterance_s as usize * rate;
        let (pool_tx, pool) = mpsc::sync_channel(UTTERANCE_BUFFERS);
        for _ in 0..UTTERANCE_BUFFERS {
            let _ = pool_tx.try_send(Vec::with_capacity(preroll + max_samples));
        }
        let capture_vad = capture_vad.map(|vad| CaptureVad {
            vad,
            threshold: opts.vad_threshold,
            auto_stop: (opts.vad_auto_stop_ms > 0)
                .then(|| opts.vad_auto_stop_ms as usize * rate / 1000),
            chunk: [0.0; CHUNK],
            fill: 0,
            speech_seen: false,
            silence: 0,
            span: SpeechSpan::new(opts.segmenter.clone()),
            failed: false,
        });
        let speculation = match (opts.speculate_after_ms, &capture_vad) {
            (Some(ms), Some(_)) => Some(Speculation {
                after: u64::from(ms) * rate as u64 / 1000,
                next_spec: 1,
                current: None,
                ran: false,
                blocked: false,
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
                capture_vad,
                speculation,
                shared: Arc::clone(&wiring.spec),
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
                    Ok(Command::Stop) | Err(TryRecvError::Disconnected) => {
                        // Shutdown: a speculative run stops at its next step.
                        self.cancel_speculation();
                        return;
                    }
                    Ok(cmd) => self.command(cmd),
                    Err(TryRecvError::Empty) => break,
                }
            }
            if !audio_open {
                match self.commands.recv_timeout(Duration::from_millis(200)) {
                    Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => {
                        self.cancel_speculation();
                        return;
                    }
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
            r.buf
                .extend_from_slice(frame.samples.get(..n).unwrap_or_default());
            if r.buf.len() == r.buf.capacity() {
                if let Some(r) = self.recording.take() {
                    let _ = r.reply.send(r.buf);
                }
            }
        }
        let mut ended = false;
        if let Capture::Recording { buf, .. } = &mut self.capture {
            let room = self.max_samples.saturating_sub(buf.len());
            let new = frame
                .samples
                .get(..room.min(frame.samples.len()))
                .unwrap_or_default();
            buf.extend_from_slice(new);
            let auto_stop = self.capture_vad.as_mut().is_some_and(|v| v.push(new));
            ended = buf.len() >= self.max_samples || auto_stop;
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
        } else {
            self.speculate();
        }
    }

    /// While capturing: drop a speculative run whose span changed (speech
    /// came back), and start one at a pause when the worker is idle.
    fn speculate(&mut self) {
        let (Some(spec), Some(vad), Capture::Recording { buf, .. }) = (
            self.speculation.as_mut(),
            self.capture_vad.as_ref(),
            &self.capture,
        ) else {
            return;
        };
        if vad.failed || spec.blocked {
            return;
        }
        if let Some(cut) = spec.current {
            if vad.span.span() == Some(cut.span) {
                return;
            }
            tracing::debug!(spec = cut.spec, "speech came back; speculative run dropped");
            spec.current = None;
            self.shared.wanted.store(0, Relaxed);
            send_job(&self.recognizer, Job::Drop { spec: cut.spec });
        }
        if self.shared.outstanding.load(Relaxed) != 0 {
            return;
        }
        let Some((at, span)) = vad.span.pause(spec.after) else {
            return;
        };
        let Some(prefix) = usize::try_from(at).ok().and_then(|at| buf.get(..at)) else {
            return;
        };
        let Ok(mut copy) = self.pool.try_recv() else {
            tracing::debug!("no free utterance buffer; no speculative run");
            return;
        };
        copy.clear();
        copy.extend_from_slice(prefix);
        let id = spec.next_spec;
        spec.next_spec += 1;
        self.shared.wanted.store(id, Relaxed);
        self.shared.outstanding.fetch_add(1, Relaxed);
        match self.recognizer.try_send(Job::Speculate {
            spec: id,
            samples: copy,
        }) {
            Ok(()) => {
                spec.current = Some(Cut { spec: id, span });
                spec.ran = true;
                tracing::debug!(spec = id, cut_samples = at, "speculative run started");
            }
            Err(e) => {
                self.shared.finished();
                self.shared.wanted.store(0, Relaxed);
                if let mpsc::TrySendError::Full(Job::Speculate { samples, .. })
                | mpsc::TrySendError::Disconnected(Job::Speculate { samples, .. }) = e
                {
                    // Cannot fail: the pool channel has room for every buffer.
                    let _ = self.pool_tx.try_send(samples);
                }
            }
        }
    }

    /// Drop the speculative run of the capture in progress, if any (a
    /// committed one is an utterance: it runs to its end).
    fn cancel_speculation(&mut self) {
        if let Some(cut) = self.speculation.as_mut().and_then(|s| s.current.take()) {
            self.shared.wanted.store(0, Relaxed);
            send_job(&self.recognizer, Job::Drop { spec: cut.spec });
        }
    }

    /// A new capture: the VAD starts over on its pre-roll.
    fn start_vad(&mut self) {
        if let Some(s) = &mut self.speculation {
            s.ran = false;
            s.blocked = false;
        }
        if let (Some(v), Capture::Recording { buf, .. }) = (&mut self.capture_vad, &self.capture) {
            v.reset();
            // Auto stop waits for speech after the press: the pre-roll only
            // sets the VAD's state and the trim span.
            let _ = v.push(buf);
            v.speech_seen = false;
            v.silence = 0;
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
                self.cancel_speculation();
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
                self.capture = Capture::Recording { buf, pressed_at };
                self.start_vad();
            }
            Command::Submit { released_at } => self.submit(released_at),
            Command::Discard => {
                self.cancel_speculation();
                if let Capture::Recording { buf, .. } | Capture::Held { buf, .. } =
                    std::mem::replace(&mut self.capture, Capture::Idle)
                {
                    self.give_back(buf);
                }
            }
            Command::Inject(samples) => {
                self.drain();
                self.cancel_speculation();
                match std::mem::replace(&mut self.capture, Capture::Idle) {
                    Capture::Recording {
                        mut buf,
                        pressed_at,
                    } => {
                        buf.clear();
                        let n = samples.len().min(self.max_samples);
                        buf.extend_from_slice(samples.get(..n).unwrap_or_default());
                        if let Some(s) = &mut self.speculation {
                            s.blocked = true;
                        }
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

    /// How speculation went for the capture that just ended (of `len`
    /// samples): `Some(spec)` when its speculative run is the utterance
    /// (the whole capture trims to the span of the cut); a stale run is
    /// dropped here.
    fn resolve_speculation(&mut self, len: usize) -> (Speculative, Option<u64>) {
        let Some(s) = &mut self.speculation else {
            return (Speculative::Off, None);
        };
        let Some(cut) = s.current.take() else {
            let how = if s.ran {
                Speculative::Miss
            } else {
                Speculative::None
            };
            return (how, None);
        };
        let whole = match &mut self.capture_vad {
            Some(v) if !v.failed && !s.blocked => v.final_span(len),
            _ => None,
        };
        if whole == Some(cut.span) {
            return (Speculative::Hit, Some(cut.spec));
        }
        self.shared.wanted.store(0, Relaxed);
        send_job(&self.recognizer, Job::Drop { spec: cut.spec });
        (Speculative::Miss, None)
    }

    /// End the capture: commit the speculative run when the whole capture
    /// trims to the same span, otherwise recognize the whole capture.
    fn submit(&mut self, released_at: Instant) {
        self.drain();
        let (buf, pressed_at, ended_at, auto_stopped) =
            match std::mem::replace(&mut self.capture, Capture::Idle) {
                Capture::Idle => {
                    // The capture never started (no free buffer).
                    self.cancel_speculation();
                    self.emit(ControlEvent::RecognitionFailed);
                    return;
                }
                Capture::Recording { buf, pressed_at } => (buf, pressed_at, released_at, false),
                Capture::Held {
                    buf,
                    pressed_at,
                    ended_at,
                } => (buf, pressed_at, ended_at, true),
            };
        let id = self.next_id;
        self.next_id += 1;
        self.stats.utterances.fetch_add(1, Relaxed);
        let (speculative, hit) = self.resolve_speculation(buf.len());
        let info = UtteranceInfo {
            id,
            pressed_at,
            ended_at,
            auto_stopped,
            hold: self
                .clock
                .as_ref()
                .map(talkie_hal::sim_clock::SimClock::hold),
            speculative,
            preroll_samples: self.preroll.len(),
        };
        if let Some(spec) = hit {
            let audio_samples = buf.len();
            self.give_back(buf);
            let job = Job::Commit {
                spec,
                info,
                audio_samples,
            };
            if !send_job(&self.recognizer, job) {
                self.emit(ControlEvent::RecognitionFailed);
            }
            return;
        }
        let utt = Utterance { info, samples: buf };
        self.shared.outstanding.fetch_add(1, Relaxed);
        if let Err(e) = self.recognizer.try_send(Job::Recognize(utt)) {
            tracing::error!(id, "recognition queue full; utterance dropped");
            self.shared.finished();
            if let mpsc::TrySendError::Full(Job::Recognize(u))
            | mpsc::TrySendError::Disconnected(Job::Recognize(u)) = e
            {
                self.give_back(u.samples);
            }
            self.emit(ControlEvent::RecognitionFailed);
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

/// Queue a job for the worker; false (and logged) when the queue is full.
fn send_job(queue: &SyncSender<Job>, job: Job) -> bool {
    match queue.try_send(job) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "recognition queue full; job dropped");
            false
        }
    }
}
