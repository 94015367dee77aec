//! Opening the configured audio source.

use crate::base::config::{AudioBackend, AudioConfig};
use talkie_hal::audio::file::{FileSettings, FileSource};
use talkie_hal::audio::{AudioError, AudioSource};

/// Open the source `audio.backend` names, with buffers sized for it.
pub fn open_source(
    cfg: &AudioConfig,
    clock: Option<talkie_hal::sim_clock::SimClock>,
) -> Result<Box<dyn AudioSource>, AudioError> {
    Ok(match cfg.backend {
        AudioBackend::Alsa => open_alsa(cfg)?,
        AudioBackend::File => {
            let path = cfg.file.clone().ok_or_else(|| AudioError::File {
                path: String::new(),
                reason: "audio.file is not set".to_owned(),
            })?;
            Box::new(FileSource::open(&FileSettings {
                path,
                period_ms: cfg.period_ms,
                realtime: cfg.realtime,
                clock,
                looped: cfg.file_loop,
            })?)
        }
    })
}

#[cfg(feature = "alsa")]
fn open_alsa(cfg: &AudioConfig) -> Result<Box<dyn AudioSource>, AudioError> {
    Ok(Box::new(talkie_hal::audio::alsa::AlsaSource::open(
        alsa_settings(cfg),
    )?))
}

/// What the ALSA backend is asked for, from `[audio]`.
#[cfg(feature = "alsa")]
fn alsa_settings(cfg: &AudioConfig) -> talkie_hal::audio::alsa::AlsaSettings {
    talkie_hal::audio::alsa::AlsaSettings {
        device: cfg.device.clone(),
        rate: cfg.rate,
        channels: cfg.channels,
        period_ms: cfg.period_ms,
    }
}

/// Built without the `alsa` feature: the backend is not there to open.
#[cfg(not(feature = "alsa"))]
fn open_alsa(cfg: &AudioConfig) -> Result<Box<dyn AudioSource>, AudioError> {
    Err(AudioError::Unsupported {
        device: cfg.device.clone(),
        what: "this build has no ALSA support (cargo feature `alsa`)".to_owned(),
    })
}

/// Open the configured source for the service: an ALSA microphone that is
/// missing, busy or not permitted at start does not stop the service. It
/// runs degraded (capture state `degraded`, `/readyz` 503, the status page
/// up) and the capture thread keeps opening it with its reopen backoff
/// until the device appears (a USB microphone that enumerates late).
pub fn open_source_or_wait(
    cfg: &AudioConfig,
    clock: Option<talkie_hal::sim_clock::SimClock>,
) -> Result<Box<dyn AudioSource>, AudioError> {
    match open_source(cfg, clock) {
        Err(e) if cfg.backend == AudioBackend::Alsa && e.needs_reopen() => {
            tracing::warn!(error = %e, "microphone not available at start: running degraded, opening it again with backoff");
            late::open(cfg, e)
        }
        other => other,
    }
}

#[cfg(feature = "alsa")]
mod late {
    use crate::base::config::AudioConfig;
    use talkie_hal::audio::alsa::{AlsaSettings, AlsaSource};
    use talkie_hal::audio::{AudioError, AudioSource, SampleFormat, StreamFormat};

    /// Periods up to this many times the configured one are accepted when
    /// the device finally opens (ALSA picks the nearest period it can do).
    const PERIOD_SLACK: usize = 4;

    /// An ALSA microphone not opened yet: it reports the format the
    /// configuration asks for, fails every read as disconnected (so the
    /// capture thread reopens it with backoff), and once opened behaves as
    /// the [`AlsaSource`] it holds.
    pub(super) struct LateAlsa {
        settings: AlsaSettings,
        format: StreamFormat,
        inner: Option<AlsaSource>,
        last_error: String,
    }

    pub(super) fn open(
        cfg: &AudioConfig,
        first: AudioError,
    ) -> Result<Box<dyn AudioSource>, AudioError> {
        let rate = cfg.rate;
        let frames = (u64::from(rate) * u64::from(cfg.period_ms) / 1000).max(1) as usize;
        Ok(Box::new(LateAlsa {
            settings: super::alsa_settings(cfg),
            format: StreamFormat {
                rate,
                channels: cfg.channels,
                sample: SampleFormat::S16,
                period_frames: frames * PERIOD_SLACK,
            },
            inner: None,
            last_error: first.to_string(),
        }))
    }

    impl AudioSource for LateAlsa {
        fn name(&self) -> &str {
            &self.settings.device
        }

        fn format(&self) -> StreamFormat {
            self.format
        }

        fn is_live(&self) -> bool {
            true
        }

        fn read_period(&mut self, out: &mut [f32]) -> Result<usize, AudioError> {
            match &mut self.inner {
                Some(s) => s.read_period(out),
                None => Err(AudioError::Disconnected {
                    device: self.settings.device.clone(),
                    reason: format!("not present yet: {}", self.last_error),
                }),
            }
        }

        fn reopen(&mut self) -> Result<(), AudioError> {
            if let Some(s) = &mut self.inner {
                return s.reopen();
            }
            let s = AlsaSource::open(self.settings.clone())
                .inspect_err(|e| self.last_error = e.to_string())?;
            let got = s.format();
            if got.rate != self.format.rate
                || got.channels != self.format.channels
                || got.period_frames > self.format.period_frames
            {
                let e = AudioError::Unsupported {
                    device: self.settings.device.clone(),
                    what: format!(
                        "it opened as {got}, but the audio path was set up for {} Hz, {} ch \
                         (set audio.rate and audio.channels to what the device does)",
                        self.format.rate, self.format.channels
                    ),
                };
                tracing::error!(error = %e, "the late microphone cannot be used");
                self.last_error = e.to_string();
                return Err(e);
            }
            tracing::info!(device = %self.settings.device, format = %got, "microphone appeared");
            self.inner = Some(s);
            Ok(())
        }
    }
}

/// Built without `alsa`: nothing can appear later.
#[cfg(not(feature = "alsa"))]
mod late {
    use crate::base::config::AudioConfig;
    use talkie_hal::audio::{AudioError, AudioSource};

    pub(super) fn open(
        _cfg: &AudioConfig,
        first: AudioError,
    ) -> Result<Box<dyn AudioSource>, AudioError> {
        Err(first)
    }
}
