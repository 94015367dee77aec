//! Circuit breaker and retry delays for the agent link. Pure: time is
//! passed in, so every transition is unit-tested without sleeping.

use std::time::{Duration, Instant};

/// Breaker state, as shown on the status page and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Open,
            2 => Self::HalfOpen,
            _ => Self::Closed,
        }
    }
}

/// closed → open after `threshold` consecutive failures → half-open after
/// `open_for` (one trial request) → closed on success, open again on failure.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    open_until: Option<Instant>,
    half_open: bool,
}

impl Breaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            failures: 0,
            open_until: None,
            half_open: false,
        }
    }

    pub fn state(&self) -> BreakerState {
        if self.half_open {
            BreakerState::HalfOpen
        } else if self.open_until.is_some() {
            BreakerState::Open
        } else {
            BreakerState::Closed
        }
    }

    /// May a request go out at `now`? `Err(wait)` while open.
    pub fn allow(&mut self, now: Instant) -> Result<(), Duration> {
        match self.open_until {
            Some(until) if now < until => Err(until - now),
            Some(_) => {
                self.open_until = None;
                self.half_open = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.half_open = false;
    }

    /// A failed request; returns true if this opened the breaker.
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.half_open || self.failures >= self.threshold {
            self.half_open = false;
            self.open_until = Some(now + self.open_for);
            return true;
        }
        false
    }
}

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[min, min(max, min · 2ⁿ)]`. (`backon` only offers additive jitter, so
/// the five lines are here.)
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The ceiling of the next delay (before jitter).
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(30)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let span = ceiling.saturating_sub(self.min).as_millis() as u64;
        self.min + Duration::from_millis(fastrand::u64(0..=span))
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_n_failures_half_opens_after_cool_down_and_closes_on_success() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut b = Breaker::new(3, s(30));
        assert!(!b.failure(t0));
        assert!(!b.failure(t0));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.failure(t0));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.allow(t0 + s(10)), Err(s(20)));
        assert_eq!(b.allow(t0 + s(30)), Ok(()));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // A failed trial opens it again at once.
        assert!(b.failure(t0 + s(31)));
        assert_eq!(b.allow(t0 + s(40)), Err(s(21)));
        assert_eq!(b.allow(t0 + s(61)), Ok(()));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.failure(t0 + s(62)), "failures were reset");
    }

    #[test]
    fn backoff_grows_to_the_cap_with_full_jitter_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000));
        let ceilings: Vec<_> = (0..6)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d >= ms(100) && d <= c, "{d:?} outside [100 ms, {c:?}]");
                c
            })
            .collect();
        assert_eq!(
            ceilings,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.ceiling(), ms(100));
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), ms(1000), "no overflow");
    }
}
