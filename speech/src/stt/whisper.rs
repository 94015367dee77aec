//! Whisper on tract: encoder once per window, then greedy decoding one
//! token at a time with the self-attention cache carried between steps.

use super::mel::{MelFrontEnd, HOP, N_MELS};
use super::tokenizer::Tokenizer;
use super::vocab::Vocab;
use crate::models::{self, ModelError};
use std::path::Path;
use std::time::Instant;
use tract_onnx::prelude::*;

/// `<|endoftext|>`
pub const EOT: u32 = 50_256;
/// `<|startoftranscript|>`
pub const SOT: u32 = 50_257;
/// `<|nospeech|>` (English-only vocabulary)
pub const NO_SPEECH: u32 = 50_361;
/// `<|notimestamps|>`
pub const NO_TIMESTAMPS: u32 = 50_362;
/// Default zero-padded mel frames after the audio (`stt.encoder_margin_frames`).
/// Measured on shared/eval/dev (release, x86_64, Whisper-normalized WER):
/// 1000, 768 and 512 frames all 5.3 %, 384 → 6.9 %, 256 → 7.3 %; 512 takes
/// the encoder from 298 to 155 ms per utterance.
pub const MARGIN_FRAMES: usize = 512;
/// Whisper's longest window.
pub const MAX_FRAMES: usize = 3_000;
/// Tokens per second of audio allowed, plus a constant, before stopping.
const TOKENS_PER_SECOND: f32 = 6.0;
/// Whisper's no-speech gate: a window whose `<|nospeech|>` probability is
/// above this *and* whose mean token log-probability is below
/// [`LOGPROB_THRESHOLD`] is silence, and its text is dropped.
pub const NO_SPEECH_THRESHOLD: f32 = 0.6;
/// See [`NO_SPEECH_THRESHOLD`].
pub const LOGPROB_THRESHOLD: f32 = -1.0;

pub(super) type Plan = Arc<TypedRunnableModel>;

/// CTranslate2's generation settings of the model, verified like the models.
pub const CONFIG_FILE: &str = "whisper_config.json";

/// The part of `whisper_config.json` greedy decoding uses.
#[derive(Debug, Default, serde::Deserialize)]
struct GenerationConfig {
    /// Tokens never emitted (symbols Whisper is trained not to produce).
    #[serde(default)]
    suppress_ids: Vec<u32>,
    /// Tokens not allowed as the first one (a blank, `<|endoftext|>`).
    #[serde(default)]
    suppress_ids_begin: Vec<u32>,
}

fn load_generation(path: &Path) -> Result<GenerationConfig, ModelError> {
    models::verify(path)?;
    let load_err = |reason: String| ModelError::Load {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| load_err(e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| load_err(e.to_string()))
}

/// Token ids as logit indices, those outside the vocabulary dropped.
fn logit_indices(ids: &[u32], vocab: usize) -> Vec<usize> {
    ids.iter()
        .map(|&i| i as usize)
        .filter(|&i| i < vocab)
        .collect()
}

/// Errors of speech to text.
#[derive(Debug, thiserror::Error)]
pub enum SttError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("speech recognition failed: {0}")]
    Run(String),
    #[error("speech recognition stopped: {0}")]
    Stopped(&'static str),
}

/// Called before every encoder window and every decoder step: a heartbeat
/// for the watchdog, and a way to stop (a time limit, a cancelled job).
/// `Err(why)` stops recognition with [`SttError::Stopped`].
pub type StepHook = Box<dyn FnMut() -> Result<(), &'static str> + Send>;

pub(super) fn run_err(e: impl std::fmt::Debug) -> SttError {
    SttError::Run(format!("{e:?}"))
}

/// One recognized utterance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transcript {
    pub text: String,
    /// Tokens decoded (without the prompt).
    pub tokens: usize,
    /// Mean log-probability of the decoded tokens.
    pub avg_logprob: f32,
    /// Probability of `<|nospeech|>` at the first step.
    pub no_speech_prob: f32,
    pub encoder_ms: f64,
    pub decoder_ms: f64,
    /// Of `decoder_ms`, the vocabulary projections ([`Vocab::spent`]), and
    /// how many ran (one per decoder step).
    pub projection_ms: f64,
    pub projections: u64,
}

/// The shape a decoder step graph was built with.
#[derive(Debug, Clone, Copy)]
pub(super) struct StepAt {
    pub layers: usize,
    /// Model width `d` of the embedding input [1, T, d].
    pub width: usize,
}

/// One step of talkie's decoder graphs (Whisper's and Moonshine's alike):
/// `token`'s embedding from `vocab` in, the hidden state projected on the
/// vocabulary into `logits`; `past`, the self-attention cache, is replaced
/// by the grown one.
pub(super) fn decoder_step(
    state: &mut TypedSimpleState,
    vocab: &Vocab,
    at: StepAt,
    token: u32,
    past: &mut [TValue],
    cross: &[TValue],
    logits: &mut [f32],
) -> Result<(), SttError> {
    // The projection's helper thread, awake by the time the layers end.
    let _awake = vocab.keep_helper_awake();
    let hidden_t = decoder_run(state, vocab, at, &[token], past, cross)?;
    let view = hidden_t.try_as_plain_ram().map_err(run_err)?;
    let hidden = view.as_slice::<f32>().map_err(run_err)?;
    vocab.logits(hidden, logits);
    Ok(())
}

/// Teacher forcing in one decoder run (issue 31: a text is scored in one
/// pass, not one step per token): `tokens` in at once, each seeing the
/// cache and the tokens before it (the graphs' causal mask), then each
/// position's hidden state projected into `logits` and handed to `each`
/// with its index, in order. `past` is replaced by the grown cache.
pub(super) fn decoder_prefill(
    state: &mut TypedSimpleState,
    vocab: &Vocab,
    at: StepAt,
    tokens: &[u32],
    (past, cross): (&mut [TValue], &[TValue]),
    logits: &mut [f32],
    mut each: impl FnMut(usize, &[f32]),
) -> Result<(), SttError> {
    if tokens.is_empty() {
        return Ok(());
    }
    let hidden_t = decoder_run(state, vocab, at, tokens, past, cross)?;
    let view = hidden_t.try_as_plain_ram().map_err(run_err)?;
    let hidden = view.as_slice::<f32>().map_err(run_err)?;
    if hidden.len() != tokens.len() * at.width {
        return Err(SttError::Run(format!(
            "decoder returned {} values for {} tokens of width {}",
            hidden.len(),
            tokens.len(),
            at.width
        )));
    }
    let _awake = vocab.keep_helper_awake();
    for (i, row) in hidden.chunks_exact(at.width).enumerate() {
        vocab.logits(row, logits);
        each(i, logits);
    }
    Ok(())
}

