//! Moonshine base (English) on tract: the second recognizer of issue 31.
//!
//! The graphs are `models/moonshine_lean.py`'s, shaped like talkie's
//! Whisper: `moonshine_encoder_kv.onnx` takes the raw 16 kHz audio (no
//! log-mel, no 30 s window: any length) and gives every decoder layer's
//! cross-attention keys and values; `moonshine_decoder.onnx` is one step
//! (the first included, with an empty self-attention cache), the token's
//! embedding in and the final hidden state out. The tied vocabulary matrix
//! is outside the graphs as int8 rows ([`Vocab`]), as for Whisper. Greedy
//! decoding as moonshine-cpp does it: start token 1, end token 2, at most
//! 6.5 tokens per second of audio (`models/moonshine_ref.py` is the
//! onnxruntime reference the tests agree with).

use super::vocab::Vocab;
use super::whisper::{
    argmax, cache_prefix, call_hook, decoder_prefill, decoder_step, input_dim, load_decoder_plan,
    load_plan, log_softmax_at, lp_sum, mean_logprob, own_pass, run_err, Encoded, LogSoftmax, Plan,
    StepAt, StepHook, SttError, Transcript,
};
use crate::models::{self, ModelError};
use crate::options::{Forms, ModelPrecision};
use std::path::Path;
use std::time::Instant;
use tract_onnx::prelude::*;

/// The encoder (audio in, cross-attention K/V out), fp32; the int8 form
/// is `moonshine_encoder_kv_int8.onnx` ([`encoder_file`]).
pub const ENCODER_FILE: &str = "moonshine_encoder_kv.onnx";
/// One decoder step, fp32 (int8: [`decoder_file`]).
pub const DECODER_FILE: &str = "moonshine_decoder.onnx";

/// The encoder file of `precision` (fp32 or int8; fp16 has none: fp32).
pub fn encoder_file(precision: ModelPrecision) -> String {
    format!("moonshine_encoder_kv{}.onnx", suffix(precision))
}

/// The decoder file of `precision` (see [`encoder_file`]).
pub fn decoder_file(precision: ModelPrecision) -> String {
    format!("moonshine_decoder{}.onnx", suffix(precision))
}

/// The form Moonshine runs for `precision` (fp16 has none: fp32).
fn own_form(precision: ModelPrecision) -> ModelPrecision {
    match precision {
        ModelPrecision::Int8 => ModelPrecision::Int8,
        ModelPrecision::Fp32 | ModelPrecision::Fp16 => ModelPrecision::Fp32,
    }
}

fn suffix(precision: ModelPrecision) -> &'static str {
    match precision {
        ModelPrecision::Int8 => "_int8",
        ModelPrecision::Fp32 | ModelPrecision::Fp16 => "",
    }
}
/// The vocabulary matrix's int8 rows and their scales.
pub const VOCAB_FILE: &str = "moonshine_vocab_int8.npy";
/// See [`VOCAB_FILE`].
pub const SCALE_FILE: &str = "moonshine_vocab_scale.npy";
/// The token texts.
pub const TOKENIZER_FILE: &str = "moonshine_tokenizer.bin";

/// `<s>`: the first decoder input.
pub const START: u32 = 1;
/// `</s>`: the end of the text.
pub const END: u32 = 2;
/// Tokens allowed per second of audio (moonshine-cpp's cap).
const TOKENS_PER_SECOND: f32 = 6.5;
/// Longest audio one encoder pass takes (the model was trained on up to
/// about 64 s; talkie's presses are limited far below that anyway).
pub const MAX_SAMPLES: usize = 16_000 * 64;

/// `moonshine_tokenizer.bin`: per token one length byte, then its UTF-8
/// bytes; `▁` (U+2581) stands for a space.
#[derive(Debug)]
pub struct Tokens {
    texts: Vec<Vec<u8>>,
}

impl Tokens {
    /// Parse the file's bytes; None if an entry runs past the end.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let mut texts = Vec::new();
        let mut rest = bytes;
        while let Some((&n, tail)) = rest.split_first() {
            let n = usize::from(n);
            texts.push(tail.get(..n)?.to_vec());
            rest = tail.get(n..)?;
        }
        Some(Self { texts })
    }

    /// Entries in the file.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// The text of `ids`, spaces restored, trimmed.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter_map(|&i| self.texts.get(i as usize))
            .flatten()
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes)
            .replace('\u{2581}', " ")
            .trim()
            .to_owned()
    }
}

/// A loaded, optimized Moonshine.
pub struct Moonshine {
    encoder: Plan,
    decoder: Plan,
    vocab: Vocab,
    tokens: Tokens,
    logits: Vec<f32>,
    layers: usize,
    heads: usize,
    head_dim: usize,
    width: usize,
    max_tokens: usize,
    hook: Option<StepHook>,
    forms: Forms,
}

