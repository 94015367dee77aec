//! Audio capture: the [`AudioSource`] trait and its backends.
//!
//! A source delivers whole periods of interleaved `f32` samples in
//! `[-1.0, 1.0]`, at the rate and channel count it negotiated at open time.
//! Buffers are allocated when the source is opened; `read_period` allocates
//! nothing.

#[cfg(feature = "alsa")]
pub mod alsa;
pub mod file;

use std::fmt;

/// Sample encoding as delivered by the device (before conversion to `f32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleFormat {
    /// Signed 16-bit little endian.
    S16,
    /// Signed 32-bit little endian (I2S MEMS microphones use 24-in-32).
    S32,
    /// 32-bit float (WAV files only).
    F32,
}

impl fmt::Display for SampleFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SampleFormat::S16 => "S16_LE",
            SampleFormat::S32 => "S32_LE",
            SampleFormat::F32 => "FLOAT_LE",
        })
    }
}

/// The format a source actually negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFormat {
    /// Frames per second.
    pub rate: u32,
    /// Interleaved channels per frame (1 or 2).
    pub channels: u16,
    /// Encoding on the device side.
    pub sample: SampleFormat,
    /// Frames delivered by one `read_period` call at most.
    pub period_frames: usize,
}

impl fmt::Display for StreamFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} Hz, {} ch, {}, period {} frames",
            self.rate, self.channels, self.sample, self.period_frames
        )
    }
}

/// A backend's own error (ALSA's, for instance) as the HAL reports it:
/// the message and, where the backend has one, the OS error number. The
/// backend's error type stays private to its module, so code above the
/// HAL does not depend on which backends were compiled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceError {
    /// `errno` when the backend reported one.
    pub errno: Option<i32>,
    pub message: String,
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeviceError {}

/// What went wrong while opening or reading a source.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The device could not be opened (wrong name, busy, no permission).
    #[error("cannot open capture device `{device}`: {source}{hint}")]
    Open {
        device: String,
        source: DeviceError,
        hint: &'static str,
    },
    /// The device cannot deliver a format talkie accepts.
    #[error("capture device `{device}` has no usable format: {what}")]
    Unsupported { device: String, what: String },
    /// An overrun happened and the stream was recovered; samples were lost.
    #[error("capture overrun on `{device}` (recovered)")]
    Xrun { device: String },
    /// The device went away (unplugged USB microphone) or stopped delivering.
    #[error("capture device `{device}` disconnected: {reason}")]
    Disconnected { device: String, reason: String },
    /// The device delivered nothing within the read timeout.
    #[error("capture device `{device}` delivered no audio for {timeout_ms} ms")]
    Stalled { device: String, timeout_ms: u32 },
    /// A simulated source reached the end of its input.
    #[error("end of audio stream")]
    EndOfStream,
    /// A WAV file could not be read or has an unsupported layout.
    #[error("audio file `{path}`: {reason}")]
    File { path: String, reason: String },
}

impl AudioError {
    /// True when closing and reopening the device may cure the error.
    pub fn needs_reopen(&self) -> bool {
        matches!(
            self,
            AudioError::Disconnected { .. } | AudioError::Stalled { .. } | AudioError::Open { .. }
        )
    }
}

/// A microphone, real or simulated.
pub trait AudioSource: Send {
    /// A human name for logs and the status page (ALSA PCM name or file path).
    fn name(&self) -> &str;

    /// The negotiated format. Stable across [`AudioSource::reopen`].
    fn format(&self) -> StreamFormat;

    /// True for sources that run on their own clock (a real microphone, a
    /// file paced at real time): a consumer that falls behind loses audio.
    /// False for sources that can wait (a file read as fast as possible).
    fn is_live(&self) -> bool;

    /// Read up to one period into `out` (interleaved, at least
    /// `period_frames * channels` long). Returns the number of frames
    /// written. Never blocks longer than the source's read timeout.
    fn read_period(&mut self, out: &mut [f32]) -> Result<usize, AudioError>;

    /// Close and open the device again after a [`AudioError::needs_reopen`]
    /// error. Fails if the device is still missing or now negotiates a
    /// different format.
    fn reopen(&mut self) -> Result<(), AudioError>;
}

impl AudioSource for Box<dyn AudioSource> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn format(&self) -> StreamFormat {
        (**self).format()
    }
    fn is_live(&self) -> bool {
        (**self).is_live()
    }
    fn read_period(&mut self, out: &mut [f32]) -> Result<usize, AudioError> {
        (**self).read_period(out)
    }
    fn reopen(&mut self) -> Result<(), AudioError> {
        (**self).reopen()
    }
}