/// `tokens`' embeddings from `vocab` through the decoder graph in one run:
/// the hidden states (`tokens.len()` rows of `at.width`); `past` replaced
/// by the grown cache.
fn decoder_run(
    state: &mut TypedSimpleState,
    vocab: &Vocab,
    at: StepAt,
    tokens: &[u32],
    past: &mut [TValue],
    cross: &[TValue],
) -> Result<TValue, SttError> {
    let mut embedding = tract_ndarray::Array3::<f32>::zeros((1, tokens.len(), at.width));
    let rows = embedding.as_slice_mut().unwrap_or_default();
    for (&token, row) in tokens.iter().zip(rows.chunks_exact_mut(at.width)) {
        if !vocab.embed(token, row) {
            return Err(SttError::Run(format!(
                "token {token} outside the vocabulary"
            )));
        }
    }
    let inputs = step_inputs(embedding.into_tensor().into(), at.layers, past, cross)?;
    let mut res = state.run(inputs).map_err(run_err)?.into_iter();
    let hidden_t = res
        .next()
        .ok_or_else(|| SttError::Run("decoder returned no hidden state".into()))?;
    for slot in past.iter_mut() {
        *slot = res
            .next()
            .ok_or_else(|| SttError::Run("decoder returned too few outputs".into()))?;
    }
    Ok(hidden_t)
}

/// The text token timed scoring repeats ([`Whisper::time_scored_work`];
/// a step's work does not depend on which token it is): " the".
const FIXED_TEXT_TOKEN: u32 = 262;

/// A decoder step's inputs as talkie's graphs take them (Whisper's and
/// Moonshine's alike): the token's embedding, then per layer the
/// self-attention cache's K and V and the cross-attention K and V.
fn step_inputs(
    embedding: TValue,
    layers: usize,
    past: &[TValue],
    cross: &[TValue],
) -> Result<TVec<TValue>, SttError> {
    let mut inputs: TVec<TValue> = tvec!(embedding);
    for l in 0..layers {
        for t in [
            past.get(2 * l),
            past.get(2 * l + 1),
            cross.get(2 * l),
            cross.get(2 * l + 1),
        ] {
            inputs.push(
                t.cloned()
                    .ok_or_else(|| SttError::Run("encoder returned too few outputs".into()))?,
            );
        }
    }
    Ok(inputs)
}

/// An encoder's output kept for teacher-forced scoring
/// ([`Whisper::score`], [`super::Moonshine::score`]), with the greedy
/// pass's own score.
pub struct Encoded {
    pub(super) cross: TVec<TValue>,
    /// The greedy pass, when it ended on the end token: scoring its
    /// tokens again would feed the decoder the same inputs and give the
    /// same logits, so [`Encoded::own_score`] sums its log-probabilities
    /// instead, and [`Encoded::shared_prefix`] starts another text from its
    /// cache (bit for bit the same: both add the same log-probabilities,
    /// [`LogSoftmax`], in the same order). `None` after a cut (token cap,
    /// repetition guard).
    pub(super) own: Option<Own>,
}

/// A greedy pass kept for scoring ([`Encoded::own`]).
pub(super) struct Own {
    pub tokens: Vec<u32>,
    /// Each token's log-probability, in order.
    pub lps: Vec<f32>,
    /// The end token's.
    pub end: f32,
    /// The self-attention cache after the pass: its first positions are
    /// the cache of any prefix of the pass's inputs.
    pub past: Vec<TValue>,
}

impl std::fmt::Debug for Own {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Own")
            .field("tokens", &self.tokens)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

/// Log-probabilities added in order from 0, as decoding and scoring add
/// them.
pub(super) fn lp_sum(lps: &[f32]) -> f32 {
    lps.iter().fold(0.0f32, |s, &l| s + l)
}

/// The first `len` positions (along `axis`) of each cache tensor.
pub(super) fn cache_prefix(
    past: &[TValue],
    axis: usize,
    len: usize,
) -> Result<Vec<TValue>, SttError> {
    past.iter()
        .map(|t| t.slice(axis, 0, len).map(TValue::from).map_err(run_err))
        .collect()
}

impl Encoded {
    /// An encoder output without a greedy pass to reuse.
    pub(super) fn new(cross: TVec<TValue>) -> Self {
        Self { cross, own: None }
    }

    /// The greedy pass's score of `tokens`, if they are its tokens.
    pub(super) fn own_score(&self, tokens: &[u32]) -> Option<f32> {
        let own = self.own.as_ref().filter(|o| o.tokens == tokens)?;
        let sum = lp_sum(&own.lps) + own.end;
        Some(sum / (tokens.len() + 1) as f32)
    }