impl std::fmt::Debug for Moonshine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Moonshine")
            .field("layers", &self.layers)
            .field("width", &self.width)
            .finish_non_exhaustive()
    }
}

impl Moonshine {
    /// Load the graphs of `precision` and the vocabulary and tokenizer
    /// from `dir`, each verified against the manifest. At most
    /// `max_tokens` tokens per utterance.
    pub fn load(
        dir: &Path,
        precision: ModelPrecision,
        max_tokens: usize,
    ) -> Result<Self, SttError> {
        Self::load_forms(dir, Forms::same(precision), max_tokens)
    }

    /// [`Moonshine::load`] with the encoder of one form and the decoder of
    /// another (both give and take float32 cross-attention K/V).
    pub fn load_forms(dir: &Path, forms: Forms, max_tokens: usize) -> Result<Self, SttError> {
        let encoder = load_plan(&dir.join(encoder_file(forms.encoder)))?;
        let decoder = load_decoder_plan(&dir.join(decoder_file(forms.decoder)))?;
        let shape_err = |what: &str| ModelError::Load {
            path: dir.join(decoder_file(forms.decoder)),
            reason: format!("unexpected input shapes: {what}"),
        };
        let width =
            input_dim(&decoder, 0, 2).ok_or_else(|| shape_err("embedding [1, tokens, d]"))?;
        let heads = input_dim(&decoder, 1, 1).ok_or_else(|| shape_err("past [1, h, t, k]"))?;
        let head_dim = input_dim(&decoder, 1, 3).ok_or_else(|| shape_err("past [1, h, t, k]"))?;
        // Inputs: the embedding, then per layer past K, V and cross K, V.
        let layers = (decoder.model().inputs.len().saturating_sub(1)) / 4;
        if layers == 0 || encoder.model().outputs.len() != 2 * layers {
            return Err(shape_err("layers of the encoder and decoder disagree").into());
        }
        let mut vocab = Vocab::load_files(dir, VOCAB_FILE, SCALE_FILE, width)?;
        vocab.choose_fastest();
        let tok_path = dir.join(TOKENIZER_FILE);
        models::verify(&tok_path)?;
        let bytes = std::fs::read(&tok_path).map_err(|source| ModelError::Read {
            path: tok_path.clone(),
            source,
        })?;
        let tokens = Tokens::parse(&bytes).ok_or_else(|| ModelError::Load {
            path: tok_path.clone(),
            reason: "an entry runs past the end of the file".into(),
        })?;
        Ok(Self {
            encoder,
            decoder,
            logits: vec![0.0; vocab.len()],
            vocab,
            tokens,
            layers,
            heads,
            head_dim,
            width,
            max_tokens,
            hook: None,
            forms: Forms {
                encoder: own_form(forms.encoder),
                decoder: own_form(forms.decoder),
            },
        })
    }

    /// See [`super::Whisper::use_projection_pool`].
    pub fn use_projection_pool(
        &mut self,
        pool: Option<std::sync::Arc<rayon::ThreadPool>>,
    ) -> Vec<(usize, f64)> {
        self.vocab.use_pool(pool)
    }

    /// Threads the vocabulary projection runs on.
    pub fn projection_threads(&self) -> usize {
        self.vocab.threads()
    }

    /// The forms loaded (fp32 or int8 each).
    pub fn forms(&self) -> Forms {
        self.forms
    }

    /// Install (or remove) the [`StepHook`], called before the encoder and
    /// every decoder step.
    pub fn set_step_hook(&mut self, hook: Option<StepHook>) {
        self.hook = hook;
    }

    fn step_hook(&mut self) -> Result<(), SttError> {
        call_hook(&mut self.hook)
    }

    /// Every layer's cross-attention K/V for `audio` (16 kHz mono).
    fn encode(&self, audio: &[f32]) -> Result<TVec<TValue>, SttError> {
        let input = tract_ndarray::Array2::from_shape_vec((1, audio.len()), audio.to_vec())
            .map_err(run_err)?
            .into_tensor();
        self.encoder.run(tvec!(input.into())).map_err(run_err)
    }

    /// Transcribe 16 kHz mono audio (at most [`MAX_SAMPLES`]; the rest is
    /// not heard).
    pub fn transcribe(&mut self, audio: &[f32]) -> Result<Transcript, SttError> {
        self.transcribe_for_scoring(audio).map(|(t, _)| t)
    }

