//! The interaction state machine: pure, no threads, no clocks of its own.
//!
//! It is the product of two small states — whether the microphone is being
//! captured for an utterance, and how many captured utterances are still in
//! recognition/delivery — plus two health flags. Every input yields a short
//! list of [`Action`]s; the LED to show is derived from the state after the
//! input, so it can never disagree with it. The table in `docs/ptt.md` lists
//! every transition; the tests below walk each one.

use crate::base::config::{BusyPolicy, PttConfig, PttMode};
use talkie_hal::gpio::IndicatorState;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Debounced button press, in milliseconds on any monotonic clock.
    Pressed {
        at_ms: u64,
    },
    Released {
        at_ms: u64,
    },
    /// Capture stopped by itself: `audio.max_utterance_s` reached, or
    /// `ptt.vad_auto_stop_ms` of silence after speech.
    CaptureEnded,
    /// Recognition of the oldest submitted utterance finished.
    Recognized {
        speech: bool,
    },
    RecognitionFailed,
    /// The transcript sink accepted (or refused) the transcript.
    Delivered,
    DeliveryFailed,
    /// Health: a component needed for utterances is failed (`fault`), or
    /// the agent cannot be reached (`offline`).
    Health {
        fault: bool,
        offline: bool,
    },
}

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Start capturing an utterance (the pre-roll is prepended).
    StartCapture,
    /// End capture and submit the utterance for recognition (behind any
    /// utterance already in progress).
    SubmitCapture,
    /// End capture and throw the audio away.
    DiscardCapture,
    /// Hand the oldest utterance's transcript to the sink.
    Deliver,
    /// Indicators: `show` is the lasting state; `flash`, when set, is shown
    /// over it for [`IndicatorState::flash_ms`].
    Led {
        show: IndicatorState,
        flash: Option<IndicatorState>,
    },
}

/// Actions of one input (never more than three).
pub type Actions = heapless::Vec<Action, 4>;

/// Where the oldest submitted utterance is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Recognizing,
    Delivering,
}

/// The interaction rules and state.
#[derive(Debug, Clone)]
pub struct Machine {
    mode: PttMode,
    min_press_ms: u64,
    busy: BusyPolicy,
    /// Press time of the utterance being captured.
    capture: Option<u64>,
    /// The next release belongs to a press that did not start a capture.
    ignore_release: bool,
    /// Submitted utterances not yet finished (recognizing, delivering, queued).
    pending: u8,
    head: Phase,
    fault: bool,
    offline: bool,
    shown: IndicatorState,
}

impl Machine {
    pub fn new(cfg: &PttConfig) -> Self {
        Self {
            mode: cfg.mode,
            min_press_ms: u64::from(cfg.min_press_ms),
            busy: cfg.busy,
            capture: None,
            ignore_release: false,
            pending: 0,
            head: Phase::Recognizing,
            fault: false,
            offline: false,
            shown: IndicatorState::Off,
        }
    }

    /// The first LED command: what to show at start.
    pub fn start(&mut self) -> Action {
        self.shown = self.lasting();
        Action::Led {
            show: self.shown,
            flash: None,
        }
    }

    /// Nothing captured, nothing in flight.
    pub fn is_quiescent(&self) -> bool {
        self.capture.is_none() && self.pending == 0
    }

    pub fn is_capturing(&self) -> bool {
        self.capture.is_some()
    }

    /// Submitted utterances not finished yet.
    pub fn pending(&self) -> u8 {
        self.pending
    }

    /// The lasting indicator state.
    pub fn shown(&self) -> IndicatorState {
        self.shown
    }

    fn lasting(&self) -> IndicatorState {
        if self.capture.is_some() {
            IndicatorState::Listening
        } else if self.pending > 0 {
            match self.head {
                Phase::Recognizing => IndicatorState::Processing,
                Phase::Delivering => IndicatorState::Sending,
            }
        } else if self.fault {
            IndicatorState::Error
        } else if self.offline {
            IndicatorState::Offline
        } else {
            IndicatorState::Idle
        }
    }

