//! Real microphone capture through alsa-lib.
//!
//! The PCM is opened non-blocking and every read waits at most
//! [`AlsaSource::read_timeout_ms`] with `snd_pcm_wait`, so a stuck device
//! turns into [`AudioError::Stalled`] instead of a hung thread. Overruns are
//! recovered in place (`snd_pcm_recover`) and reported as
//! [`AudioError::Xrun`] so the caller can count them; a device that
//! disappears is reported as [`AudioError::Disconnected`] and can be
//! [`reopen`](AudioSource::reopen)ed.

use super::{AudioError, AudioSource, DeviceError, SampleFormat, StreamFormat};
use ::alsa::pcm::{Access, Format, HwParams, PCM};
use ::alsa::{Direction, ValueOr};

/// What to ask the device for. The device may offer something near it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlsaSettings {
    /// ALSA PCM name: `default`, `hw:1,0`, `plughw:CARD=Device,DEV=0`, …
    pub device: String,
    /// Wanted rate in Hz; the nearest the device supports is taken.
    pub rate: u32,
    /// Wanted channels (1 or 2); the nearest the device supports is taken.
    pub channels: u16,
    /// Wanted period length in milliseconds.
    pub period_ms: u32,
}

/// An open ALSA capture PCM plus the buffers sized for it.
pub struct AlsaSource {
    settings: AlsaSettings,
    pcm: Option<PCM>,
    format: StreamFormat,
    raw16: Vec<i16>,
    raw32: Vec<i32>,
    read_timeout_ms: u32,
}

impl std::fmt::Debug for AlsaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlsaSource")
            .field("settings", &self.settings)
            .field("open", &self.pcm.is_some())
            .field("format", &self.format)
            .finish()
    }
}

fn open_hint(errno: i32) -> &'static str {
    match errno {
        libc_errno::EACCES | libc_errno::EPERM => {
            " (permission denied: the service user needs group `audio`)"
        }
        libc_errno::ENOENT => " (no such PCM: `talkie devices` lists the capture devices)",
        libc_errno::EBUSY => " (device busy: another program is capturing from it)",
        libc_errno::ENODEV | libc_errno::ENXIO => {
            " (device not present: is the microphone plugged in?)"
        }
        _ => "",
    }
}

/// The errno values this module reacts to. Spelled out so the HAL needs no
/// libc dependency of its own; they are the Linux values on every target.
mod libc_errno {
    pub(super) const EPERM: i32 = 1;
    pub(super) const ENOENT: i32 = 2;
    pub(super) const EIO: i32 = 5;
    pub(super) const ENXIO: i32 = 6;
    pub(super) const EAGAIN: i32 = 11;
    pub(super) const EACCES: i32 = 13;
    pub(super) const EBUSY: i32 = 16;
    pub(super) const ENODEV: i32 = 19;
    pub(super) const EPIPE: i32 = 32;
    pub(super) const ESTRPIPE: i32 = 86;
    pub(super) const EBADFD: i32 = 77;
    pub(super) const ESHUTDOWN: i32 = 108;
}

fn unsupported(device: &str, what: impl Into<String>) -> AudioError {
    AudioError::Unsupported {
        device: device.to_owned(),
        what: what.into(),
    }
}

/// ALSA's error as the HAL's [`DeviceError`] (the alsa crate's type stays
/// in this module).
fn device_error(e: &::alsa::Error) -> DeviceError {
    DeviceError {
        errno: Some(e.errno()),
        message: e.to_string(),
    }
}

fn hw_err(device: &str, step: &str, e: ::alsa::Error) -> AudioError {
    unsupported(device, format!("{step}: {e}"))
}