    /// [`Moonshine::transcribe`], keeping the encoder's output for
    /// [`Moonshine::score`] (issue 31's cross-scoring).
    pub fn transcribe_for_scoring(
        &mut self,
        audio: &[f32],
    ) -> Result<(Transcript, Encoded), SttError> {
        let audio = audio.get(..MAX_SAMPLES).unwrap_or(audio);
        // The encoder's convolutions need a few hundred samples.
        if audio.len() < 1_600 {
            return Ok((Transcript::default(), Encoded::new(TVec::new())));
        }
        self.step_hook()?;
        let t0 = Instant::now();
        let cross = self.encode(audio)?;
        let encoder_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let cap = self
            .max_tokens
            .min((audio.len() as f32 / 16_000.0 * TOKENS_PER_SECOND) as usize + 1);
        let (calls0, ms0) = self.vocab.spent();
        let (out, lps, end, past) = self.decode(&cross, cap)?;
        let (calls, ms) = self.vocab.spent();
        let t = Transcript {
            text: self.tokens.decode(&out),
            tokens: out.len(),
            avg_logprob: mean_logprob(lp_sum(&lps), out.len()),
            no_speech_prob: 0.0,
            encoder_ms,
            decoder_ms: t1.elapsed().as_secs_f64() * 1e3,
            projection_ms: ms - ms0,
            projections: calls - calls0,
        };
        let own = own_pass(&out, lps, end, past);
        Ok((t, Encoded { cross, own }))
    }

    /// Teacher-forced score of `tokens` (text tokens, no start token)
    /// given the audio behind `encoded`: the mean log-probability of each
    /// token and of the end token after them.
    pub fn score(&mut self, encoded: &Encoded, tokens: &[u32]) -> Result<f32, SttError> {
        if let Some(s) = encoded.own_score(tokens) {
            return Ok(s);
        }
        if encoded.cross.is_empty() {
            return Err(SttError::Run("no encoder output to score against".into()));
        }
        // Inputs 0..p (the start and p − 1 shared tokens) are the greedy
        // pass's: its cache and its first p log-probabilities.
        let (start, mut sum, mut past) = match encoded.shared_prefix(tokens) {
            Some((p, sum, cache)) => (p, sum, cache_prefix(cache, 2, p)?),
            None => (0, 0.0f32, self.empty_cache()),
        };
        let mut state = self.decoder.spawn().map_err(run_err)?;
        // Input k predicts target k: the tokens, then the end token. The
        // inputs from `start` go through the decoder in one run.
        let inputs: Vec<u32> = [START].into_iter().chain(tokens.iter().copied()).collect();
        let targets: Vec<u32> = tokens.iter().copied().chain([END]).collect();
        let at = StepAt {
            layers: self.layers,
            width: self.width,
        };
        self.step_hook()?;
        let rest = inputs.get(start..).unwrap_or_default();
        decoder_prefill(
            &mut state,
            &self.vocab,
            at,
            rest,
            (&mut past, &encoded.cross),
            &mut self.logits,
            |i, logits| {
                if let Some(&target) = targets.get(start + i) {
                    sum += log_softmax_at(logits, target as usize);
                }
            },
        )?;
        Ok(sum / (tokens.len() + 1) as f32)
    }

    /// The empty self-attention cache of a new utterance.
    fn empty_cache(&self) -> Vec<TValue> {
        let empty = || {
            tract_ndarray::Array4::<f32>::zeros((1, self.heads, 0, self.head_dim))
                .into_tensor()
                .into()
        };
        (0..2 * self.layers).map(|_| empty()).collect()
    }

    /// One decoder step ([`decoder_step`]): `token` in, `self.logits`
    /// set; `past`, the self-attention cache, replaced by the grown one.
    fn step(
        &mut self,
        state: &mut TypedSimpleState,
        token: u32,
        past: &mut [TValue],
        cross: &[TValue],
    ) -> Result<(), SttError> {
        let at = StepAt {
            layers: self.layers,
            width: self.width,
        };
        decoder_step(state, &self.vocab, at, token, past, cross, &mut self.logits)
    }

    /// The fixed work `talkie bench` times, as Whisper's
    /// [`time_fixed_work`](super::Whisper::time_fixed_work): `frames` 10 ms
    /// frames of quiet noise encoded, then `steps` decoder steps fed the
    /// start token. Returns (encoder ms, decoder ms).
    pub fn time_fixed_work(&mut self, frames: usize, steps: usize) -> Result<(f64, f64), SttError> {
        self.fixed_work(frames, steps).map(|(e, d, _)| (e, d))
    }

    /// [`Moonshine::time_fixed_work`], then one teacher-forced scoring of
    /// a `steps`-token text against the same encoder output (as agreement
    /// scores a text: [`Moonshine::score`], one decoder run). Returns
    /// (encoder ms, decoder ms, scoring ms).
    pub fn time_scored_work(
        &mut self,
        frames: usize,
        steps: usize,
    ) -> Result<(f64, f64, f64), SttError> {
        let (encoder_ms, decoder_ms, cross) = self.fixed_work(frames, steps)?;
        let t0 = Instant::now();
        // A step's work does not depend on which token it is.
        self.score(&Encoded::new(cross), &vec![START; steps])?;
        Ok((encoder_ms, decoder_ms, t0.elapsed().as_secs_f64() * 1e3))
    }

