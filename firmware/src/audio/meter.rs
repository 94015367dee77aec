//! Audio level meter: RMS and peak in dBFS over 50 ms windows.

use crate::base::telemetry::{AudioStats, SILENCE_DBFS};

/// Samples per meter window at 16 kHz (50 ms).
pub const WINDOW: usize = 800;

/// Accumulates one window and publishes it to [`AudioStats`].
#[derive(Debug, Default)]
pub struct LevelMeter {
    sum_sq: f64,
    peak: f32,
    n: usize,
}

/// `20·log10(x)`, floored at [`SILENCE_DBFS`].
pub fn dbfs(x: f32) -> f32 {
    if x <= 0.0 {
        SILENCE_DBFS
    } else {
        (20.0 * x.log10()).max(SILENCE_DBFS)
    }
}

impl LevelMeter {
    pub fn push(&mut self, samples: &[f32], stats: &AudioStats) {
        for &s in samples {
            self.sum_sq += f64::from(s) * f64::from(s);
            self.peak = self.peak.max(s.abs());
            self.n += 1;
            if self.n == WINDOW {
                let rms = (self.sum_sq / WINDOW as f64).sqrt() as f32;
                stats.set_level(dbfs(rms), dbfs(self.peak));
                *self = Self::default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_scale_sine_is_minus_3_dbfs_rms_and_0_peak() {
        let stats = AudioStats::default();
        let sine: Vec<f32> = (0..WINDOW)
            .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / 16000.0).sin())
            .collect();
        LevelMeter::default().push(&sine, &stats);
        let s = stats.snapshot();
        assert!(
            (s.level_rms_dbfs + 3.01).abs() < 0.05,
            "{}",
            s.level_rms_dbfs
        );
        assert!(s.level_peak_dbfs.abs() < 0.01, "{}", s.level_peak_dbfs);
    }

    #[test]
    fn silence_is_the_floor() {
        let stats = AudioStats::default();
        stats.set_level(0.0, 0.0);
        LevelMeter::default().push(&[0.0; WINDOW], &stats);
        assert_eq!(stats.snapshot().level_rms_dbfs, SILENCE_DBFS);
    }
}