    /// Where `tokens` begin as the greedy pass's did: how many tokens
    /// they share (at least one), the sum of those tokens'
    /// log-probabilities (added in order, as scoring adds them), and the
    /// pass's cache, whose first positions teacher forcing would rebuild.
    pub(super) fn shared_prefix(&self, tokens: &[u32]) -> Option<(usize, f32, &[TValue])> {
        let own = self.own.as_ref()?;
        let p = own
            .tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        let sum = lp_sum(own.lps.get(..p)?);
        (p > 0).then_some((p, sum, own.past.as_slice()))
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("cross", &self.cross.len())
            .field("own", &self.own)
            .finish()
    }
}

/// What one greedy pass gave ([`Whisper::decode_tokens`]).
struct Greedy {
    tokens: Vec<u32>,
    /// Each token's log-probability.
    lps: Vec<f32>,
    /// The self-attention cache at the end.
    past: Vec<TValue>,
    no_speech_prob: f32,
    /// The end token's log-probability, if the pass ended on it.
    end: Option<f32>,
}

/// A loaded, optimized Whisper.
pub struct Whisper {
    encoder: Plan,
    decoder: Plan,
    tokenizer: Tokenizer,
    vocab: Vocab,
    /// One step's logits (vocabulary size), reused.
    logits: Vec<f32>,
    /// Logits masked at every sampled step, and also at the first one.
    suppress: Vec<usize>,
    suppress_begin: Vec<usize>,
    mel: MelFrontEnd,
    features: Vec<f32>,
    max_tokens: usize,
    margin_frames: usize,
    layers: usize,
    width: usize,
    /// See [`StepHook`].
    hook: Option<StepHook>,
    /// Each projection kernel's time per step, measured at load
    /// ([`Vocab::choose_fastest`]).
    vocab_timings: Vec<(super::dot::Kernel, f64)>,
    /// The decoder's own thread pool when calibration split the stages
    /// (the encoder runs on the caller's); `None`: the caller's for both.
    decoder_executor: Option<tract_linalg::multithread::Executor>,
}

impl std::fmt::Debug for Whisper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Whisper")
            .field("layers", &self.layers)
            .finish_non_exhaustive()
    }
}

/// An encoder graph with its int8 linear chains fused (see
/// [`super::linear`]; fp32 graphs have none). Its attention keeps tract's
/// ops: its products are matrix by matrix, which tract runs on every core.
pub(super) fn load_plan(path: &Path) -> Result<Plan, ModelError> {
    load_plan_fused(path, false, true)
}

/// A decoder graph with its attention chains and its int8 linear chains
/// fused into one op each (see [`super::attention`], [`super::linear`]).
pub(super) fn load_decoder_plan(path: &Path) -> Result<Plan, ModelError> {
    load_plan_as(path, true)
}

/// `tract_onnx::onnx()` that also reads [`super::attention::OP_TYPE`] and
/// [`super::linear::OP_TYPE`] nodes, and runs `DynamicQuantizeLinear` as
/// [`super::quant::DynamicQuantizeU8`].
fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register
        .insert(super::attention::OP_TYPE, super::attention::parse);
    onnx.op_register
        .insert("DynamicQuantizeLinear", super::quant::parse);
    onnx.op_register
        .insert(super::linear::OP_TYPE, super::linear::parse);
    onnx
}

pub(super) fn load_plan_as(path: &Path, fuse: bool) -> Result<Plan, ModelError> {
    load_plan_fused(path, fuse, fuse)
}

/// [`load_plan_as`] with each fusion chosen apart (tests hold the
/// attention op alone to tract's int8 chain).
fn load_plan_fused(path: &Path, attention: bool, linear: bool) -> Result<Plan, ModelError> {
    models::verify(path)?;
    let err = |e: TractError| ModelError::Load {
        path: path.to_owned(),
        reason: format!("{e:?}"),
    };
    let onnx = onnx();
    let mut proto = onnx.proto_model_for_path(path).map_err(err)?;
    if let Some(graph) = proto.graph.as_mut() {
        let attention = if attention {
            super::attention::fuse(graph)
        } else {
            0
        };
        let linear = if linear {
            super::linear::fuse(graph)
        } else {
            0
        };
        tracing::debug!(path = %path.display(), attention, linear, "chains fused");
    }
    // As `model_for_path` does: the file's directory resolves external data.
    let dir = path.parent().and_then(Path::to_str);
    let parsed = onnx.parse(&proto, dir).map_err(err)?;
    // The parsed model holds its own copy of every weight: the protobuf's
    // (the file's size again) must not live through the optimization,
    // where the load's memory peaks.
    drop(proto);
    if !parsed.unresolved_inputs.is_empty() {
        return Err(ModelError::Load {
            path: path.to_owned(),
            reason: format!("unresolved inputs {:?}", parsed.unresolved_inputs),
        });
    }
    parsed
        .model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(err)
}

/// `d` of the decoder's first input, the embeddings [1, T, d].
fn model_width(decoder: &Plan) -> Option<usize> {
    input_dim(decoder, 0, 2)
}

/// The fixed size of input `ix`'s axis `axis` (`None` if symbolic or
/// missing).
pub(super) fn input_dim(plan: &Plan, ix: usize, axis: usize) -> Option<usize> {
    let model = plan.model();
    let fact = model.outlet_fact(*model.inputs.get(ix)?).ok()?;
    fact.shape
        .get(axis)?
        .as_i64()
        .and_then(|d| usize::try_from(d).ok())
}

/// Call the [`StepHook`], if one is installed.
pub(super) fn call_hook(hook: &mut Option<StepHook>) -> Result<(), SttError> {
    match hook.as_mut() {
        Some(h) => h().map_err(SttError::Stopped),
        None => Ok(()),
    }
}

/// The index of the largest logit; `default` when every one is −∞ (or
/// there are none).
pub(super) fn argmax(logits: &[f32], default: usize) -> usize {
    logits
        .iter()
        .enumerate()
        .fold((default, f32::NEG_INFINITY), |best, (i, &l)| {
            if l > best.1 {
                (i, l)
            } else {
                best
            }
        })
        .0
}

/// `sum` over `n` tokens as a mean (0 for none).
pub(super) fn mean_logprob(sum: f32, n: usize) -> f32 {
    if n == 0 {
        0.0
    } else {
        sum / n as f32
    }
}

/// One step's log-softmax normalizer: `log p(i) = l[i] − max − ln Σ
/// exp(l − max)`. Taken once per step, it serves every index asked.
#[derive(Debug, Clone, Copy)]
pub(super) struct LogSoftmax {
    max: f32,
    ln_sum: f32,
}

impl LogSoftmax {
    pub(super) fn of(logits: &[f32]) -> Self {
        let max = logits.iter().copied().fold(f32::MIN, f32::max);
        let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
        Self {
            max,
            ln_sum: sum.ln(),
        }
    }

