//! The recognition settings the firmware's `[stt]` section carries, as
//! the speech crate's own types (serde: the config file names them), and
//! [`RecognizerOptions`], everything [`crate::stt::Recognizer::load`] needs.

use crate::vad::SegmenterConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which recognizer `stt` runs (`stt.model`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum SttModel {
    /// Whisper tiny.en (39 M parameters; `stt.precision` and `stt.threads`
    /// measured at start-up when `auto`). [`RecognizerOptions`]' default:
    /// a library caller loads one model unless it asks for more.
    #[serde(rename = "whisper-tiny")]
    WhisperTiny,
    /// Moonshine base, English (61 M parameters, fp32; issue 31): hears
    /// noisy rooms better than tiny.en (WER 18.3 % against 20.7 % with pink
    /// noise at 10 dB, onnxruntime on shared/eval/dev), slower. Not chosen
    /// automatically yet.
    #[serde(rename = "moonshine-base")]
    MoonshineBase,
    /// Both, cross-scored where their texts differ (`stt::agreement`): the
    /// most accurate, about the two models' time (in parallel on two cores
    /// or more) and their memory together.
    #[serde(rename = "agreement")]
    Agreement,
    /// Chosen on the device at start-up: `agreement` where the board has
    /// two cores or more, 1 GiB of RAM or more and its measured time for a
    /// 3 s utterance fits `stt.latency_budget_ms`; else `whisper-tiny`.
    /// The service's default (`stt.model`).
    #[default]
    #[serde(rename = "auto")]
    Auto,
}

impl SttModel {
    pub fn as_str(self) -> &'static str {
        match self {
            SttModel::WhisperTiny => "whisper-tiny",
            SttModel::MoonshineBase => "moonshine-base",
            SttModel::Agreement => "agreement",
            SttModel::Auto => "auto",
        }
    }
}

/// Which Whisper weights `stt` loads (`stt.precision`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Measured on the device at start-up: every available form is timed on
    /// a fixed warm-up input and the fastest kept (the default; see
    /// `stt::calibrate`). tract's int8 kernels are 16 times slower
    /// than fp32 on an AVX2-only x86 and fast on a Cortex-A76, so no fixed
    /// choice is right for the whole fleet.
    #[default]
    Auto,
    /// float32 (`whisper_encoder.onnx`, `whisper_decoder.onnx`).
    Fp32,
    /// int8 weights (`whisper_*_int8.onnx`): about 60 MB less memory than
    /// fp32.
    Int8,
    /// float16 (`whisper_*_f16.onnx`): half fp32's weights, fast only on
    /// CPUs with native fp16 arithmetic (aarch64 `asimdhp`, a Pi 5's
    /// Cortex-A76), the only ones `auto` tries it on; elsewhere tract
    /// converts every product and it is many times slower than fp32.
    Fp16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
            Precision::Fp16 => "fp16",
        }
    }

    /// The model form this setting fixes, or `None` for `auto`.
    pub fn fixed(self) -> Option<ModelPrecision> {
        match self {
            Precision::Auto => None,
            Precision::Fp32 => Some(ModelPrecision::Fp32),
            Precision::Int8 => Some(ModelPrecision::Int8),
            Precision::Fp16 => Some(ModelPrecision::Fp16),
        }
    }
}

impl From<ModelPrecision> for Precision {
    fn from(p: ModelPrecision) -> Self {
        match p {
            ModelPrecision::Fp32 => Precision::Fp32,
            ModelPrecision::Fp16 => Precision::Fp16,
            ModelPrecision::Int8 => Precision::Int8,
        }
    }
}

/// One concrete form of the Whisper model files.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum ModelPrecision {
    Fp32,
    Fp16,
    Int8,
}

impl ModelPrecision {
    /// Every form, in the order calibration tries them.
    pub const ALL: [ModelPrecision; 3] = [
        ModelPrecision::Fp32,
        ModelPrecision::Fp16,
        ModelPrecision::Int8,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelPrecision::Fp32 => "fp32",
            ModelPrecision::Fp16 => "fp16",
            ModelPrecision::Int8 => "int8",
        }
    }

    /// File-name suffix of the model files.
    pub fn suffix(self) -> &'static str {
        match self {
            ModelPrecision::Fp32 => "",
            ModelPrecision::Fp16 => "_f16",
            ModelPrecision::Int8 => "_int8",
        }
    }
}

