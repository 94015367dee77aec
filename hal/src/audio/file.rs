//! Simulated microphone: a WAV file delivered in periods.
//!
//! Any rate, 1–2 channels, 8/16/24/32-bit integer or 32-bit float. The
//! whole file is decoded into memory at open (files are short test clips),
//! so reads never touch the disk. With `realtime` the source sleeps until
//! each period's wall-clock deadline, like a real microphone; without it the
//! file is delivered as fast as the consumer takes it.
//!
//! A real-time source is also a microphone that can be unplugged: about
//! every quarter second of audio it looks whether its file is still there
//! (one `lstat`, no allocation for paths under 384 bytes). While the file
//! is gone it reports [`AudioError::Disconnected`] and every
//! [`reopen`](AudioSource::reopen) fails; when the file is back, delivery
//! resumes where it stopped, paced from then on (what was "said" while
//! unplugged was never heard). This is how the tests pull the microphone
//! out from under the running service.

use super::{AudioError, AudioSource, SampleFormat, StreamFormat};
use crate::sim_clock::{SimClock, MAX_HOLD};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Settings for [`FileSource`].
#[derive(Debug, Clone)]
pub struct FileSettings {
    /// WAV file to play.
    pub path: PathBuf,
    /// Period length in milliseconds.
    pub period_ms: u32,
    /// Pace delivery at real time (true) or run as fast as possible.
    pub realtime: bool,
    /// Publish the audio time here and wait while it is held (see
    /// [`crate::sim_clock`]).
    pub clock: Option<SimClock>,
    /// Start again at the end, forever; the audio time keeps counting (a
    /// button script for the loops goes on past the file's length). For
    /// soak runs and a demo that never ends.
    pub looped: bool,
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
    clock: Option<SimClock>,
    looped: bool,
    /// Frames delivered by earlier loops (`looped`).
    earlier_frames: u64,
    /// The file, looked at while real-time to simulate unplugging.
    path: PathBuf,
    /// Frames delivered since the file was last looked at.
    since_check: usize,
    /// When the file was found gone (real-time pacing restarts from the
    /// reopen).
    unplugged_at: Option<Instant>,
}