    /// The timed fixed work and the encoder output it decoded against.
    fn fixed_work(
        &mut self,
        frames: usize,
        steps: usize,
    ) -> Result<(f64, f64, TVec<TValue>), SttError> {
        let audio = super::whisper::quiet_noise(frames.clamp(10, 6_400) * 160, 1e-2);
        let t0 = Instant::now();
        let cross = self.encode(&audio)?;
        let encoder_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut past = self.empty_cache();
        let mut state = self.decoder.spawn().map_err(run_err)?;
        for _ in 0..steps {
            self.step(&mut state, START, &mut past, &cross)?;
        }
        Ok((encoder_ms, t1.elapsed().as_secs_f64() * 1e3, cross))
    }

    /// The vocabulary projection's kernel.
    pub fn vocab_kernel(&self) -> super::dot::Kernel {
        self.vocab.kernel()
    }

    /// Bytes of the vocabulary matrix in huge pages
    /// ([`super::vocab::Vocab::huge_page_bytes`]).
    pub fn vocab_huge_page_bytes(&self) -> u64 {
        self.vocab.huge_page_bytes()
    }

    /// Use another projection kernel; false if this CPU lacks it.
    pub fn set_vocab_kernel(&mut self, kernel: super::dot::Kernel) -> bool {
        self.vocab.set_kernel(kernel)
    }

    /// Greedy decoding: the tokens, each one's log-probability, the end
    /// token's if the pass ended on it, and the cache.
    #[allow(clippy::type_complexity)]
    fn decode(
        &mut self,
        cross: &TVec<TValue>,
        cap: usize,
    ) -> Result<(Vec<u32>, Vec<f32>, Option<f32>, Vec<TValue>), SttError> {
        let mut past = self.empty_cache();
        let mut state = self.decoder.spawn().map_err(run_err)?;
        let (mut out, mut token) = (Vec::new(), START);
        let mut lps = Vec::new();
        for _ in 0..cap {
            self.step_hook()?;
            self.step(&mut state, token, &mut past, cross)?;
            let next = argmax(&self.logits, END as usize);
            let lsm = LogSoftmax::of(&self.logits);
            if next as u32 == END {
                let end = Some(lsm.at(&self.logits, next));
                return Ok((out, lps, end, past));
            }
            let lp = lsm.at(&self.logits, next);
            lps.push(lp);
            token = next as u32;
            out.push(token);
        }
        Ok((out, lps, None, past))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_length_prefixed_and_spaces_restored() {
        let bytes = [
            0, 3, b'<', b's', b'>', 4, 0xE2, 0x96, 0x81, b'h', 2, b'i', b'!',
        ];
        let t = Tokens::parse(&bytes).unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(t.decode(&[2, 3]), "hi!");
        assert_eq!(
            t.decode(&[3, 2, 99]),
            "i!\u{2581}h".replace('\u{2581}', " ")
        );
        assert!(Tokens::parse(&[5, b'a']).is_none(), "cut short");
    }

    /// The onnxruntime reference's texts (`models/moonshine_ref.py`, the
    /// issue's 10.6 % WER run) for three dev clips, from talkie's fp32
    /// graphs; the int8 ones' texts for the same clips.
    #[test]
    fn three_dev_clips_give_the_reference_transcripts() {
        let (models, dev) = crate::stt::testdata::models_and_dev();
        for precision in [ModelPrecision::Fp32, ModelPrecision::Int8] {
            let mut m = Moonshine::load(&models, precision, 224).expect("make models");
            three_clips(&mut m, &dev, precision);
        }
    }

    fn three_clips(m: &mut Moonshine, dev: &Path, precision: ModelPrecision) {
        // A near-tie: int8 contracted the first question ("Where's") while
        // its linear layers quantized activations to 8 bits, read it as
        // fp32 does with the decoder's at 15 bits (`linear.rs`), and
        // contracts it again with the encoder's at 15 bits too.
        let first = match precision {
            ModelPrecision::Int8 => "Where's the nearest restroom?",
            _ => "Where is the nearest restroom?",
        };
        for (file, text) in [
            ("dev_00.wav", first),
            ("dev_01.wav", "What time does the museum close today?"),
            (
                "dev_02.wav",
                "Can you show me the way to the main entrance?",
            ),
        ] {
            let audio = crate::stt::testdata::read_clip(&dev.join(file));
            let t = m.transcribe(&audio).unwrap();
            eprintln!(
                "moonshine {precision:?} {file}: {:?} (encoder {:.0} ms, decoder {:.0} ms, {} tokens)",
                t.text, t.encoder_ms, t.decoder_ms, t.tokens
            );
            assert_eq!(t.text, text, "{precision:?} {file}");
        }
    }
}