    /// `log p(ix)` for the logits this was taken of (`f32::MIN` outside).
    pub(super) fn at(self, logits: &[f32], ix: usize) -> f32 {
        logits
            .get(ix)
            .map_or(f32::MIN, |&l| l - self.max - self.ln_sum)
    }
}

pub(super) fn log_softmax_at(logits: &[f32], ix: usize) -> f32 {
    LogSoftmax::of(logits).at(logits, ix)
}

/// A greedy pass that ended on the end token, kept for scoring
/// ([`Encoded::own`]).
pub(super) fn own_pass(
    tokens: &[u32],
    lps: Vec<f32>,
    end: Option<f32>,
    past: Vec<TValue>,
) -> Option<Own> {
    end.map(|end| Own {
        tokens: tokens.to_vec(),
        lps,
        end,
        past,
    })
}

impl Whisper {
    /// The vocabulary projection's kernel (shown on the status page).
    pub fn vocab_kernel(&self) -> super::dot::Kernel {
        self.vocab.kernel()
    }

    /// Bytes of the vocabulary matrix in huge pages
    /// ([`Vocab::huge_page_bytes`]).
    pub fn vocab_huge_page_bytes(&self) -> u64 {
        self.vocab.huge_page_bytes()
    }

    /// Each projection kernel's median ms per step, measured at load.
    pub fn vocab_timings(&self) -> &[(super::dot::Kernel, f64)] {
        &self.vocab_timings
    }

    /// Vocabulary projections run so far and their time in ms, each timed
    /// where it ran ([`Vocab::spent`]): the difference across some work
    /// is its projections' share.
    pub fn projection_spent(&self) -> (u64, f64) {
        self.vocab.spent()
    }

    /// Run the decoder on `executor` (threads per stage); `None`: on the
    /// caller's executor, like the encoder.
    pub fn set_decoder_executor(&mut self, executor: Option<tract_linalg::multithread::Executor>) {
        self.decoder_executor = executor;
    }

    /// Split the vocabulary projection over `pool` when measured faster
    /// ([`Vocab::use_pool`]): (threads, ms per step) of each way.
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

    /// Use another projection kernel; false if this CPU lacks it.
    pub fn set_vocab_kernel(&mut self, kernel: super::dot::Kernel) -> bool {
        self.vocab.set_kernel(kernel)
    }

    /// Load `whisper_encoder{suffix}.onnx`, `whisper_decoder{suffix}.onnx`
    /// (suffix `""` for fp32, `"_int8"`), the vocabulary matrix (see
    /// [`Vocab`]), `whisper_tokenizer.json` and [`CONFIG_FILE`] from `dir`, each verified
    /// against the manifest. `margin_frames` zero frames
    /// follow the audio in every encoder window.
    pub fn load(
        dir: &Path,
        suffix: &str,
        max_tokens: usize,
        margin_frames: usize,
    ) -> Result<Self, SttError> {
        Self::load_stages(dir, suffix, suffix, max_tokens, margin_frames)
    }

    /// [`Whisper::load`] in `forms`: the encoder of one form, the decoder
    /// of another (both give and take float32 cross-attention K/V).
    pub fn load_forms(
        dir: &Path,
        forms: crate::options::Forms,
        max_tokens: usize,
        margin_frames: usize,
    ) -> Result<Self, SttError> {
        Self::load_stages(
            dir,
            forms.encoder.suffix(),
            forms.decoder.suffix(),
            max_tokens,
            margin_frames,
        )
    }

    fn load_stages(
        dir: &Path,
        encoder_suffix: &str,
        suffix: &str,
        max_tokens: usize,
        margin_frames: usize,
    ) -> Result<Self, SttError> {
        let encoder = load_plan(&dir.join(format!("whisper_encoder{encoder_suffix}.onnx")))?;
        let decoder = load_decoder_plan(&dir.join(format!("whisper_decoder{suffix}.onnx")))?;
        let tok_path = dir.join("whisper_tokenizer.json");
        models::verify(&tok_path)?;
        let tokenizer = Tokenizer::load(&tok_path)?;
        let layers = encoder.model().outputs.len() / 2;
        let width = model_width(&decoder).ok_or_else(|| ModelError::Load {
            path: dir.join(format!("whisper_decoder{suffix}.onnx")),
            reason: "input `embedding` is not [1, tokens, d]".into(),
        })?;
        let mut vocab = Vocab::load(dir, width)?;
        let vocab_timings = vocab.choose_fastest();
        let generation = load_generation(&dir.join(CONFIG_FILE))?;
        Ok(Self {
            encoder,
            decoder,
            tokenizer,
            logits: vec![0.0; vocab.len()],
            suppress: logit_indices(&generation.suppress_ids, vocab.len()),
            suppress_begin: logit_indices(&generation.suppress_ids_begin, vocab.len()),
            vocab,
            mel: MelFrontEnd::new(),
            features: Vec::new(),
            max_tokens,
            margin_frames: margin_frames.clamp(2, MAX_FRAMES / 2),
            layers,
            width,
            hook: None,
            vocab_timings,
            decoder_executor: None,
        })
    }

    /// Install (or remove) the [`StepHook`].
    pub fn set_step_hook(&mut self, hook: Option<StepHook>) {
        self.hook = hook;
    }

    fn step_hook(&mut self) -> Result<(), SttError> {
        call_hook(&mut self.hook)
    }

    /// Audio samples one encoder window takes (the margin follows them).
    pub fn window_samples(&self) -> usize {
        (MAX_FRAMES - self.margin_frames) * HOP
    }

