//! Opening the configured audio source.

use crate::config::{AudioBackend, AudioConfig};
use talkie_hal::audio::alsa::{AlsaSettings, AlsaSource};
use talkie_hal::audio::file::{FileSettings, FileSource};
use talkie_hal::audio::{AudioError, AudioSource};

/// Open the source `audio.backend` names, with buffers sized for it.
pub fn open_source(
    cfg: &AudioConfig,
    clock: Option<talkie_hal::sim_clock::SimClock>,
) -> Result<Box<dyn AudioSource>, AudioError> {
    Ok(match cfg.backend {
        AudioBackend::Alsa => Box::new(AlsaSource::open(AlsaSettings {
            device: cfg.device.clone(),
            rate: cfg.rate,
            channels: cfg.channels,
            period_ms: cfg.period_ms,
        })?),
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
