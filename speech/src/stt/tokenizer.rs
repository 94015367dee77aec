//! Decoding Whisper token ids to text with `tokenizer.json` (GPT-2
//! byte-level BPE: every token is a string of byte-mapped characters).

use crate::models::ModelError;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// Token id to raw bytes.
#[derive(Debug)]
pub struct Tokenizer {
    bytes: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct TokenizerJson {
    model: ModelJson,
}

#[derive(Deserialize)]
struct ModelJson {
    vocab: HashMap<String, u32>,
}

/// GPT-2's byte ↔ printable character table ([`super::bpe::byte_chars`]),
/// inverted.
fn byte_decoder() -> HashMap<char, u8> {
    super::bpe::byte_chars()
        .into_iter()
        .enumerate()
        .filter_map(|(b, c)| Some((c, u8::try_from(b).ok()?)))
        .collect()
}

impl Tokenizer {
    /// Load `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let failed = |reason: String| ModelError::Load {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
        let tj: TokenizerJson = serde_json::from_str(&text).map_err(|e| failed(e.to_string()))?;
        let decoder = byte_decoder();
        let size = tj
            .model
            .vocab
            .values()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        let mut bytes = vec![Vec::new(); size];
        for (token, id) in tj.model.vocab {
            bytes[id as usize] = token
                .chars()
                .filter_map(|c| decoder.get(&c).copied())
                .collect();
        }
        Ok(Self { bytes })
    }

    /// Text of the ids below `first_special`; others are skipped.
    pub fn decode(&self, ids: &[u32], first_special: u32) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .filter(|&&i| i < first_special)
            .filter_map(|&i| self.bytes.get(i as usize))
            .flatten()
            .copied()
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
