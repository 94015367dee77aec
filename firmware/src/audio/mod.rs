//! The audio path: capture thread → SPSC queue → audio thread
//! (downmix, resample to 16 kHz, level meter, pre-roll) → [`AudioSink`].
//!
//! Architecture invariant: after [`AudioPipeline::start`] returns, nothing in
//! this module allocates, locks or blocks without a timeout. Buffers are
//! sized from the negotiated format at start and reused. The one exception
//! is reopening a lost device, which allocates the new device's buffers.

pub mod capture;
pub mod clip;
pub mod frame;
pub mod meter;
pub mod pipeline;
pub mod preroll;
pub mod resample;
pub mod source;
pub mod wav;

pub use pipeline::{
    AudioPipeline, AudioSink, PipelineEnd, PipelineError, PipelineOptions, SinkControl,
};
pub use preroll::PreRoll;
pub use source::open_source;

/// The rate everything after the resampler runs at (VAD and Whisper expect it).
pub const PIPELINE_RATE: u32 = talkie_speech::SAMPLE_RATE;
