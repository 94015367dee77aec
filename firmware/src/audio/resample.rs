//! Mono resampling from the device rate to 16 kHz with rubato's FFT
//! resampler, in fixed 10 ms input chunks, into buffers allocated once.
//!
//! The resampler's own delay is removed: the first output sample corresponds
//! to the first input sample, so pre-roll and timestamps line up.
#![cfg_attr(not(test), deny(clippy::indexing_slicing))]

use super::PIPELINE_RATE;
use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

/// Errors building or running the resampler.
#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("cannot resample {rate} Hz to 16 kHz: {reason}")]
    Construct { rate: u32, reason: String },
    #[error("resampling failed: {0}")]
    Process(String),
}

/// Device-rate mono in, 16 kHz mono out.
pub struct To16k {
    fft: Option<Fft<f32>>,
    input: Vec<f32>,
    filled: usize,
    output: Vec<f32>,
    /// Output samples still to discard (the resampler's delay).
    skip: usize,
    /// Input samples taken so far.
    taken: u64,
    /// Output samples emitted so far.
    emitted: u64,
    rate: u32,
}

impl std::fmt::Debug for To16k {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("To16k")
            .field("passthrough", &self.fft.is_none())
            .field("chunk", &self.input.len())
            .finish()
    }
}

impl To16k {
    /// A resampler for `rate` Hz input (a pass-through when it is 16 kHz).
    pub fn new(rate: u32) -> Result<Self, ResampleError> {
        if rate == PIPELINE_RATE {
            return Ok(Self {
                fft: None,
                input: Vec::new(),
                filled: 0,
                output: Vec::new(),
                skip: 0,
                taken: 0,
                emitted: 0,
                rate,
            });
        }
        let chunk = (rate / 100).max(1) as usize;
        let fft = Fft::<f32>::new(
            rate as usize,
            PIPELINE_RATE as usize,
            chunk,
            1,
            FixedSync::Input,
        )
        .map_err(|e| ResampleError::Construct {
            rate,
            reason: e.to_string(),
        })?;
        let chunk = fft.input_frames_next();
        let out_max = fft.output_frames_max();
        let skip = fft.output_delay();
        Ok(Self {
            fft: Some(fft),
            input: vec![0.0; chunk],
            filled: 0,
            output: vec![0.0; out_max],
            skip,
            taken: 0,
            emitted: 0,
            rate,
        })
    }

    /// Feed mono samples at the input rate; `emit` receives 16 kHz output
    /// as it becomes available (zero or more calls).
    pub fn push(
        &mut self,
        mut mono: &[f32],
        emit: &mut impl FnMut(&[f32]),
    ) -> Result<(), ResampleError> {
        self.taken += mono.len() as u64;
        let Some(fft) = self.fft.as_mut() else {
            self.emitted += mono.len() as u64;
            emit(mono);
            return Ok(());
        };
        let chunk = self.input.len();
        while !mono.is_empty() {
            let take = (chunk - self.filled).min(mono.len());
            let (head, rest) = mono.split_at(take);
            if let Some(dst) = self.input.get_mut(self.filled..self.filled + take) {
                dst.copy_from_slice(head);
            }
            self.filled += take;
            mono = rest;
            if self.filled < chunk {
                break;
            }
            self.filled = 0;
            let out_len = self.output.len();
            let inp = InterleavedSlice::new(self.input.as_slice(), 1, chunk)
                .map_err(|e| ResampleError::Process(e.to_string()))?;
            let mut out = InterleavedSlice::new_mut(self.output.as_mut_slice(), 1, out_len)
                .map_err(|e| ResampleError::Process(e.to_string()))?;
            let (_, produced) = fft
                .process_into_buffer(&inp, &mut out, None)
                .map_err(|e| ResampleError::Process(e.to_string()))?;
            let skipped = self.skip.min(produced);
            self.skip -= skipped;
            if produced > skipped {
                self.emitted += (produced - skipped) as u64;
                emit(self.output.get(skipped..produced).unwrap_or_default());
            }
        }
        Ok(())
    }

    /// At the end of a stream: push silence through until every input
    /// sample taken so far has come out, and emit exactly that much.
    pub fn flush(&mut self, emit: &mut impl FnMut(&[f32])) -> Result<(), ResampleError> {
        if self.fft.is_none() {
            return Ok(());
        }
        let expected = (self.taken * u64::from(PIPELINE_RATE) + u64::from(self.rate) / 2)
            / u64::from(self.rate);
        let taken = self.taken;
        let zeros = [0.0f32; 64];
        while self.emitted < expected {
            let mut remaining = expected - self.emitted;
            self.push(&zeros, &mut |out: &[f32]| {
                let n = (out.len() as u64).min(remaining) as usize;
                remaining -= n as u64;
                if let Some(part) = out.get(..n).filter(|p| !p.is_empty()) {
                    emit(part);
                }
            })?;
            // Count only what was emitted, not the padding.
            self.emitted = expected - remaining;
        }
        self.taken = taken;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rate: u32, input: &[f32]) -> Vec<f32> {
        let mut r = To16k::new(rate).unwrap();
        let mut out = Vec::new();
        for block in input.chunks(333) {
            r.push(block, &mut |s| out.extend_from_slice(s)).unwrap();
        }
        r.flush(&mut |s| out.extend_from_slice(s)).unwrap();
        out
    }

    #[test]
    fn passthrough_at_16k() {
        let x: Vec<f32> = (0..1000).map(|i| i as f32).collect();
        assert_eq!(run(16_000, &x), x);
    }

    #[test]
    fn tone_survives_and_is_time_aligned() {
        for rate in [44_100u32, 48_000, 22_050, 8_000] {
            let tone = |t: f64| (2.0 * std::f64::consts::PI * 440.0 * t).sin() as f32 * 0.5;
            let input: Vec<f32> = (0..rate)
                .map(|i| tone(f64::from(i) / f64::from(rate)))
                .collect();
            let out = run(rate, &input);
            // 1 s in, exactly 1 s out once flushed.
            assert_eq!(out.len(), 16_000, "{rate}");
            // Time-aligned: the best fit of the ideal tone is within half an
            // output sample (non-integer ratios leave a fraction: 0.18 at
            // 44.1 kHz), and at that lag the output is the tone.
            let max_err = |lag: f64| -> f32 {
                out[400..15_000]
                    .iter()
                    .enumerate()
                    .map(|(i, &y)| (y - tone((i as f64 + 400.0 + lag) / 16_000.0)).abs())
                    .fold(0.0, f32::max)
            };
            let (err, lag) = (-100..=100)
                .map(|k| f64::from(k) * 0.01)
                .map(|lag| (max_err(lag), lag))
                .fold((f32::MAX, 0.0), |a, b| if b.0 < a.0 { b } else { a });
            assert!(lag.abs() < 0.5, "{rate} Hz: output lags by {lag} samples");
            assert!(err < 1e-3, "{rate} Hz: max error {err} at lag {lag}");
        }
    }
}