impl std::fmt::Display for ModelPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The form of each stage of a model: calibration may run the decoder in
/// another form than the encoder (issue 30: on an AVX2-only x86 tract's
/// int8 encoder was 30 times slower than fp32 while the int8 decoder, on
/// talkie's own integer kernels, was the fastest; encoders now run on
/// those kernels too, and calibration still times each stage).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub struct Forms {
    pub encoder: ModelPrecision,
    pub decoder: ModelPrecision,
}

impl Forms {
    /// `[encoder's, decoder's]` names (`models::in_use`).
    pub fn names(&self) -> [&'static str; 2] {
        [self.encoder.as_str(), self.decoder.as_str()]
    }

    /// Both stages in `p`.
    pub fn same(p: ModelPrecision) -> Self {
        Self {
            encoder: p,
            decoder: p,
        }
    }
}

impl std::fmt::Display for Forms {
    /// `fp32`, or `fp32 encoder + int8 decoder`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.encoder == self.decoder {
            write!(f, "{}", self.encoder)
        } else {
            write!(f, "{} encoder + {} decoder", self.encoder, self.decoder)
        }
    }
}

/// `stt.threads`: `"auto"` (measured with the precision) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threads {
    /// 1 to the online cores (cores − 1 with 4 or more), the fastest kept.
    #[default]
    Auto,
    Fixed(u32),
}

impl Serialize for Threads {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Threads::Auto => s.serialize_str("auto"),
            Threads::Fixed(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(i64),
            S(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected \"auto\" or a number of threads"))?
        {
            Raw::S(s) if s == "auto" => Ok(Threads::Auto),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "`{}` is not \"auto\" or a number of threads",
                s.chars().take(40).collect::<String>()
            ))),
            Raw::N(n) => u32::try_from(n)
                .map(Threads::Fixed)
                .map_err(|_| serde::de::Error::custom(format!("{n} threads is out of range"))),
        }
    }
}

/// How a [`crate::stt::Recognizer`] loads and runs. The firmware fills it
/// from its `[stt]` and `[vad]` sections; nothing here knows the firmware's
/// configuration types.
#[derive(Debug, Clone, PartialEq)]
pub struct RecognizerOptions {
    /// Which recognizer.
    pub model: SttModel,
    /// `auto` (measured), `fp32` or `int8`.
    pub precision: Precision,
    /// Matrix-product threads, or `auto` (measured with the precision).
    pub threads: Threads,
    /// Most tokens decoded for one utterance.
    pub max_tokens: u32,
    /// `stt.model = "auto"`: the most a 3 s utterance may take from release
    /// to text without speculation for `agreement` to be chosen.
    pub latency_budget_ms: u32,
    /// Zero-padded mel frames after the speech.
    pub encoder_margin_frames: u32,
    /// Where an `auto` calibration is stored and reused.
    pub calibration_file: PathBuf,
    /// The Silero VAD model file.
    pub vad_model: PathBuf,
    /// How VAD probabilities become speech segments.
    pub segmenter: SegmenterConfig,
    /// The release that measured a calibration (part of its cache key: a
    /// new release measures again).
    pub release: String,
}

/// `stt.latency_budget_ms`'s default: 1 s from release to text for a 3 s
/// question without speculation. On the 2-core Xeon of docs/models.md
/// agreement takes about 0.2 s per dev clip; a Pi 4's Cortex-A72 is 5–10×
/// slower per core (issue 30's estimate, not measured here), so a Pi 4
/// lands near the line and a Pi 5 under it, and a Pi 3 over it. A second
/// is what a visitor waits at a counter before repeating themselves; with
/// speculation most presses are ≈ 0 anyway.
pub const DEFAULT_LATENCY_BUDGET_MS: u32 = 1_000;

impl Default for RecognizerOptions {
    fn default() -> Self {
        Self {
            model: SttModel::WhisperTiny,
            precision: Precision::Auto,
            threads: Threads::Auto,
            max_tokens: 96,
            latency_budget_ms: DEFAULT_LATENCY_BUDGET_MS,
            encoder_margin_frames: 512,
            calibration_file: PathBuf::from("calibration.json"),
            vad_model: PathBuf::from(crate::models::VAD_FILE),
            segmenter: SegmenterConfig::default(),
            release: env!("CARGO_PKG_VERSION").to_owned(),
        }
    }
}