fn file_err(path: &Path, reason: impl Into<String>) -> AudioError {
    AudioError::File {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Lowest and highest WAV sample rates accepted: a header declaring 1 Hz
/// would make a 400 KB file hours long after resampling to 16 kHz.
pub const MIN_RATE: u32 = 8_000;
pub const MAX_RATE: u32 = 192_000;

/// Decode a WAV file into interleaved `f32`, returning it with its spec.
pub fn read_wav(path: &Path) -> Result<(Vec<f32>, hound::WavSpec), AudioError> {
    let file = std::fs::File::open(path).map_err(|e| file_err(path, e.to_string()))?;
    decode_wav(std::io::BufReader::new(file), path)
}

/// Decode WAV bytes from `r` (`name` labels errors) into interleaved `f32`.
pub fn decode_wav<R: std::io::Read>(
    r: R,
    path: &Path,
) -> Result<(Vec<f32>, hound::WavSpec), AudioError> {
    let reader = hound::WavReader::new(r).map_err(|e| file_err(path, e.to_string()))?;
    let spec = reader.spec();
    if !(1..=2).contains(&spec.channels) {
        return Err(file_err(
            path,
            format!("{} channels; talkie takes 1 or 2", spec.channels),
        ));
    }
    if !(MIN_RATE..=MAX_RATE).contains(&spec.sample_rate) {
        return Err(file_err(
            path,
            format!(
                "sample rate {} Hz; talkie takes {MIN_RATE}–{MAX_RATE} Hz",
                spec.sample_rate
            ),
        ));
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
            clock: settings.clock.clone(),
            looped: settings.looped,
            earlier_frames: 0,
            path: settings.path.clone(),
            since_check: 0,
            unplugged_at: None,
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
        let mut remaining = (self.samples.len() - self.pos) / ch;
        if remaining == 0 && self.looped && self.samples.len() >= ch {
            self.earlier_frames += (self.pos / ch) as u64;
            self.pos = 0;
            remaining = self.samples.len() / ch;
        }
        if remaining == 0 {
            if let Some(clock) = &self.clock {
                clock.finish();
            }
            return Err(AudioError::EndOfStream);
        }
        let frames = self.format.period_frames.min(remaining).min(out.len() / ch);
        if self.realtime {
            self.since_check += frames;
            if self.since_check >= (self.format.rate / 4) as usize {
                self.since_check = 0;
                if std::fs::symlink_metadata(&self.path).is_err() {
                    self.unplugged_at = Some(Instant::now());
                    return Err(AudioError::Disconnected {
                        device: self.name.clone(),
                        reason: "the file is gone (simulated unplug)".to_owned(),
                    });
                }
            }
        }
        if let Some(clock) = &self.clock {
            // Paused while an utterance is being recognized; real-time
            // pacing resumes from where it stopped.
            let waited = clock.wait_while_held(MAX_HOLD);
            if let Some(s) = self.started.as_mut() {
                *s += waited;
            }
        }
        if self.realtime {
            let started = *self.started.get_or_insert_with(Instant::now);
            // Deliver a period once it has been "recorded": its last frame's time.
            let end_frame = self.earlier_frames + (self.pos / ch + frames) as u64;
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
        if let Some(clock) = &self.clock {
            let frames_so_far = self.earlier_frames + (self.pos / ch) as u64;
            let ms = frames_so_far * 1000 / u64::from(self.format.rate.max(1));
            clock.advance_to(ms);
        }
        Ok(frames)
    }

    fn reopen(&mut self) -> Result<(), AudioError> {
        if let Some(at) = self.unplugged_at {
            if let Err(e) = std::fs::symlink_metadata(&self.path) {
                return Err(AudioError::Disconnected {
                    device: self.name.clone(),
                    reason: format!("the file is still gone: {e}"),
                });
            }
            // Pacing goes on from now, not from before the gap.
            if let Some(s) = self.started.as_mut() {
                *s += at.elapsed();
            }
            self.unplugged_at = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(dir: &Path, name: &str, spec: hound::WavSpec, samples: &[f32]) -> PathBuf {
        let p = dir.join(name);
        let mut w = hound::WavWriter::create(&p, spec).unwrap();
        for &s in samples {
            match (spec.sample_format, spec.bits_per_sample) {
                (hound::SampleFormat::Float, _) => w.write_sample(s).unwrap(),
                (_, 16) => w.write_sample((s * 32_767.0) as i16).unwrap(),
                (_, bits) => w
                    .write_sample((s * ((1u32 << (bits - 1)) - 1) as f32) as i32)
                    .unwrap(),
            }
        }
        w.finalize().unwrap();
        p
    }

    fn spec(channels: u16, rate: u32, bits: u16, float: bool) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: if float {
                hound::SampleFormat::Float
            } else {
                hound::SampleFormat::Int
            },
        }
    }

    fn settings(path: PathBuf) -> FileSettings {
        FileSettings {
            path,
            period_ms: 10,
            realtime: false,
            clock: None,
            looped: false,
        }
    }

    /// A real-time source whose file goes away is an unplugged microphone:
    /// disconnected within a quarter second of audio, not reopened while
    /// the file is gone, and resumed where it stopped when it is back.
    #[test]
    fn a_real_time_source_is_unplugged_while_its_file_is_gone() {
        let dir = std::env::temp_dir().join(format!("talkie-hal-unplug-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let samples: Vec<f32> = (0..8_000).map(|i| i as f32 / 8_000.0).collect();
        let p = wav(&dir, "mic.wav", spec(1, 8_000, 32, true), &samples);
        let mut src = FileSource::open(&FileSettings {
            realtime: true,
            ..settings(p.clone())
        })
        .unwrap();
        let mut out = vec![0.0; 80];
        assert_eq!(src.read_period(&mut out).unwrap(), 80);
        let away = dir.join("unplugged");
        std::fs::rename(&p, &away).unwrap();
        let mut delivered = 80;
        let err = loop {
            match src.read_period(&mut out) {
                Ok(n) => delivered += n,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, AudioError::Disconnected { .. }) && err.needs_reopen(),
            "{err}"
        );
        assert!(delivered <= 2_000, "noticed within 1/4 s: {delivered}");
        assert!(src.reopen().is_err(), "still unplugged");
        std::fs::rename(&away, &p).unwrap();
        src.reopen().unwrap();
        src.read_period(&mut out).unwrap();
        assert_eq!(
            out[0],
            delivered as f32 / 8_000.0,
            "resumed where it stopped"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `looped`: the file again and again, the audio time counting on.
    #[test]
    fn a_looped_file_starts_again_and_its_clock_counts_on() {
        let dir = std::env::temp_dir().join(format!("talkie-hal-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let samples: Vec<f32> = (0..120).map(|i| i as f32 / 1000.0).collect();
        let p = wav(&dir, "l.wav", spec(1, 8_000, 32, true), &samples);
        let clock = SimClock::new();
        let mut src = FileSource::open(&FileSettings {
            looped: true,
            clock: Some(clock.clone()),
            ..settings(p)
        })
        .unwrap();
        let mut out = vec![0.0; 80];
        let mut got = Vec::new();
        while got.len() < 3 * samples.len() {
            let n = src.read_period(&mut out).unwrap();
            got.extend_from_slice(&out[..n]);
        }
        assert_eq!(&got[..120], &samples[..]);
        assert_eq!(&got[120..240], &samples[..]);
        // 360 frames of 8 kHz: 45 ms of audio time.
        assert_eq!(clock.now_ms(), 45);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn delivers_whole_periods_then_the_rest_then_end() {
        let dir = std::env::temp_dir().join(format!("talkie-hal-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 25 ms of 8 kHz stereo float: periods of 80 frames, 80 + 80 + 40.
        let samples: Vec<f32> = (0..400).map(|i| i as f32 / 1000.0).collect();
        let p = wav(&dir, "f.wav", spec(2, 8_000, 32, true), &samples);
        let mut src = FileSource::open(&settings(p)).unwrap();
        let f = src.format();
        assert_eq!(
            (f.rate, f.channels, f.sample, f.period_frames),
            (8_000, 2, SampleFormat::F32, 80)
        );
        assert!(!src.is_live());
        let mut out = vec![0.0; 160];
        let mut got = Vec::new();
        loop {
            match src.read_period(&mut out) {
                Ok(n) => got.extend_from_slice(&out[..n * 2]),
                Err(AudioError::EndOfStream) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, samples);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn integer_widths_are_scaled_to_unit_range() {
        let dir = std::env::temp_dir().join(format!("talkie-hal-int-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for bits in [16u16, 24, 32] {
            let p = wav(
                &dir,
                "i.wav",
                spec(1, 16_000, bits, false),
                &[0.5, -0.5, 0.0],
            );
            let (s, _) = read_wav(&p).unwrap();
            assert!(
                (s[0] - 0.5).abs() < 1e-3 && (s[1] + 0.5).abs() < 1e-3 && s[2] == 0.0,
                "{bits}: {s:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_files_are_typed_errors() {
        let dir = std::env::temp_dir().join(format!("talkie-hal-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_wav = dir.join("x.wav");
        std::fs::write(&not_wav, b"this is not a wav file").unwrap();
        assert!(matches!(
            FileSource::open(&settings(not_wav)),
            Err(AudioError::File { .. })
        ));
        assert!(matches!(
            FileSource::open(&settings(dir.join("missing.wav"))),
            Err(AudioError::File { .. })
        ));
        for rate in [1, 7_999, 192_001] {
            let odd = wav(&dir, "r.wav", spec(1, rate, 16, false), &[0.0; 8]);
            match FileSource::open(&settings(odd)) {
                Err(AudioError::File { reason, .. }) => {
                    assert!(reason.contains("8000–192000 Hz"), "{reason}")
                }
                other => panic!("{rate}: {other:?}"),
            }
        }
        let quad = wav(&dir, "q.wav", spec(4, 16_000, 16, false), &[0.0; 8]);
        match FileSource::open(&settings(quad)) {
            Err(AudioError::File { reason, .. }) => {
                assert!(reason.contains("4 channels"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
