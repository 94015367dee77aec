//! Simulated microphone: a WAV file delivered in periods.
//!
//! Any rate, 1–2 channels, 8/16/24/32-bit integer or 32-bit float. The
//! whole file is decoded into memory at open (files are short test clips),
//! so reads never touch the disk. With `realtime` the source sleeps until
//! each period's wall-clock deadline, like a real microphone; without it the
//! file is delivered as fast as the consumer takes it.

use super::{AudioError, AudioSource, SampleFormat, StreamFormat};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Settings for [`FileSource`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSettings {
    /// WAV file to play.
    pub path: PathBuf,
    /// Period length in milliseconds.
    pub period_ms: u32,
    /// Pace delivery at real time (true) or run as fast as possible.
    pub realtime: bool,
}

/// A decoded WAV file and a read position.
#[derive(Debug)]
pub struct FileSource {
    name: String,
    samples: Vec<f32>,
    pos: usize,
    format: StreamFormat,
    realtime: bool,
    started: Option<Instant>,
}

fn file_err(path: &Path, reason: impl Into<String>) -> AudioError {
    AudioError::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Decode a WAV file into interleaved `f32`, returning it with its spec.
pub fn read_wav(path: &Path) -> Result<(Vec<f32>, hound::WavSpec), AudioError> {
    let reader = hound::WavReader::open(path).map_err(|e| file_err(path, e.to_string()))?;
    let spec = reader.spec();
    if !(1..=2).contains(&spec.channels) {
        return Err(file_err(
            path,
            format!("{} channels; talkie takes 1 or 2", spec.channels),
        ));
    }
    if spec.sample_rate == 0 {
        return Err(file_err(path, "sample rate is 0"));
    }
    let samples: Result<Vec<f32>, hound::Error> = match spec.sample_format {
        hound::SampleFormat::Float => reader.into_samples::<f32>().collect(),
        hound::SampleFormat::Int => {
            let bits = spec.bits_per_sample;
            if !(8..=32).contains(&bits) {
                return Err(file_err(path, format!("{bits}-bit integer samples")));
            }
            let scale = (1u64 << (bits - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect()
        }
    };
    let samples = samples.map_err(|e| file_err(path, e.to_string()))?;
    Ok((samples, spec))
}

impl FileSource {
    /// Decode the file; the period length is derived from its rate.
    pub fn open(settings: &FileSettings) -> Result<Self, AudioError> {
        let (samples, spec) = read_wav(&settings.path)?;
        let period_frames =
            (u64::from(spec.sample_rate) * u64::from(settings.period_ms.max(1)) / 1000).max(1);
        Ok(Self {
            name: settings.path.display().to_string(),
            samples,
            pos: 0,
            format: StreamFormat {
                rate: spec.sample_rate,
                channels: spec.channels,
                sample: match spec.sample_format {
                    hound::SampleFormat::Float => SampleFormat::F32,
                    hound::SampleFormat::Int if spec.bits_per_sample <= 16 => SampleFormat::S16,
                    hound::SampleFormat::Int => SampleFormat::S32,
                },
                period_frames: period_frames as usize,
            },
            realtime: settings.realtime,
            started: None,
        })
    }

    /// Total length of the file in frames.
    pub fn len_frames(&self) -> usize {
        self.samples.len() / usize::from(self.format.channels)
    }
}

impl AudioSource for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn format(&self) -> StreamFormat {
        self.format
    }

    fn is_live(&self) -> bool {
        self.realtime
    }

    fn read_period(&mut self, out: &mut [f32]) -> Result<usize, AudioError> {
        let ch = usize::from(self.format.channels);
        let remaining = (self.samples.len() - self.pos) / ch;
        if remaining == 0 {
            return Err(AudioError::EndOfStream);
        }
        let frames = self.format.period_frames.min(remaining).min(out.len() / ch);
        if self.realtime {
            let started = *self.started.get_or_insert_with(Instant::now);
            // Deliver a period once it has been "recorded": its last frame's time.
            let end_frame = (self.pos / ch + frames) as u64;
            let due = started
                + Duration::from_micros(end_frame * 1_000_000 / u64::from(self.format.rate));
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let n = frames * ch;
        out[..n].copy_from_slice(&self.samples[self.pos..self.pos + n]);
        self.pos += n;
        Ok(frames)
    }

    fn reopen(&mut self) -> Result<(), AudioError> {
        Ok(())
    }
}
