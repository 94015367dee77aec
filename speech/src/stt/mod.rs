//! Speech to text: Whisper tiny.en as two ONNX graphs on tract (see
//! `models/whisper_onnx.py`), a log-mel front end in Rust, and greedy
//! decoding with the self-attention KV cache. [`Recognizer`] puts the VAD
//! trim in front of it. Moonshine base ([`Moonshine`], issue 31) is the
//! second recognizer: raw audio in, the same decoder loop and vocabulary.

pub mod agreement;
pub mod attention;
pub mod bpe;
pub mod calibrate;
pub mod dot;
pub mod linear;
pub mod mel;
pub mod moonshine;
pub mod quant;
pub mod recognizer;
#[cfg(test)]
pub(crate) mod testdata;
pub mod tokenizer;
pub mod vocab;
pub mod whisper;

pub use moonshine::Moonshine;
pub use recognizer::{Progress, Recognition, RecognizeError, Recognizer};
pub use vocab::Vocab;
pub use whisper::{StepHook, SttError, Transcript, Whisper};