    /// Most utterances submitted and not finished.
    fn capacity(&self) -> u8 {
        match self.busy {
            BusyPolicy::Queue => 2,
            BusyPolicy::Reject => 1,
        }
    }

    /// Feed one input; returns what to do, in order.
    pub fn handle(&mut self, input: Input) -> Actions {
        let mut out = Actions::new();
        let mut flash = None;
        match input {
            Input::Pressed { at_ms } => match (self.capture, self.mode) {
                (Some(start), PttMode::Toggle) => {
                    self.finish(at_ms.saturating_sub(start), &mut out, &mut flash);
                }
                (Some(_), PttMode::Hold) => {}
                (None, _) => {
                    if self.fault {
                        flash = Some(IndicatorState::Error);
                        self.ignore_release = true;
                    } else if self.pending >= self.capacity() {
                        flash = Some(IndicatorState::Busy);
                        self.ignore_release = true;
                    } else {
                        self.capture = Some(at_ms);
                        self.ignore_release = false;
                        push(&mut out, Action::StartCapture);
                    }
                }
            },
            Input::Released { at_ms } => {
                if std::mem::take(&mut self.ignore_release) || self.mode == PttMode::Toggle {
                } else if let Some(start) = self.capture {
                    self.finish(at_ms.saturating_sub(start), &mut out, &mut flash);
                }
            }
            Input::CaptureEnded => {
                if self.capture.take().is_some() {
                    self.submit(&mut out);
                    self.ignore_release = self.mode == PttMode::Hold;
                }
            }
            Input::Recognized { speech } => {
                if self.pending > 0 && self.head == Phase::Recognizing {
                    if speech {
                        self.head = Phase::Delivering;
                        push(&mut out, Action::Deliver);
                    } else {
                        flash = Some(IndicatorState::NoSpeech);
                        self.complete();
                    }
                }
            }
            Input::RecognitionFailed => {
                if self.pending > 0 && self.head == Phase::Recognizing {
                    flash = Some(IndicatorState::Error);
                    self.complete();
                }
            }
            Input::Delivered | Input::DeliveryFailed => {
                if self.pending > 0 && self.head == Phase::Delivering {
                    flash = Some(if input == Input::Delivered {
                        IndicatorState::Sent
                    } else {
                        IndicatorState::Error
                    });
                    self.complete();
                }
            }
            Input::Health { fault, offline } => {
                self.fault = fault;
                self.offline = offline;
            }
        }
        let lasting = self.lasting();
        if lasting != self.shown || flash.is_some() {
            self.shown = lasting;
            push(
                &mut out,
                Action::Led {
                    show: lasting,
                    flash,
                },
            );
        }
        out
    }

    /// Capture ends after `held_ms`: too short is discarded, else submitted.
    fn finish(&mut self, held_ms: u64, out: &mut Actions, flash: &mut Option<IndicatorState>) {
        self.capture = None;
        if held_ms < self.min_press_ms {
            push(out, Action::DiscardCapture);
            *flash = Some(IndicatorState::TooShort);
        } else {
            self.submit(out);
        }
    }

    fn submit(&mut self, out: &mut Actions) {
        if self.pending == 0 {
            self.head = Phase::Recognizing;
        }
        self.pending += 1;
        push(out, Action::SubmitCapture);
    }

    /// The oldest utterance is done; the next queued one is recognizing.
    fn complete(&mut self) {
        self.pending = self.pending.saturating_sub(1);
        self.head = Phase::Recognizing;
    }
}

fn push(out: &mut Actions, a: Action) {
    // Cannot fail: an input yields at most three actions.
    let _ = out.push(a);
}

#[cfg(test)]
mod tests {
    use super::*;
    use IndicatorState as S;

    fn machine(f: impl FnOnce(&mut PttConfig)) -> Machine {
        let mut cfg = PttConfig::default();
        f(&mut cfg);
        let mut m = Machine::new(&cfg);
        assert_eq!(
            m.start(),
            Action::Led {
                show: S::Idle,
                flash: None
            }
        );
        m
    }