    /// Transcribe 16 kHz mono audio; audio longer than one window is cut
    /// into windows whose texts are joined.
    pub fn transcribe(&mut self, audio: &[f32]) -> Result<Transcript, SttError> {
        let mut total = Transcript::default();
        let mut logprob_sum = 0.0;
        // Longest audio per window, so audio + margin fits in MAX_FRAMES.
        let window_samples = self.window_samples();
        for (i, window) in audio.chunks(window_samples).enumerate() {
            let t = self.transcribe_window(window)?;
            if !t.text.is_empty() {
                if !total.text.is_empty() {
                    total.text.push(' ');
                }
                total.text.push_str(&t.text);
            }
            logprob_sum += t.avg_logprob * t.tokens as f32;
            total.tokens += t.tokens;
            total.encoder_ms += t.encoder_ms;
            total.decoder_ms += t.decoder_ms;
            total.projection_ms += t.projection_ms;
            total.projections += t.projections;
            if i == 0 {
                total.no_speech_prob = t.no_speech_prob;
            }
        }
        total.avg_logprob = mean_logprob(logprob_sum, total.tokens);
        Ok(total)
    }

    /// Mel frames of the encoder window for `samples` of audio: the audio,
    /// then the margin, at most [`MAX_FRAMES`], even.
    fn window_frames(&self, samples: usize) -> usize {
        let frames = (samples / HOP + self.margin_frames).min(MAX_FRAMES);
        frames + frames % 2
    }

    /// Run the encoder on `audio` zero-padded to `frames` mel frames: the
    /// cross-attention keys and values of every layer.
    fn encode(&mut self, audio: &[f32], frames: usize) -> Result<TVec<TValue>, SttError> {
        self.mel.compute(audio, frames, &mut self.features);
        let mel = tract_ndarray::Array3::from_shape_vec((1, N_MELS, frames), self.features.clone())
            .map_err(run_err)?
            .into_tensor();
        self.encoder.run(tvec!(mel.into())).map_err(run_err)
    }

    /// The empty self-attention cache of a new window.
    fn empty_cache(&self) -> Vec<TValue> {
        let empty = || tract_ndarray::Array3::<f32>::zeros((1, 0, self.width)).into_tensor();
        (0..2 * self.layers).map(|_| empty().into()).collect()
    }

    /// The fixed work calibration and `talkie bench` time: `frames` mel
    /// frames of audio (quiet noise) encoded in the window a press of that
    /// length gets (the audio, then the margin, as [`Whisper::transcribe`]
    /// encodes), then `steps` decoder steps with their logits (fed the
    /// prompt token, so the count never depends on what is decoded).
    /// Returns (encoder ms, decoder ms).
    pub fn time_fixed_work(&mut self, frames: usize, steps: usize) -> Result<(f64, f64), SttError> {
        self.fixed_work(frames, steps).map(|(e, d, _)| (e, d))
    }

    /// [`Whisper::time_fixed_work`], then one teacher-forced scoring of a
    /// `steps`-token text against the same encoder output (as agreement
    /// scores a text: [`Whisper::score`], one decoder run). Returns
    /// (encoder ms, decoder ms, scoring ms).
    pub fn time_scored_work(
        &mut self,
        frames: usize,
        steps: usize,
    ) -> Result<(f64, f64, f64), SttError> {
        let (encoder_ms, decoder_ms, cross) = self.fixed_work(frames, steps)?;
        let t0 = Instant::now();
        self.score(&Encoded::new(cross), &vec![FIXED_TEXT_TOKEN; steps])?;
        Ok((encoder_ms, decoder_ms, t0.elapsed().as_secs_f64() * 1e3))
    }

    /// The timed fixed work and the encoder output it decoded against.
    fn fixed_work(
        &mut self,
        frames: usize,
        steps: usize,
    ) -> Result<(f64, f64, TVec<TValue>), SttError> {
        let audio = quiet_noise(frames.clamp(2, MAX_FRAMES) * HOP, 1e-2);
        let frames = self.window_frames(audio.len());
        let t0 = Instant::now();
        let cross = self.encode(&audio, frames)?;
        let encoder_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        // As in `transcribe` (calibration measures before any split exists).
        self.on_decoder_pool(|w| w.fixed_decoder_steps(&cross, steps))?;
        Ok((encoder_ms, t1.elapsed().as_secs_f64() * 1e3, cross))
    }

    /// The decoder's part of [`Whisper::time_fixed_work`] alone: `steps`
    /// steps against cross-attention K/V of the length `frames` of audio
    /// gives (quiet noise; a step's work does not depend on the values),
    /// without running the encoder. Calibration times another form's
    /// decoder this way when that form's encoder lost. Returns decoder ms.
    pub fn time_decoder_only(&mut self, frames: usize, steps: usize) -> Result<f64, SttError> {
        let ctx = self.window_frames(frames.clamp(2, MAX_FRAMES) * HOP) / 2;
        let noise = quiet_noise(ctx * self.width, 1e-2);
        let kv = tract_ndarray::Array3::from_shape_vec((1, ctx, self.width), noise)
            .map_err(run_err)?
            .into_tensor();
        let kv: TValue = kv.into();
        let cross: TVec<TValue> = (0..2 * self.layers).map(|_| kv.clone()).collect();
        let t0 = Instant::now();
        self.on_decoder_pool(|w| w.fixed_decoder_steps(&cross, steps))?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }

