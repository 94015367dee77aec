//! Opening the configured audio source.

use crate::config::{AudioBackend, AudioConfig};
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
            })?)
        }
    })
}

#[cfg(feature = "alsa")]
fn open_alsa(cfg: &AudioConfig) -> Result<Box<dyn AudioSource>, AudioError> {
    use talkie_hal::audio::alsa::{AlsaSettings, AlsaSource};
    Ok(Box::new(AlsaSource::open(AlsaSettings {
        device: cfg.device.clone(),
        rate: cfg.rate,
        channels: cfg.channels,
        period_ms: cfg.period_ms,
    })?))
}

/// Built without the `alsa` feature: the backend is not there to open.
#[cfg(not(feature = "alsa"))]
fn open_alsa(cfg: &AudioConfig) -> Result<Box<dyn AudioSource>, AudioError> {
    Err(AudioError::Unsupported {
        device: cfg.device.clone(),
        what: "this build has no ALSA support (cargo feature `alsa`)".to_owned(),
    })
}