    fn led(show: S) -> Action {
        Action::Led { show, flash: None }
    }

    fn flash(show: S, f: S) -> Action {
        Action::Led {
            show,
            flash: Some(f),
        }
    }

    fn run(m: &mut Machine, input: Input) -> Vec<Action> {
        m.handle(input).into_iter().collect()
    }

    const fn press(at_ms: u64) -> Input {
        Input::Pressed { at_ms }
    }

    const fn release(at_ms: u64) -> Input {
        Input::Released { at_ms }
    }

    #[test]
    fn a_full_utterance_goes_idle_listening_processing_sending_sent_idle() {
        let mut m = machine(|_| {});
        assert_eq!(
            run(&mut m, press(1000)),
            [Action::StartCapture, led(S::Listening)]
        );
        assert!(m.is_capturing());
        assert_eq!(
            run(&mut m, release(3000)),
            [Action::SubmitCapture, led(S::Processing)]
        );
        assert_eq!(
            run(&mut m, Input::Recognized { speech: true }),
            [Action::Deliver, led(S::Sending)]
        );
        assert!(!m.is_quiescent());
        assert_eq!(run(&mut m, Input::Delivered), [flash(S::Idle, S::Sent)]);
        assert!(m.is_quiescent());
    }

    #[test]
    fn a_short_press_is_discarded_with_a_too_short_blink() {
        let mut m = machine(|c| c.min_press_ms = 150);
        run(&mut m, press(0));
        assert_eq!(
            run(&mut m, release(149)),
            [Action::DiscardCapture, flash(S::Idle, S::TooShort)]
        );
        assert!(m.is_quiescent());
        run(&mut m, press(1000));
        assert_eq!(
            run(&mut m, release(1150)),
            [Action::SubmitCapture, led(S::Processing)],
            "exactly min_press_ms is long enough"
        );
    }

    #[test]
    fn no_speech_sends_nothing() {
        let mut m = machine(|_| {});
        run(&mut m, press(0));
        run(&mut m, release(2000));
        assert_eq!(
            run(&mut m, Input::Recognized { speech: false }),
            [flash(S::Idle, S::NoSpeech)]
        );
        assert!(m.is_quiescent());
    }

    #[test]
    fn busy_queue_keeps_one_utterance_and_rejects_the_next() {
        let mut m = machine(|c| c.busy = BusyPolicy::Queue);
        run(&mut m, press(0));
        run(&mut m, release(1000));
        // Second press while the first is recognized: captured and queued.
        assert_eq!(
            run(&mut m, press(1100)),
            [Action::StartCapture, led(S::Listening)]
        );
        assert_eq!(
            run(&mut m, release(2000)),
            [Action::SubmitCapture, led(S::Processing)]
        );
        assert_eq!(m.pending(), 2);
        // Third: busy blink, and its release is ignored.
        assert_eq!(run(&mut m, press(2100)), [flash(S::Processing, S::Busy)]);
        assert_eq!(run(&mut m, release(3000)), []);
        assert_eq!(
            run(&mut m, Input::Recognized { speech: true }),
            [Action::Deliver, led(S::Sending)]
        );
        assert_eq!(
            run(&mut m, Input::Delivered),
            [flash(S::Processing, S::Sent)],
            "the queued utterance is now being recognized"
        );
        assert_eq!(
            run(&mut m, Input::Recognized { speech: true }),
            [Action::Deliver, led(S::Sending)]
        );
        assert_eq!(run(&mut m, Input::Delivered), [flash(S::Idle, S::Sent)]);
        assert!(m.is_quiescent());
    }