    /// `f` on the decoder's own pool when the stages are split, else on
    /// the caller's executor.
    fn on_decoder_pool<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        match self.decoder_executor.clone() {
            Some(ex) => tract_linalg::multithread::multithread_tract_scope(ex, || f(self)),
            None => f(self),
        }
    }

    /// One decoder step ([`decoder_step`]), its logits into `self.logits`.
    fn step_logits(
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

    /// `steps` decoder steps fed the prompt token, with their logits.
    fn fixed_decoder_steps(&mut self, cross: &TVec<TValue>, steps: usize) -> Result<(), SttError> {
        let mut past = self.empty_cache();
        let mut state = self.decoder.spawn().map_err(run_err)?;
        for _ in 0..steps {
            self.step_logits(&mut state, SOT, &mut past, cross)?;
        }
        Ok(())
    }

    /// Greedy decoding of one window from the encoder's `cross` output:
    /// the tokens, the sum of their log-probabilities (over the whole
    /// vocabulary, before suppression: as [`Whisper::score`] takes them),
    /// the first step's `<|nospeech|>` probability, and the end token's
    /// log-probability if the pass ended on it. `samples` (the window's
    /// audio) caps the token count.
    fn decode_tokens(&mut self, cross: &TVec<TValue>, samples: usize) -> Result<Greedy, SttError> {
        let mut past = self.empty_cache();
        let prompt = [SOT, NO_TIMESTAMPS];
        let seconds = samples as f32 / 16_000.0;
        let cap = self
            .max_tokens
            .min((seconds * TOKENS_PER_SECOND) as usize + 10);
        let mut out: Vec<u32> = Vec::new();
        let mut no_speech_prob = 0.0f32;
        let mut end = None;
        let mut lps = Vec::new();
        let mut state = self.decoder.spawn().map_err(run_err)?;
        for step in 0..prompt.len() + cap {
            self.step_hook()?;
            let token = match prompt.get(step) {
                Some(&t) => t,
                None => match out.last() {
                    Some(&t) => t,
                    None => break,
                },
            };
            self.step_logits(&mut state, token, &mut past, cross)?;
            if step == 0 {
                no_speech_prob = log_softmax_at(&self.logits, NO_SPEECH as usize).exp();
            }
            if step + 1 < prompt.len() {
                continue;
            }
            // Taken before suppression: a suppressed token's logit is −∞
            // after it, and never the one asked for.
            let lsm = LogSoftmax::of(&self.logits);
            let first = step + 1 == prompt.len();
            let begin: &[usize] = if first { &self.suppress_begin } else { &[] };
            for &i in self.suppress.iter().chain(begin) {
                if let Some(l) = self.logits.get_mut(i) {
                    *l = f32::NEG_INFINITY;
                }
            }
            let logits = &self.logits;
            // Special and timestamp tokens (from SOT on) are never text.
            let text_logits = logits.get(..SOT as usize).unwrap_or(logits);
            let next = argmax(text_logits, EOT as usize);
            if next as u32 == EOT {
                end = Some(lsm.at(logits, next));
                break;
            }
            let lp = lsm.at(logits, next);
            lps.push(lp);
            out.push(next as u32);
            if let Some(l) = repeat_len(&out) {
                out.truncate(out.len() - l);
                break;
            }
        }
        Ok(Greedy {
            tokens: out,
            lps,
            past,
            no_speech_prob,
            end,
        })
    }

    /// For cross-scoring (issue 31): transcribe `audio` as one window
    /// (cut to one window's length) and keep the encoder's output for
    /// [`Whisper::score`].
    pub fn transcribe_for_scoring(
        &mut self,
        audio: &[f32],
    ) -> Result<(Transcript, Encoded), SttError> {
        let audio = audio.get(..self.window_samples()).unwrap_or(audio);
        self.window(audio)
    }

    /// Teacher-forced score of `tokens` (text tokens, no prompt) given the
    /// audio behind `encoded`: the mean log-probability of each token and
    /// of `<|endoftext|>` after them, over the whole vocabulary.
    pub fn score(&mut self, encoded: &Encoded, tokens: &[u32]) -> Result<f32, SttError> {
        if let Some(s) = encoded.own_score(tokens) {
            return Ok(s);
        }
        self.on_decoder_pool(|w| {
            // Inputs 0..=p (the prompt and p − 1 shared tokens) are the
            // greedy pass's: its cache and its first p log-probabilities.
            let (start, mut sum, mut past) = match encoded.shared_prefix(tokens) {
                Some((p, sum, cache)) => (p + 1, sum, cache_prefix(cache, 1, p + 1)?),
                None => (0, 0.0f32, w.empty_cache()),
            };
            let mut state = w.decoder.spawn().map_err(run_err)?;
            let inputs: Vec<u32> = [SOT, NO_TIMESTAMPS]
                .into_iter()
                .chain(tokens.iter().copied())
                .collect();
            // After the prompt's last token, each position predicts the
            // next target: the tokens, then `<|endoftext|>`.
            let targets: Vec<u32> = tokens.iter().copied().chain([EOT]).collect();
            let at = StepAt {
                layers: w.layers,
                width: w.width,
            };
            w.step_hook()?;
            let rest = inputs.get(start..).unwrap_or_default();
            let mut logits = std::mem::take(&mut w.logits);
            let run = decoder_prefill(
                &mut state,
                &w.vocab,
                at,
                rest,
                (&mut past, &encoded.cross),
                &mut logits,
                |i, logits| {
                    let k = start + i;
                    if let Some(&target) = k.checked_sub(1).and_then(|t| targets.get(t)) {
                        sum += log_softmax_at(logits, target as usize);
                    }
                },
            );
            w.logits = logits;
            run?;
            Ok(sum / (tokens.len() + 1) as f32)
        })
    }

    fn transcribe_window(&mut self, audio: &[f32]) -> Result<Transcript, SttError> {
        self.window(audio).map(|(t, _)| t)
    }

    /// One window: its transcript and the encoder's output.
    fn window(&mut self, audio: &[f32]) -> Result<(Transcript, Encoded), SttError> {
        self.step_hook()?;
        let t0 = Instant::now();
        let cross = self.encode(audio, self.window_frames(audio.len()))?;
        let encoder_ms = t0.elapsed().as_secs_f64() * 1e3;

        let t1 = Instant::now();
        let (calls0, ms0) = self.vocab.spent();
        let g = self.on_decoder_pool(|w| w.decode_tokens(&cross, audio.len()))?;
        let (calls, ms) = self.vocab.spent();
        let text = self.tokenizer.decode(&g.tokens, EOT).trim().to_owned();
        let t = Transcript {
            text,
            tokens: g.tokens.len(),
            avg_logprob: mean_logprob(lp_sum(&g.lps), g.tokens.len()),
            no_speech_prob: g.no_speech_prob,
            encoder_ms,
            decoder_ms: t1.elapsed().as_secs_f64() * 1e3,
            projection_ms: ms - ms0,
            projections: calls - calls0,
        };
        let own = own_pass(&g.tokens, g.lps, g.end, g.past);
        Ok((t, Encoded { cross, own }))
    }
}

