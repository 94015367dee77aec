//! Silero VAD (`silero_vad_16k_sequence.onnx`) on tract.
//!
//! The model takes `input` `[n, 576]`: 64 samples of context (the tail of
//! the previous chunk) followed by 512 new samples at 16 kHz, plus the LSTM
//! state `h`, `c` `[1, 1, 128]`; it returns `speech_probs` `[n]` and the new
//! state. talkie streams it one chunk at a time (`n = 1`), carrying the
//! context and the state.

use crate::models::{self, ModelError};
use std::path::Path;
use tract_onnx::prelude::*;

/// New samples per VAD chunk (32 ms at 16 kHz).
pub const CHUNK: usize = 512;
/// Samples of the previous chunk prepended as context.
const CONTEXT: usize = 64;
const STATE: usize = 128;

type State = TypedSimpleState;

/// Errors of the VAD.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("VAD inference failed: {0}")]
    Run(String),
}

/// A loaded Silero VAD with its streaming state.
pub struct SileroVad {
    state: State,
    /// Context followed by the newest chunk.
    input: [f32; CONTEXT + CHUNK],
    h: Tensor,
    c: Tensor,
}

impl std::fmt::Debug for SileroVad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroVad").finish_non_exhaustive()
    }
}

fn load_err(path: &Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Load {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

impl SileroVad {
    /// Verify `path` against the manifest, load and optimize it.
    pub fn load(path: &Path) -> Result<Self, VadError> {
        models::verify(path)?;
        let mut model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| load_err(path, e))?;
        for (ix, shape) in [
            (0, vec![1, CONTEXT + CHUNK]),
            (1, vec![1, 1, STATE]),
            (2, vec![1, 1, STATE]),
        ] {
            model = model
                .with_input_fact(ix, f32::fact(shape).into())
                .map_err(|e| load_err(path, e))?;
        }
        let plan = model
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| load_err(path, format!("{e:?}")))?;
        let state = plan.spawn().map_err(|e| load_err(path, format!("{e:?}")))?;
        Ok(Self {
            state,
            input: [0.0; CONTEXT + CHUNK],
            h: tract_ndarray::Array3::<f32>::zeros((1, 1, STATE)).into_tensor(),
            c: tract_ndarray::Array3::<f32>::zeros((1, 1, STATE)).into_tensor(),
        })
    }

    /// Forget the context and recurrent state (start of a new stream).
    pub fn reset(&mut self) {
        self.input.fill(0.0);
        self.reset_state();
    }

    fn reset_state(&mut self) {
        for t in [&mut self.h, &mut self.c] {
            *t = tract_ndarray::Array3::<f32>::zeros((1, 1, STATE)).into_tensor();
        }
    }

    /// Speech probability of the next 512 samples.
    pub fn prob(&mut self, chunk: &[f32; CHUNK]) -> Result<f32, VadError> {
        let run = |e: TractError| VadError::Run(format!("{e:?}"));
        // Keep the last CONTEXT samples of the previous chunk as context.
        self.input.copy_within(CHUNK.., 0);
        self.input[CONTEXT..].copy_from_slice(chunk);
        // Silero expects finite input; a NaN would poison the state.
        for s in &mut self.input[CONTEXT..] {
            if !s.is_finite() {
                *s = 0.0;
            }
        }
        let input = Tensor::from_shape(&[1, CONTEXT + CHUNK], &self.input).map_err(run)?;
        let out = self
            .state
            .run(tvec!(
                input.into(),
                std::mem::take(&mut self.h).into(),
                std::mem::take(&mut self.c).into()
            ))
            .map_err(run)?;
        if out.len() < 3 {
            self.reset_state();
            return Err(VadError::Run(format!(
                "expected 3 outputs, got {}",
                out.len()
            )));
        }
        let p = out[0]
            .try_as_plain_ram()
            .and_then(|v| {
                v.as_slice::<f32>()
                    .map(|s| s.first().copied().unwrap_or(0.0))
            })
            .map_err(run)?;
        let mut out = out.into_iter();
        let _probs = out.next();
        match (out.next(), out.next()) {
            (Some(h), Some(c)) => {
                self.h = h.into_tensor();
                self.c = c.into_tensor();
            }
            _ => self.reset_state(),
        }
        Ok(p)
    }
}
