//! Two models, one text (issue 31): Whisper tiny.en and Moonshine base
//! both transcribe; if their normalized texts are equal that is the
//! answer, else each text is scored by both decoders (teacher-forced mean
//! token log-probability, end token included) and the text with the
//! higher sum wins; each decoder scores a text by its likelier casing
//! ([`scoring_forms`]). No tuned parameter. The two models err on different
//! utterances (synthetic voices trip Moonshine, noise trips tiny.en), so
//! the pair hears better than either.

use super::bpe::{Bpe, Kind};
use super::whisper::{Encoded, StepHook};
use super::{Moonshine, SttError, Transcript, Whisper};
use crate::models::ModelError;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Whisper's tokenizer, for encoding Moonshine's text.
pub const WHISPER_TOKENIZER: &str = "whisper_tokenizer.json";
/// Moonshine's tokenizer (with its merges), for encoding Whisper's text.
pub const MOONSHINE_TOKENIZER: &str = "moonshine_tokenizer.json";

/// Which text was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Winner {
    /// Both models gave the same normalized text.
    Agreed,
    WhisperTiny,
    MoonshineBase,
}

impl Winner {
    pub fn as_str(self) -> &'static str {
        match self {
            Winner::Agreed => "agreed",
            Winner::WhisperTiny => "whisper-tiny",
            Winner::MoonshineBase => "moonshine-base",
        }
    }
}

/// Each text's score under each decoder (mean log-probability per token).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Scores {
    /// Whisper's text, scored by Whisper and by Moonshine.
    pub whisper_text: [f32; 2],
    /// Moonshine's text, scored by Whisper and by Moonshine.
    pub moonshine_text: [f32; 2],
    /// Wall time of the scoring (both decoders, every form of both texts;
    /// each text in one decoder run).
    pub ms: f64,
}

impl Scores {
    /// The rule: the higher sum wins; a tie keeps Whisper's text.
    pub fn winner(&self) -> Winner {
        let w: f32 = self.whisper_text.iter().sum();
        let m: f32 = self.moonshine_text.iter().sum();
        if m > w {
            Winner::MoonshineBase
        } else {
            Winner::WhisperTiny
        }
    }
}

/// What agreement decided for one utterance.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Verdict {
    pub winner: Winner,
    pub whisper_text: String,
    pub moonshine_text: String,
    /// `None` when the texts agreed (nothing scored).
    pub scores: Option<Scores>,
}

/// Lowercase words of letters, digits and apostrophes: what must match for
/// two texts to agree (punctuation and case differ between the models).
pub fn normalize(text: &str) -> String {
    let kept: String = text
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c.to_lowercase().next().unwrap_or(c)
            } else {
                ' '
            }
        })
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The forms a text is scored in: as written (trimmed) and, if it begins
/// in lower case, with its first letter upper case. Case is not content
/// (the WER normaliser and [`normalize`] ignore it), yet it moves the
/// scores: Whisper often begins a question in lower case ("when does the
/// next bus…"), which Moonshine's decoder finds unlikely however right the
/// words are, while Whisper rates its own lower-case start above the
/// capitalized one. Each decoder scores a text by its likelier form.
pub fn scoring_forms(text: &str) -> Vec<String> {
    let t = text.trim();
    let mut chars = t.chars();
    let mut forms = vec![t.to_owned()];
    if let Some(first) = chars.next().filter(|c| c.is_lowercase()) {
        forms.push(first.to_uppercase().chain(chars).collect());
    }
    forms
}

/// The two tokenizers cross-scoring needs.
#[derive(Debug)]
pub struct Agreement {
    whisper: Bpe,
    moonshine: Bpe,
}

/// A step hook both models call (they may run on two threads).
pub fn shared_hook(hook: StepHook) -> (StepHook, StepHook) {
    let shared = Arc::new(Mutex::new(hook));
    let other = Arc::clone(&shared);
    let call = |h: &Arc<Mutex<StepHook>>| -> Result<(), &'static str> {
        match h.lock() {
            Ok(mut f) => f(),
            Err(_) => Err("step hook poisoned"),
        }
    };
    (
        Box::new(move || call(&shared)),
        Box::new(move || call(&other)),
    )
}

