//! Writing 16 kHz mono audio as a 16-bit PCM WAV file.

use super::PIPELINE_RATE;
use std::path::Path;

/// Write `samples` (16 kHz mono, `[-1, 1]`) to `path`, clamping overs.
pub fn write_pipeline_wav(path: &Path, samples: &[f32]) -> Result<(), hound::Error> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: PIPELINE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)?;
    for &s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32_767.0).round() as i16)?;
    }
    w.finalize()
}