    #[test]
    fn busy_reject_refuses_any_press_while_processing() {
        let mut m = machine(|c| c.busy = BusyPolicy::Reject);
        run(&mut m, press(0));
        run(&mut m, release(1000));
        assert_eq!(run(&mut m, press(1100)), [flash(S::Processing, S::Busy)]);
        assert_eq!(run(&mut m, release(2000)), []);
        assert_eq!(m.pending(), 1);
        run(&mut m, Input::Recognized { speech: true });
        assert_eq!(run(&mut m, press(2100)), [flash(S::Sending, S::Busy)]);
    }

    #[test]
    fn capture_ending_by_itself_submits_and_ignores_the_later_release() {
        let mut m = machine(|_| {});
        run(&mut m, press(0));
        assert_eq!(
            run(&mut m, Input::CaptureEnded),
            [Action::SubmitCapture, led(S::Processing)]
        );
        assert_eq!(run(&mut m, release(40_000)), []);
        assert_eq!(run(&mut m, Input::CaptureEnded), [], "nothing captured");
        assert_eq!(m.pending(), 1);
    }

    #[test]
    fn toggle_mode_starts_and_stops_on_presses() {
        let mut m = machine(|c| c.mode = PttMode::Toggle);
        assert_eq!(
            run(&mut m, press(0)),
            [Action::StartCapture, led(S::Listening)]
        );
        assert_eq!(run(&mut m, release(80)), [], "release does nothing");
        assert_eq!(
            run(&mut m, press(2000)),
            [Action::SubmitCapture, led(S::Processing)]
        );
        assert_eq!(run(&mut m, release(2080)), []);
        // A second press too soon after the first is a too-short utterance.
        run(&mut m, Input::Recognized { speech: false });
        run(&mut m, press(5000));
        assert_eq!(
            run(&mut m, press(5100)),
            [Action::DiscardCapture, flash(S::Idle, S::TooShort)]
        );
    }

    #[test]
    fn failures_flash_error_and_free_the_slot() {
        let mut m = machine(|_| {});
        run(&mut m, press(0));
        run(&mut m, release(1000));
        assert_eq!(
            run(&mut m, Input::RecognitionFailed),
            [flash(S::Idle, S::Error)]
        );
        run(&mut m, press(2000));
        run(&mut m, release(3000));
        run(&mut m, Input::Recognized { speech: true });
        assert_eq!(
            run(&mut m, Input::DeliveryFailed),
            [flash(S::Idle, S::Error)]
        );
        assert!(m.is_quiescent());
    }

    #[test]
    fn fault_and_offline_are_lasting_states_and_a_fault_refuses_presses() {
        let mut m = machine(|_| {});
        assert_eq!(
            run(
                &mut m,
                Input::Health {
                    fault: false,
                    offline: true
                }
            ),
            [led(S::Offline)]
        );
        // Offline still listens: transcripts wait in the outbox.
        assert_eq!(
            run(&mut m, press(0)),
            [Action::StartCapture, led(S::Listening)]
        );
        run(&mut m, Input::CaptureEnded);
        run(&mut m, Input::Recognized { speech: false });
        assert_eq!(m.shown(), S::Offline);
        assert_eq!(
            run(
                &mut m,
                Input::Health {
                    fault: true,
                    offline: true
                }
            ),
            [led(S::Error)]
        );
        assert_eq!(run(&mut m, press(5000)), [flash(S::Error, S::Error)]);
        assert_eq!(run(&mut m, release(6000)), []);
        assert!(m.is_quiescent());
        assert_eq!(
            run(
                &mut m,
                Input::Health {
                    fault: false,
                    offline: false
                }
            ),
            [led(S::Idle)]
        );
    }

    #[test]
    fn stray_results_and_repeated_presses_change_nothing() {
        let mut m = machine(|_| {});
        assert_eq!(run(&mut m, Input::Recognized { speech: true }), []);
        assert_eq!(run(&mut m, Input::Delivered), []);
        assert_eq!(run(&mut m, Input::RecognitionFailed), []);
        assert_eq!(run(&mut m, release(5)), []);
        run(&mut m, press(10));
        assert_eq!(run(&mut m, press(20)), [], "hold mode: a second press edge");
        assert!(m.is_capturing());
    }
}
