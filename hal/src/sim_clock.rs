//! A simulation's own clock: the audio time of a WAV-file microphone.
//!
//! With wall-clock time, a simulated session only gives the same events on
//! a CPU fast enough to keep up: a press scripted 3 s after a release lands
//! during "processing" on a board that takes 4 s to recognize. With a
//! [`SimClock`], the [`crate::audio::file::FileSource`] publishes how much
//! audio it has delivered, the [`crate::gpio::script::ScriptButton`] fires
//! its events when the *audio* reaches their time, and the file waits while
//! someone holds a [`Hold`] (the firmware holds one from the moment an
//! utterance is submitted until it is recognized). A non-live source loses
//! nothing by waiting, so a session gives the same transcripts and LED
//! sequence on any CPU; without `realtime` it also runs as fast as the CPU
//! allows.
//!
//! Every wait here has a timeout; a hold cannot freeze the source for more
//! than [`MAX_HOLD`] at a time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Longest a source waits for holds to end before it goes on regardless
/// (a wedged recognizer must not stop the simulated microphone forever).
pub const MAX_HOLD: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Time {
    /// Audio milliseconds delivered so far.
    ms: u64,
    /// When the source ended: from then on the clock follows the wall
    /// clock, as a silent microphone would (script events after the end
    /// of the file still come, at their spacing).
    ended_at: Option<Instant>,
}

impl Time {
    fn now_ms(&self) -> u64 {
        match self.ended_at {
            Some(t) => self
                .ms
                .saturating_add(u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)),
            None => self.ms,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    ms: Mutex<Time>,
    /// Signalled when `ms` advances or a hold ends.
    changed: Condvar,
    holds: AtomicUsize,
}

/// Shared between the file source, the script button and the firmware.
#[derive(Debug, Clone, Default)]
pub struct SimClock(Arc<Inner>);

/// While alive, the file source delivers no more audio.
#[derive(Debug)]
pub struct Hold(Arc<Inner>);

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.holds.fetch_sub(1, Ordering::AcqRel);
        let _guard = self.0.ms.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.changed.notify_all();
    }
}

impl SimClock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Audio milliseconds delivered so far (after the end: plus the wall
    /// time since).
    pub fn now_ms(&self) -> u64 {
        self.0
            .ms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .now_ms()
    }

    /// The source delivered audio up to `ms`.
    pub fn advance_to(&self, ms: u64) {
        let mut now = self.0.ms.lock().unwrap_or_else(PoisonError::into_inner);
        if ms > now.ms {
            now.ms = ms;
            self.0.changed.notify_all();
        }
    }

    /// The source has no more audio: time goes on at wall-clock speed.
    pub fn finish(&self) {
        let mut now = self.0.ms.lock().unwrap_or_else(PoisonError::into_inner);
        if now.ended_at.is_none() {
            now.ended_at = Some(Instant::now());
            self.0.changed.notify_all();
        }
    }

    /// Wait until the audio reaches `ms`, at most `timeout`; true if it did.
    pub fn wait_until(&self, ms: u64, timeout: Duration) -> bool {
        let give_up = Instant::now() + timeout;
        let mut now = self.0.ms.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let at = now.now_ms();
            if at >= ms {
                return true;
            }
            let mut left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if now.ended_at.is_some() {
                left = left.min(Duration::from_millis(ms - at));
            }
            now = self
                .0
                .changed
                .wait_timeout(now, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Pause the source until the returned guard is dropped.
    pub fn hold(&self) -> Hold {
        self.0.holds.fetch_add(1, Ordering::AcqRel);
        Hold(Arc::clone(&self.0))
    }

    pub fn is_held(&self) -> bool {
        self.0.holds.load(Ordering::Acquire) > 0
    }

    /// Wait while anyone holds the clock, at most `timeout`; returns how
    /// long it waited.
    pub fn wait_while_held(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        let give_up = t0 + timeout;
        let mut guard = self.0.ms.lock().unwrap_or_else(PoisonError::into_inner);
        while self.is_held() {
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            guard = self
                .0
                .changed
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        t0.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_wake_when_the_audio_reaches_their_time() {
        let c = SimClock::new();
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || c.wait_until(500, Duration::from_secs(30)))
        };
        c.advance_to(200);
        c.advance_to(100); // never goes back
        assert_eq!(c.now_ms(), 200);
        c.advance_to(500);
        assert!(waiter.join().unwrap());
        assert!(!c.wait_until(501, Duration::from_millis(1)), "times out");
        // After the end of the audio, time goes on with the wall clock.
        c.finish();
        assert!(c.wait_until(520, Duration::from_secs(30)));
        assert!(c.now_ms() >= 520);
    }

    #[test]
    fn a_hold_pauses_until_dropped() {
        let c = SimClock::new();
        assert!(!c.is_held());
        let h = c.hold();
        let h2 = c.hold();
        assert!(c.is_held());
        drop(h);
        assert!(c.is_held(), "one hold left");
        let waiter = {
            let c = c.clone();
            std::thread::spawn(move || {
                c.wait_while_held(Duration::from_secs(30));
                c.is_held()
            })
        };
        drop(h2);
        assert!(!waiter.join().unwrap());
        // Bounded: a hold nobody drops stops the wait after the timeout.
        let _stuck = c.hold();
        let waited = c.wait_while_held(Duration::from_millis(5));
        assert!(waited >= Duration::from_millis(5));
    }
}