/// Open `settings.device` for capture and negotiate the hardware parameters.
fn open_pcm(settings: &AlsaSettings) -> Result<(PCM, StreamFormat), AudioError> {
    let dev = settings.device.as_str();
    let pcm = PCM::new(dev, Direction::Capture, true).map_err(|e| AudioError::Open {
        device: dev.to_owned(),
        hint: open_hint(e.errno()),
        source: device_error(&e),
    })?;
    let sample;
    {
        let hwp = HwParams::any(&pcm).map_err(|e| hw_err(dev, "reading hw params", e))?;
        hwp.set_access(Access::RWInterleaved)
            .map_err(|e| hw_err(dev, "interleaved access", e))?;
        let want_ch = u32::from(settings.channels);
        if hwp.set_channels(want_ch).is_err() {
            let got = hwp
                .set_channels_near(want_ch)
                .map_err(|e| hw_err(dev, "channels", e))?;
            if got > 2 {
                return Err(unsupported(
                    dev,
                    format!("offers {got} channels at least; talkie takes 1 or 2"),
                ));
            }
        }
        sample = if hwp.test_format(Format::S16LE).is_ok() {
            hwp.set_format(Format::S16LE)
                .map_err(|e| hw_err(dev, "S16_LE", e))?;
            SampleFormat::S16
        } else if hwp.test_format(Format::S32LE).is_ok() {
            hwp.set_format(Format::S32LE)
                .map_err(|e| hw_err(dev, "S32_LE", e))?;
            SampleFormat::S32
        } else {
            return Err(unsupported(dev, "neither S16_LE nor S32_LE is offered"));
        };
        let rate = hwp
            .set_rate_near(settings.rate, ValueOr::Nearest)
            .map_err(|e| hw_err(dev, "rate", e))?;
        let period = i64::from(rate) * i64::from(settings.period_ms) / 1000;
        let period = hwp
            .set_period_size_near(period.max(16) as ::alsa::pcm::Frames, ValueOr::Nearest)
            .map_err(|e| hw_err(dev, "period size", e))?;
        hwp.set_buffer_size_near(period * 4)
            .map_err(|e| hw_err(dev, "buffer size", e))?;
        pcm.hw_params(&hwp)
            .map_err(|e| hw_err(dev, "applying hw params", e))?;
    }
    let cur = pcm
        .hw_params_current()
        .map_err(|e| hw_err(dev, "reading negotiated params", e))?;
    let rate = cur.get_rate().map_err(|e| hw_err(dev, "rate", e))?;
    let channels = cur.get_channels().map_err(|e| hw_err(dev, "channels", e))?;
    let period_frames = cur
        .get_period_size()
        .map_err(|e| hw_err(dev, "period size", e))?;
    drop(cur);
    if !(1..=2).contains(&channels) {
        return Err(unsupported(dev, format!("negotiated {channels} channels")));
    }
    if period_frames <= 0 {
        return Err(unsupported(dev, "negotiated an empty period"));
    }
    pcm.start()
        .map_err(|e| hw_err(dev, "starting the stream", e))?;
    Ok((
        pcm,
        StreamFormat {
            rate,
            channels: channels as u16,
            sample,
            period_frames: period_frames as usize,
        },
    ))
}

impl AlsaSource {
    /// Open the device and allocate the period buffers.
    pub fn open(settings: AlsaSettings) -> Result<Self, AudioError> {
        let (pcm, format) = open_pcm(&settings)?;
        let samples = format.period_frames * usize::from(format.channels);
        let (raw16, raw32) = match format.sample {
            SampleFormat::S32 => (Vec::new(), vec![0i32; samples]),
            _ => (vec![0i16; samples], Vec::new()),
        };
        // Wait for at most four periods, and never less than half a second:
        // a healthy device delivers a period every `period_ms`.
        let period_ms = (format.period_frames as u64 * 1000 / u64::from(format.rate.max(1))) as u32;
        let read_timeout_ms = (period_ms * 4).max(500);
        Ok(Self {
            settings,
            pcm: Some(pcm),
            format,
            raw16,
            raw32,
            read_timeout_ms,
        })
    }

    /// How long one read waits for data before reporting a stall.
    pub fn read_timeout_ms(&self) -> u32 {
        self.read_timeout_ms
    }

    fn disconnected(&mut self, reason: String) -> AudioError {
        self.pcm = None;
        AudioError::Disconnected {
            device: self.settings.device.clone(),
            reason,
        }
    }

    /// Turn a read error into what the caller should know, recovering
    /// overruns in place.
    fn classify(&mut self, e: ::alsa::Error) -> AudioError {
        let errno = e.errno();
        match errno {
            libc_errno::EPIPE | libc_errno::ESTRPIPE => {
                let recovered = match &self.pcm {
                    Some(pcm) => pcm.try_recover(e, true).and_then(|()| pcm.start()).is_ok(),
                    None => false,
                };
                if recovered {
                    AudioError::Xrun {
                        device: self.settings.device.clone(),
                    }
                } else {
                    self.disconnected(format!("overrun recovery failed: {e}"))
                }
            }
            libc_errno::ENODEV
            | libc_errno::EBADFD
            | libc_errno::EIO
            | libc_errno::ENXIO
            | libc_errno::ESHUTDOWN => self.disconnected(e.to_string()),
            _ => self.disconnected(format!("unexpected read error: {e}")),
        }
    }
}

