//! Text to token ids with a Hugging Face `tokenizer.json` BPE model: what
//! cross-scoring needs to put one model's text through the other model's
//! decoder (issue 31). Two kinds, the two models':
//!
//! - GPT-2 byte-level (Whisper): the text cut by GPT-2's pre-tokenizer
//!   pattern, each piece's bytes mapped to printable characters, merged;
//! - SentencePiece-style (Moonshine, LLaMA's layout): `▁` before the text
//!   and for every space, merged over the whole string, characters missing
//!   from the vocabulary as `<0xXX>` byte tokens.
//!
//! Merges are applied by rank, lowest first, every occurrence of the pair
//! at once (the original BPE algorithm, which Hugging Face's gives the same
//! result as). Checked against the `tokenizers` library's ids in the tests.

use crate::models::{self, ModelError};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// How the text becomes symbols before merging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GPT-2 byte-level: pre-tokenized, bytes as printable characters.
    ByteLevel,
    /// `▁` for spaces and before the text; byte fallback.
    SentencePiece,
}

/// A BPE tokenizer's merge table over token ids, and the ids the text's
/// characters start as. Held as ids rather than the JSON's strings: the
/// two tokenizers' 82,000 strings and 80,000 string pairs were 17 MB of
/// the service's heap (heaptrack of `talkie transcribe`, agreement), the
/// ids about 3 (issue 31's memory bound).
#[derive(Debug)]
pub struct Bpe {
    kind: Kind,
    /// (left, right) → (rank, the merged token): every merge whose parts
    /// and result are in the vocabulary (as the `tokenizers` library
    /// requires of a model).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Tokens of one character.
    chars: HashMap<char, u32>,
    /// Byte-level: each byte's printable character's token; SentencePiece:
    /// the `<0xXX>` byte-fallback tokens.
    bytes: Vec<Option<u32>>,
}

#[derive(Deserialize)]
struct TokenizerJson {
    model: ModelJson,
    #[serde(default)]
    pre_tokenizer: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Merge {
    Joined(String),
    Pair(String, String),
}

#[derive(Deserialize)]
struct ModelJson {
    vocab: HashMap<String, u32>,
    merges: Vec<Merge>,
}

/// GPT-2's byte → printable character table.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(u32::from('¡')..=u32::from('¬'))
        .chain(u32::from('®')..=u32::from('ÿ'))
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec!['\0'; 256];
    for (&b, &c) in bs.iter().zip(&cs) {
        if let (Some(slot), Some(ch)) = (table.get_mut(b as usize), char::from_u32(c)) {
            *slot = ch;
        }
    }
    table
}

/// The length in bytes of the GPT-2 pre-token starting at `s` (non-empty):
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
fn pretoken_len(s: &str) -> usize {
    for c in ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"] {
        if s.starts_with(c) {
            return c.len();
        }
    }
    let class = |c: char| {
        if c.is_alphabetic() {
            1
        } else if c.is_numeric() {
            2
        } else if c.is_whitespace() {
            0
        } else {
            3
        }
    };
    let mut chars = s.char_indices().peekable();
    let Some((_, first)) = chars.next() else {
        return 0;
    };
    // ` ?X+` for the three classes: an optional space, then one class.
    let (start_class, mut end) = if first == ' ' {
        match chars.peek() {
            Some(&(i, c)) if class(c) != 0 => (class(c), i),
            _ => (0, first.len_utf8()),
        }
    } else {
        (class(first), 0)
    };
    if start_class != 0 {
        let from = end;
        for (i, c) in s.char_indices().skip_while(|&(i, _)| i < from) {
            if class(c) != start_class {
                return i;
            }
            end = i + c.len_utf8();
        }
        return end;
    }
    // Whitespace: the run, minus its last character if a non-space follows
    // (that one goes with the next word), but never empty.
    let mut run_end = 0;
    let mut last_len = 0;
    for (i, c) in s.char_indices() {
        if !c.is_whitespace() {
            return if run_end - last_len > 0 {
                run_end - last_len
            } else {
                run_end
            };
        }
        run_end = i + c.len_utf8();
        last_len = c.len_utf8();
    }
    run_end
}

