//! Speech to text: Whisper tiny.en as two ONNX graphs on tract (see
//! `models/whisper_onnx.py`), a log-mel front end in Rust, and greedy
//! decoding with the self-attention KV cache.

pub mod mel;
pub mod tokenizer;
pub mod whisper;

pub use whisper::{SttError, Transcript, Whisper};