/// `n` samples of deterministic white noise of peak-to-peak `amplitude`
/// (xorshift32): the fixed input of warm-up and calibration.
pub fn quiet_noise(n: usize, amplitude: f32) -> Vec<f32> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32 - 0.5) * amplitude
        })
        .collect()
}

/// Length to cut when decoding loops: a block of 4 or more tokens repeated
/// twice at the end, or a block of 2–3 tokens repeated three times. Shorter
/// echoes ("try again. Fail again.") are normal speech.
fn repeat_len(tokens: &[u32]) -> Option<usize> {
    let n = tokens.len();
    let block = |l: usize, k: usize| tokens[n - l..] == tokens[n - k * l..n - (k - 1) * l];
    (4..=n / 2).find(|&l| block(l, 2)).or_else(|| {
        (2..=3)
            .filter(|&l| n >= 3 * l)
            .find(|&l| block(l, 2) && block(l, 3))
            .map(|l| 2 * l)
    })
}

#[cfg(test)]
mod tests {
    use super::{load_plan_as, quiet_noise, Plan};
    use super::{logit_indices, repeat_len, GenerationConfig};
    use tract_onnx::prelude::*;
    use tract_onnx::tract_hir::internal::DimLike;

    /// One run of a decoder step graph on deterministic inputs: one token
    /// (`embedding`), every other symbolic length `past_len` for the
    /// self-attention cache (`past…` inputs) and `ctx` for the rest (the
    /// cross K/V).
    fn step(plan: &Plan, past_len: usize, ctx: usize) -> Vec<Vec<f32>> {
        let model = plan.model();
        let inputs: TVec<TValue> = model
            .input_outlets()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, &outlet)| {
                let name = &model.node(outlet.node).name;
                let fact = model.outlet_fact(outlet).unwrap();
                let shape: Vec<usize> = fact
                    .shape
                    .iter()
                    .map(|d| {
                        d.to_usize().unwrap_or(if name.starts_with("past") {
                            past_len
                        } else if name == "embedding" {
                            1
                        } else {
                            ctx
                        })
                    })
                    .collect();
                let n = shape.iter().product::<usize>();
                let data = quiet_noise(n + i, 2.0)[i..].to_vec();
                tract_ndarray::ArrayD::from_shape_vec(shape, data)
                    .unwrap()
                    .into_tvalue()
            })
            .collect();
        floats(&plan.run(inputs).unwrap())
    }

    /// A plan's f32 outputs as vectors.
    fn floats(outputs: &[TValue]) -> Vec<Vec<f32>> {
        outputs
            .iter()
            .map(|o| {
                o.try_as_plain_ram()
                    .unwrap()
                    .as_slice::<f32>()
                    .unwrap()
                    .to_vec()
            })
            .collect()
    }

    /// Σ |a − b| over every element of every output.
    fn distance(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.iter().zip(y).map(|(a, b)| (a - b).abs()).sum::<f32>())
            .sum()
    }

    /// `files` (in models/build) load fused, with 8 attention ops each
    /// and, in int8, `linear` int8 linear ops and no 8-bit activations, and
    /// a step with the attention ops fused gives the chain's outputs (fp32:
    /// to a few ulps; int8: the chain's 8-bit activations turn ulps into
    /// steps, so looser; the int8 linear ops quantize activations to 15
    /// bits, see `fused_int8_steps_are_nearer_fp32_than_the_chain`).
    fn fused_steps_like_the_chain(files: &[(&str, f32, usize)]) {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/build");
        for &(file, tolerance, linear) in files {
            let path = dir.join(file);
            let chain = load_plan_as(&path, false).expect("make models");
            let fused = load_plan_as(&path, true).unwrap();
            let count = |p: &Plan, op: &str| {
                p.model()
                    .nodes()
                    .iter()
                    .filter(|n| n.op().name() == op)
                    .count()
            };
            let attention = super::super::attention::OP_TYPE;
            let fused_linear = super::super::linear::OP_TYPE;
            assert_eq!(
                (count(&chain, attention), count(&fused, attention)),
                (0, 8),
                "{file}"
            );
            assert_eq!(
                (count(&chain, fused_linear), count(&fused, fused_linear)),
                (0, linear),
                "{file}"
            );
            // no activation is quantized to 8 bits any more
            let dql = "TalkieDynamicQuantizeU8";
            assert_eq!(count(&chain, dql) > 0, linear > 0, "{file}");
            assert_eq!(count(&fused, dql), 0, "{file}");
            // int8: the attention op alone against tract's chain (the
            // linear ops are held to fp32 in the test named above)
            let fused = if linear > 0 {
                super::load_plan_fused(&path, true, false).unwrap()
            } else {
                fused
            };
            for (past, ctx) in [(0, 1), (3, 406), (17, 1500)] {
                let (a, b) = (step(&chain, past, ctx), step(&fused, past, ctx));
                assert_eq!(a.len(), chain.model().outputs.len());
                for (x, y) in a.iter().zip(&b) {
                    assert_eq!(x.len(), y.len());
                    let scale = x.iter().fold(1f32, |m, v| m.max(v.abs()));
                    let worst = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
                    assert!(
                        worst <= tolerance * scale,
                        "{file} past {past} ctx {ctx}: {worst} of {scale}"
                    );
                }
            }
        }
    }

    /// Whisper's 8 attention chains (self and cross) per decoder form;
    /// also under qemu, where the fused op's aarch64 code meets tract's
    /// NEON chain.
    #[test]
    fn fused_attention_steps_like_the_onnx_chain() {
        fused_steps_like_the_chain(&[
            ("whisper_decoder.onnx", 1e-4, 0),
            ("whisper_decoder_int8.onnx", 0.05, 32),
        ]);
    }

    /// The fused int8 decoders (attention and linear ops, activations at
    /// 15 bits) step nearer the fp32 decoder than the int8 chain (8-bit
    /// activations) does, at every cache and context length. Natively
    /// only (Moonshine's decoders load slowly under emulation).
    #[test]
    fn fused_int8_steps_are_nearer_fp32_than_the_chain() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/build");
        for (int8, fp32) in [
            ("whisper_decoder_int8.onnx", "whisper_decoder.onnx"),
            ("moonshine_decoder_int8.onnx", "moonshine_decoder.onnx"),
        ] {
            let chain = load_plan_as(&dir.join(int8), false).expect("make models");
            let fused = load_plan_as(&dir.join(int8), true).unwrap();
            let reference = load_plan_as(&dir.join(fp32), true).unwrap();
            for (past, ctx) in [(0, 1), (3, 406), (17, 1500)] {
                let want = step(&reference, past, ctx);
                let off = |plan: &Plan| distance(&step(plan, past, ctx), &want);
                let (chain_off, fused_off) = (off(&chain), off(&fused));
                eprintln!("{int8} past {past} ctx {ctx}: |chain - fp32| {chain_off}, |fused - fp32| {fused_off}");
                assert!(
                    fused_off < chain_off,
                    "{int8} past {past} ctx {ctx}: fused {fused_off} vs chain {chain_off}"
                );
            }
        }
    }

    /// The int8 encoders with their linear chains fused (activations at
    /// 15 bits, [`super::super::linear`]) come nearer the fp32 encoders'
    /// cross-attention K/V than tract's chain (8-bit activations) does:
    /// Whisper on 200 mel frames, Moonshine on 1 s of samples (noise). Natively
    /// only (the chain's int8 products are slow under emulation).
    #[test]
    fn fused_int8_encoders_are_nearer_fp32_than_the_chain() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/build");
        for (int8, fp32, shape) in [
            (
                "whisper_encoder_int8.onnx",
                "whisper_encoder.onnx",
                vec![1, 80, 200],
            ),
            (
                "moonshine_encoder_kv_int8.onnx",
                "moonshine_encoder_kv.onnx",
                vec![1, 16_000],
            ),
        ] {
            let chain = super::load_plan_fused(&dir.join(int8), false, false).expect("make models");
            let fused = super::load_plan(&dir.join(int8)).unwrap();
            let reference = super::load_plan(&dir.join(fp32)).unwrap();
            let n = shape.iter().product();
            let input = tract_ndarray::ArrayD::from_shape_vec(shape, quiet_noise(n, 0.5)).unwrap();
            let run = |plan: &Plan| floats(&plan.run(tvec!(input.clone().into_tvalue())).unwrap());
            let want = run(&reference);
            let off = |plan: &Plan| distance(&run(plan), &want);
            let (chain_off, fused_off) = (off(&chain), off(&fused));
            eprintln!("{int8}: |chain - fp32| {chain_off}, |fused - fp32| {fused_off}");
            assert!(
                fused_off < chain_off,
                "{int8}: fused {fused_off} vs chain {chain_off}"
            );
        }
    }

    /// Moonshine's 8 cross-attention chains per form (natively only: its
    /// 100 MB decoder loads too slowly under emulation).
    /// The same audio gives the same transcript to the last bit of its
    /// log-probability, run after run (fp32, fused decoder). It did not:
    /// tract's softmax kernels sum a row in an order set by its address,
    /// and the attention op's scores lay wherever the allocator put them
    /// (4 runs gave 3 different values; the op now aligns them).
    #[test]
    fn a_transcript_is_the_same_float_every_run() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/build");
        let mut w = super::Whisper::load(&dir, "", 40, 100).expect("make models");
        let audio = quiet_noise(2 * 16_000, 0.3);
        let runs: Vec<u32> = (0..4)
            .map(|_| w.transcribe(&audio).unwrap().avg_logprob.to_bits())
            .collect();
        assert!(runs.iter().all(|&r| r == runs[0]), "{runs:?}");
    }

    /// Calibration times a form's decoder without its encoder (issue 30):
    /// the synthetic cross-attention K/V it steps against has the shape a
    /// real window's encoder gives, and the steps run in two forms.
    #[test]
    fn the_decoder_times_alone_against_cross_kv_shaped_as_the_window() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/build");
        let forms = crate::options::Forms {
            encoder: crate::options::ModelPrecision::Fp32,
            decoder: crate::options::ModelPrecision::Int8,
        };
        let mut w = super::Whisper::load_forms(&dir, forms, 40, 100).expect("make models");
        assert!(w.time_decoder_only(300, 3).unwrap() > 0.0);
        let samples = 300 * super::HOP;
        let frames = w.window_frames(samples);
        let cross = w.encode(&quiet_noise(samples, 1e-2), frames).unwrap();
        assert_eq!(cross.len(), 2 * w.layers);
        for kv in &cross {
            assert_eq!(kv.shape(), [1, frames / 2, w.width]);
        }
    }

    #[test]
    fn fused_moonshine_attention_steps_like_the_onnx_chain() {
        fused_steps_like_the_chain(&[
            ("moonshine_decoder.onnx", 1e-4, 0),
            ("moonshine_decoder_int8.onnx", 0.05, 64),
        ]);
    }

    #[test]
    fn generation_config_reads_the_suppressed_ids() {
        let c: GenerationConfig = serde_json::from_str(
            r#"{"alignment_heads": [[1, 0]], "suppress_ids": [1, 2, 99999], "suppress_ids_begin": [220, 50256]}"#,
        )
        .unwrap();
        assert_eq!(logit_indices(&c.suppress_ids, 51_865), [1, 2]);
        assert_eq!(logit_indices(&c.suppress_ids_begin, 51_865), [220, 50_256]);
        let empty: GenerationConfig = serde_json::from_str("{}").unwrap();
        assert!(empty.suppress_ids.is_empty());
    }

    #[test]
    fn repetition_guard() {
        assert_eq!(repeat_len(&[1, 2, 3, 4, 1, 2, 3, 4]), Some(4));
        assert_eq!(
            repeat_len(&[5, 1, 2, 1, 2, 1, 2]),
            Some(4),
            "keeps one copy"
        );
        assert_eq!(
            repeat_len(&[1, 2, 3, 1, 2, 3]),
            None,
            "a short echo is speech"
        );
        assert_eq!(repeat_len(&[1, 1]), None);
        assert_eq!(repeat_len(&[1, 2, 3, 4]), None);
    }
}