impl AudioSource for AlsaSource {
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
        let ch = usize::from(self.format.channels);
        let want = self.format.period_frames.min(out.len() / ch);
        let mut got = 0usize;
        while got < want {
            let Some(pcm) = self.pcm.as_ref() else {
                return Err(self.disconnected("device is closed".to_owned()));
            };
            let res = match self.format.sample {
                SampleFormat::S32 => pcm
                    .io_i32()
                    .and_then(|io| io.readi(&mut self.raw32[got * ch..want * ch])),
                _ => pcm
                    .io_i16()
                    .and_then(|io| io.readi(&mut self.raw16[got * ch..want * ch])),
            };
            match res {
                Ok(n) if n > 0 => got += n,
                Ok(_) => {}
                Err(e) if e.errno() == libc_errno::EAGAIN => {}
                Err(e) => return Err(self.classify(e)),
            }
            if got < want {
                match pcm.wait(Some(self.read_timeout_ms)) {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(AudioError::Stalled {
                            device: self.settings.device.clone(),
                            timeout_ms: self.read_timeout_ms,
                        })
                    }
                    Err(e) => return Err(self.classify(e)),
                }
            }
        }
        let n = got * ch;
        match self.format.sample {
            SampleFormat::S32 => {
                for (o, &s) in out[..n].iter_mut().zip(&self.raw32[..n]) {
                    *o = s as f32 / 2_147_483_648.0;
                }
            }
            _ => {
                for (o, &s) in out[..n].iter_mut().zip(&self.raw16[..n]) {
                    *o = f32::from(s) / 32_768.0;
                }
            }
        }
        Ok(got)
    }

    fn reopen(&mut self) -> Result<(), AudioError> {
        self.pcm = None;
        let (pcm, format) = open_pcm(&self.settings)?;
        if format != self.format {
            return Err(unsupported(
                &self.settings.device,
                format!(
                    "reopened with a different format ({format}; was {})",
                    self.format
                ),
            ));
        }
        self.pcm = Some(pcm);
        Ok(())
    }
}

/// One capture-capable PCM as `talkie devices` shows it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Name to put in `audio.device`.
    pub name: String,
    /// alsa-lib's description, first line.
    pub description: String,
    /// Supported rates, inclusive.
    pub rate_min: u32,
    pub rate_max: u32,
    /// Supported channel counts, inclusive.
    pub channels_min: u32,
    pub channels_max: u32,
    /// Sample formats offered among the ones talkie reads.
    pub formats: Vec<&'static str>,
}

/// The result of [`list_capture_devices`].
#[derive(Debug, Clone, Default)]
pub struct DeviceList {
    /// PCMs that opened for capture.
    pub usable: Vec<DeviceInfo>,
    /// `(name, why not)` for PCMs that did not open for capture.
    pub unusable: Vec<(String, String)>,
}

/// Capture PCMs alsa-lib knows, with what each supports. Devices that fail
/// to open (busy, output-only) are returned separately with the reason.
pub fn list_capture_devices() -> Result<DeviceList, AudioError> {
    let hints =
        ::alsa::device_name::HintIter::new_str(None, "pcm").map_err(|e| AudioError::Open {
            device: "(device list)".to_owned(),
            hint: "",
            source: device_error(&e),
        })?;
    let mut usable = Vec::new();
    let mut unusable = Vec::new();
    for hint in hints {
        let Some(name) = hint.name else { continue };
        if hint.direction == Some(Direction::Playback) {
            continue;
        }
        let description = hint
            .desc
            .as_deref()
            .and_then(|d| d.lines().next())
            .unwrap_or("")
            .to_owned();
        match probe(&name) {
            Ok(mut info) => {
                info.description = description;
                usable.push(info);
            }
            Err(e) => unusable.push((name, e.to_string())),
        }
    }
    Ok(DeviceList { usable, unusable })
}

fn probe(name: &str) -> Result<DeviceInfo, ::alsa::Error> {
    let pcm = PCM::new(name, Direction::Capture, true)?;
    let hwp = HwParams::any(&pcm)?;
    let formats = [
        (Format::S16LE, "S16_LE"),
        (Format::S24LE, "S24_LE"),
        (Format::S32LE, "S32_LE"),
        (Format::FloatLE, "FLOAT_LE"),
    ]
    .iter()
    .filter(|(f, _)| hwp.test_format(*f).is_ok())
    .map(|(_, n)| *n)
    .collect();
    Ok(DeviceInfo {
        name: name.to_owned(),
        description: String::new(),
        rate_min: hwp.get_rate_min()?,
        rate_max: hwp.get_rate_max()?,
        channels_min: hwp.get_channels_min()?,
        channels_max: hwp.get_channels_max()?,
        formats,
    })
}