impl Bpe {
    /// Parse a `tokenizer.json` of [`Kind`] `kind`.
    pub fn from_json(text: &str, kind: Kind) -> Result<Self, String> {
        let tj: TokenizerJson = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let byte_level = tj
            .pre_tokenizer
            .as_ref()
            .is_some_and(|p| p["type"] == "ByteLevel");
        if byte_level != (kind == Kind::ByteLevel) {
            return Err(format!("not a {kind:?} tokenizer"));
        }
        let vocab = tj.model.vocab;
        let mut merges = HashMap::with_capacity(tj.model.merges.len());
        let mut joined = String::new();
        for (rank, m) in tj.model.merges.into_iter().enumerate() {
            let (a, b) = match &m {
                Merge::Pair(a, b) => (a.as_str(), b.as_str()),
                Merge::Joined(s) => match s.split_once(' ') {
                    Some(pair) => pair,
                    None => return Err(format!("merge {rank} is not a pair: {s:?}")),
                },
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            if let (Some(&l), Some(&r), Some(&to)) =
                (vocab.get(a), vocab.get(b), vocab.get(joined.as_str()))
            {
                merges.insert((l, r), (rank as u32, to));
            }
        }
        let chars = vocab
            .iter()
            .filter_map(|(s, &id)| {
                let mut cs = s.chars();
                match (cs.next(), cs.next()) {
                    (Some(c), None) => Some((c, id)),
                    _ => None,
                }
            })
            .collect();
        let bytes = match kind {
            Kind::ByteLevel => byte_chars()
                .iter()
                .map(|c| vocab.get(c.to_string().as_str()).copied())
                .collect(),
            Kind::SentencePiece => (0..=255u8)
                .map(|b| vocab.get(format!("<0x{b:02X}>").as_str()).copied())
                .collect(),
        };
        Ok(Self {
            kind,
            merges,
            chars,
            bytes,
        })
    }

    /// Load and verify (manifest sha256) a `tokenizer.json`.
    pub fn load(path: &Path, kind: Kind) -> Result<Self, ModelError> {
        models::verify(path)?;
        let failed = |reason: String| ModelError::Load {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
        Self::from_json(&text, kind).map_err(failed)
    }

    /// Merge `symbols` by rank, lowest first, every occurrence of the
    /// lowest-ranked pair in one pass.
    fn merge(&self, mut symbols: Vec<u32>) -> Vec<u32> {
        let mut out = Vec::with_capacity(symbols.len());
        while symbols.len() > 1 {
            let best = symbols
                .windows(2)
                .filter_map(|w| match w {
                    [a, b] => self.merges.get(&(*a, *b)).map(|&(rank, _)| rank),
                    _ => None,
                })
                .min();
            let Some(rank) = best else { break };
            out.clear();
            let mut i = 0;
            while let Some(&a) = symbols.get(i) {
                if let Some(&b) = symbols.get(i + 1) {
                    if let Some(&(r, to)) = self.merges.get(&(a, b)) {
                        if r == rank {
                            out.push(to);
                            i += 2;
                            continue;
                        }
                    }
                }
                out.push(a);
                i += 1;
            }
            std::mem::swap(&mut symbols, &mut out);
        }
        symbols
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let byte = |b: u8| self.bytes.get(usize::from(b)).copied().flatten();
        let mut ids = Vec::new();
        match self.kind {
            Kind::ByteLevel => {
                let mut rest = text;
                while !rest.is_empty() {
                    let n = pretoken_len(rest).clamp(1, rest.len());
                    let (piece, tail) = rest.split_at(n);
                    ids.extend(self.merge(piece.bytes().filter_map(byte).collect()));
                    rest = tail;
                }
            }
            Kind::SentencePiece => {
                let normalized = format!("\u{2581}{}", text.replace(' ', "\u{2581}"));
                let mut symbols = Vec::new();
                for c in normalized.chars() {
                    if let Some(&id) = self.chars.get(&c) {
                        symbols.push(id);
                    } else {
                        let mut buf = [0u8; 4];
                        symbols.extend(c.encode_utf8(&mut buf).bytes().filter_map(byte));
                    }
                }
                ids.extend(self.merge(symbols));
            }
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/build")
    }

    /// Ids from the `tokenizers` library (0.23.3) for the same strings.
    #[test]
    fn ids_match_the_tokenizers_library() {
        let w = Bpe::load(&models().join("whisper_tokenizer.json"), Kind::ByteLevel).unwrap();
        let m = Bpe::load(
            &models().join("moonshine_tokenizer.json"),
            Kind::SentencePiece,
        )
        .unwrap();
        let cases: [(&str, &[u32], &[u32]); 4] = [
            (
                "Where is the nearest restroom?",
                &[6350, 318, 262, 16936, 40018, 30],
                &[6804, 338, 278, 20471, 1791, 8345, 29973],
            ),
            (
                "It's 10:30, OK?  Yes.",
                &[632, 338, 838, 25, 1270, 11, 7477, 30, 220, 3363, 13],
                &[
                    739, 29915, 29879, 29871, 29896, 29900, 29901, 29941, 29900, 29892, 9280,
                    29973, 29871, 3869, 29889,
                ],
            ),
            (
                "Café naïve — “quoted” 42nd",
                &[42151, 41492, 851, 564, 250, 421, 5191, 447, 251, 5433, 358],
                &[
                    315, 28059, 1055, 30085, 345, 813, 1346, 339, 5715, 30024, 29871, 29946, 29906,
                    299,
                ],
            ),
            (
                "Can you show me the way to the main entrance?",
                &[1680, 345, 905, 502, 262, 835, 284, 262, 1388, 10384, 30],
                &[1815, 366, 1510, 592, 278, 982, 304, 278, 1667, 19546, 29973],
            ),
        ];
        for (text, whisper, moonshine) in cases {
            assert_eq!(w.encode(&format!(" {text}")), whisper, "whisper {text:?}");
            assert_eq!(m.encode(text), moonshine, "moonshine {text:?}");
        }
        assert!(Bpe::load(
            &models().join("whisper_tokenizer.json"),
            Kind::SentencePiece
        )
        .is_err());
    }

    #[test]
    fn gpt2_pretokens() {
        fn cut(s: &str) -> Vec<&str> {
            let mut out = Vec::new();
            let mut rest = s;
            while !rest.is_empty() {
                let n = pretoken_len(rest).clamp(1, rest.len());
                out.push(&rest[..n]);
                rest = &rest[n..];
            }
            out
        }
        assert_eq!(
            cut(" It's 10:30, ok?  Yes\n"),
            [" It", "'s", " 10", ":", "30", ",", " ok", "?", " ", " Yes", "\n"]
        );
        assert_eq!(cut("a  b"), ["a", " ", " b"]);
        assert_eq!(cut("x   "), ["x", "   "]);
    }
}