impl Agreement {
    /// Load both tokenizers from `dir` (verified against the manifest).
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        Ok(Self {
            whisper: Bpe::load(&dir.join(WHISPER_TOKENIZER), Kind::ByteLevel)?,
            moonshine: Bpe::load(&dir.join(MOONSHINE_TOKENIZER), Kind::SentencePiece)?,
        })
    }

    /// Whisper on `whisper_audio` and Moonshine on `moonshine_audio` (the
    /// same speech; Whisper's may start earlier: see
    /// [`super::recognizer::WHISPER_LEAD_SAMPLES`]), on two threads when
    /// `parallel`; the chosen text's transcript and the verdict.
    pub fn transcribe(
        &self,
        whisper: &mut Whisper,
        moonshine: &mut Moonshine,
        whisper_audio: &[f32],
        moonshine_audio: &[f32],
        parallel: bool,
    ) -> Result<(Transcript, Verdict), SttError> {
        let (w, m) = both(
            parallel,
            || whisper.transcribe_for_scoring(whisper_audio),
            || moonshine.transcribe_for_scoring(moonshine_audio),
        );
        let ((wt, we), (mt, me)) = (w?, m?);
        let mut verdict = Verdict {
            winner: Winner::Agreed,
            whisper_text: wt.text.clone(),
            moonshine_text: mt.text.clone(),
            scores: None,
        };
        if normalize(&wt.text) == normalize(&mt.text) {
            return Ok((wt, verdict));
        }
        let scores = self.score(
            whisper,
            moonshine,
            (&wt.text, &we),
            (&mt.text, &me),
            parallel,
        )?;
        verdict.winner = scores.winner();
        verdict.scores = Some(scores);
        Ok((
            if verdict.winner == Winner::MoonshineBase {
                mt
            } else {
                wt
            },
            verdict,
        ))
    }

    /// Each text under each decoder.
    fn score(
        &self,
        whisper: &mut Whisper,
        moonshine: &mut Moonshine,
        (w_text, w_enc): (&str, &Encoded),
        (m_text, m_enc): (&str, &Encoded),
        parallel: bool,
    ) -> Result<Scores, SttError> {
        let t0 = std::time::Instant::now();
        // Each text's likelier form under one decoder.
        fn best(
            text: &str,
            mut score: impl FnMut(&str) -> Result<f32, SttError>,
        ) -> Result<f32, SttError> {
            scoring_forms(text)
                .iter()
                .try_fold(f32::NEG_INFINITY, |b, f| Ok(b.max(score(f)?)))
        }
        let (by_whisper, by_moonshine) = both(
            parallel,
            || -> Result<[f32; 2], SttError> {
                let mut by = |t: &str| whisper.score(w_enc, &self.whisper.encode(&format!(" {t}")));
                Ok([best(w_text, &mut by)?, best(m_text, &mut by)?])
            },
            || -> Result<[f32; 2], SttError> {
                let mut by = |t: &str| moonshine.score(m_enc, &self.moonshine.encode(t));
                Ok([best(w_text, &mut by)?, best(m_text, &mut by)?])
            },
        );
        let (w, m) = (by_whisper?, by_moonshine?);
        Ok(Scores {
            whisper_text: [w[0], m[0]],
            moonshine_text: [w[1], m[1]],
            ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }
}

/// `a` and `b`, on two threads when `parallel` (tract runs each on its
/// calling thread), else one after the other.
pub(crate) fn both<A: Send, B: Send>(
    parallel: bool,
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    if !parallel {
        return (a(), b());
    }
    std::thread::scope(|s| {
        let hb = s.spawn(b);
        let ra = a();
        // A panic in `b` is a bug; surface it where it happened.
        let rb = hb.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (ra, rb)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_that_differ_only_in_case_and_punctuation_agree() {
        assert_eq!(
            normalize("Where's the exit?"),
            normalize("where's the exit")
        );
        assert_eq!(normalize("  Hello,   world! "), "hello world");
        assert_ne!(normalize("the exit"), normalize("the exits"));
    }

    /// A text is scored as written and, when it starts in lower case,
    /// capitalized too; nothing else about it changes.
    #[test]
    fn a_lower_case_start_is_also_scored_capitalized() {
        assert_eq!(
            scoring_forms(" when does it close? "),
            ["when does it close?", "When does it close?"]
        );
        assert_eq!(scoring_forms("Where's the exit"), ["Where's the exit"]);
        assert_eq!(
            scoring_forms("éclair please"),
            ["éclair please", "Éclair please"]
        );
        assert_eq!(scoring_forms("7:30 please"), ["7:30 please"]);
        assert_eq!(scoring_forms("  "), [""]);
    }

    /// The rule on fixed scores: the higher sum across both decoders wins,
    /// even against the text's own model's preference; a tie keeps Whisper.
    #[test]
    fn the_higher_sum_of_both_scores_wins() {
        let s = |w: [f32; 2], m: [f32; 2]| Scores {
            whisper_text: w,
            moonshine_text: m,
            ms: 0.0,
        };
        assert_eq!(
            s([-0.2, -1.5], [-0.4, -0.3]).winner(),
            Winner::MoonshineBase
        );
        assert_eq!(s([-0.2, -0.6], [-0.9, -0.1]).winner(), Winner::WhisperTiny);
        assert_eq!(s([-0.5, -0.5], [-0.5, -0.5]).winner(), Winner::WhisperTiny);
    }

    /// A model's own text costs no scoring pass: its greedy pass's sum is
    /// the teacher-forced score (both models, dev_13, where their texts
    /// differ), and the scoring tokenizers give each model's own text back
    /// as the tokens it decoded, so the reuse applies; a text starting as
    /// the pass did is scored from the pass's cache. Teacher forcing runs
    /// the decoder once per text (all its tokens at once, causally masked:
    /// one step hook call), not once per token, and gives the step-by-step
    /// pass's sums to float rounding (the same keys summed in another
    /// grouping).
    #[test]
    fn each_model_scores_from_its_greedy_pass_what_it_shares() {
        let (models, dev) = crate::stt::testdata::models_and_dev();
        let audio = crate::stt::testdata::read_clip(&dev.join("dev_13.wav"));
        let a = Agreement::load(&models).expect("make models");
        let mut w = Whisper::load(&models, "", 224, 100).expect("make models");
        let mut m = Moonshine::load(&models, crate::options::ModelPrecision::Int8, 224)
            .expect("make models");
        let (wt, we) = w.transcribe_for_scoring(&audio).unwrap();
        let (mt, me) = m.transcribe_for_scoring(&audio).unwrap();
        assert_ne!(normalize(&wt.text), normalize(&mt.text), "{wt:?} {mt:?}");
        let w_tokens = a.whisper.encode(&format!(" {}", wt.text));
        let m_tokens = a.moonshine.encode(&mt.text);
        let w_own = we.own_score(&w_tokens).expect("Whisper's own tokens");
        let m_own = me.own_score(&m_tokens).expect("Moonshine's own tokens");
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = |c: &std::sync::Arc<std::sync::atomic::AtomicUsize>| {
            let c = std::sync::Arc::clone(c);
            let hook: crate::stt::whisper::StepHook = Box::new(move || {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            });
            Some(hook)
        };
        let taken = || calls.swap(0, std::sync::atomic::Ordering::Relaxed);
        w.set_step_hook(counter(&calls));
        m.set_step_hook(counter(&calls));
        let w_forced = w.score(&Encoded::new(we.cross.clone()), &w_tokens).unwrap();
        assert_eq!(taken(), 1, "Whisper: {} tokens in one run", w_tokens.len());
        let m_forced = m.score(&Encoded::new(me.cross.clone()), &m_tokens).unwrap();
        assert_eq!(
            taken(),
            1,
            "Moonshine: {} tokens in one run",
            m_tokens.len()
        );
        assert!(w_tokens.len() > 5 && m_tokens.len() > 5);
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-3;
        assert!(close(w_own, w_forced), "{w_own} {w_forced}");
        assert!(close(m_own, m_forced), "{m_own} {m_forced}");
        // Another text (here: its first three words, then "please") is
        // teacher-forced from where it leaves the greedy pass, on the
        // pass's cache: the score from the first token.
        let other = |t: &str| {
            let words: Vec<&str> = t.split_whitespace().take(3).collect();
            format!("{} please", words.join(" "))
        };
        let w_other = a.whisper.encode(&format!(" {}", other(&wt.text)));
        let m_other = a.moonshine.encode(&other(&mt.text));
        assert!(we.own_score(&w_other).is_none());
        for (p, what) in [
            (we.shared_prefix(&w_other).map(|s| s.0), "Whisper"),
            (me.shared_prefix(&m_other).map(|s| s.0), "Moonshine"),
        ] {
            assert!(p.is_some_and(|p| p >= 2), "{what}: {p:?}");
        }
        let w_shared = w.score(&we, &w_other).unwrap();
        let w_full = w.score(&Encoded::new(we.cross.clone()), &w_other).unwrap();
        assert!(close(w_shared, w_full), "{w_shared} {w_full}");
        let m_shared = m.score(&me, &m_other).unwrap();
        let m_full = m.score(&Encoded::new(me.cross.clone()), &m_other).unwrap();
        assert!(close(m_shared, m_full), "{m_shared} {m_full}");
        assert_eq!(taken(), 4, "one run per text scored");
    }
}
