//! Model files: where they are and whether they are the right ones.
//!
//! `models/manifest.toml` is compiled in; every model file is checked against
//! its sha256 before it is loaded, so a missing, truncated, corrupt or
//! mismatched model stops talkie with a clear error instead of misbehaving.

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The manifest the binary was built with.
pub const MANIFEST: &str = include_str!("../../models/manifest.toml");

/// File name of the VAD model inside a models directory.
pub const VAD_FILE: &str = "silero_vad.onnx";

/// Where an installed device keeps its models.
pub const SYSTEM_DIR: &str = "/usr/share/talkie/models";

/// Why a model cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {} is missing (run `make models` in a source checkout, or install the talkie-models package)", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read model file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("model file {} is corrupt or the wrong version: sha256 {actual}, expected {expected} (rebuild with `make models`)", path.display())]
    Mismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("model file {} is not listed in the manifest this talkie was built with", path.display())]
    Unknown { path: PathBuf },
    #[error("the embedded model manifest is invalid: {0}")]
    Manifest(String),
    #[error("cannot load model {}: {reason}", path.display())]
    Load { path: PathBuf, reason: String },
}

#[derive(Debug, Deserialize)]
struct Manifest {
    model: Vec<ModelEntry>,
}

/// One `[[model]]` of the manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelEntry {
    pub file: String,
    pub kind: String,
    pub sha256: String,
    pub license: String,
    #[serde(default)]
    pub precision: Option<String>,
}

/// The `[[model]]` entries of the embedded manifest.
pub fn entries() -> Result<Vec<ModelEntry>, ModelError> {
    toml::from_str::<Manifest>(MANIFEST)
        .map(|m| m.model)
        .map_err(|e| ModelError::Manifest(e.to_string()))
}

/// The manifest entries of the files `talkie run` loads from `dir`: the
/// VAD, Whisper's files in the forms `whisper` names (if it runs:
/// `[encoder's, decoder's]`, which may differ) and Moonshine's in the
/// forms `moonshine` names (if it runs), as JSON for the status page (file,
/// kind, precision, sha256). The files were verified when they were loaded.
pub fn in_use(
    dir: &Path,
    whisper: Option<[&str; 2]>,
    moonshine: Option<[&str; 2]>,
) -> serde_json::Value {
    let list: Vec<serde_json::Value> = entries()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            let forms = if e.kind.starts_with("moonshine-") {
                moonshine
            } else if e.kind.starts_with("stt-") {
                whisper
            } else {
                return true;
            };
            forms.is_some_and(|[encoder, decoder]| {
                e.precision.as_deref().is_none_or(|p| {
                    if e.kind.ends_with("-encoder") {
                        p == encoder
                    } else if e.kind.ends_with("-decoder") {
                        p == decoder
                    } else {
                        p == encoder || p == decoder
                    }
                })
            })
        })
        .filter(|e| dir.join(&e.file).exists())
        .map(|e| {
            serde_json::json!({
                "file": e.file,
                "kind": e.kind,
                "precision": e.precision,
                "sha256": e.sha256,
            })
        })
        .collect();
    serde_json::Value::Array(list)
}

/// Hex sha256 of a file.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let mut f = std::fs::File::open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::Missing {
                path: path.to_owned(),
            }
        } else {
            ModelError::Read {
                path: path.to_owned(),
                source,
            }
        }
    })?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|source| ModelError::Read {
            path: path.to_owned(),
            source,
        })?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Check `path` against the manifest entry of the same file name; returns
/// the entry.
pub fn verify(path: &Path) -> Result<ModelEntry, ModelError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let entry = entries()?
        .into_iter()
        .find(|e| e.file == name)
        .ok_or_else(|| ModelError::Unknown {
            path: path.to_owned(),
        })?;
    let actual = sha256_file(path)?;
    if actual != entry.sha256 {
        return Err(ModelError::Mismatch {
            path: path.to_owned(),
            expected: entry.sha256,
            actual,
        });
    }
    Ok(entry)
}

/// The models directory to use when none is given: `$TALKIE_MODELS_DIR`,
/// else `models/build` of the source checkout the binary was built in
/// (found by walking up from the executable), else [`SYSTEM_DIR`].
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TALKIE_MODELS_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1) {
            let candidate = dir.join("models/build");
            if candidate.join("manifest.toml").is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from(SYSTEM_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_parses_and_lists_the_vad() {
        let e = entries().unwrap();
        let vad = e.iter().find(|m| m.kind == "vad").unwrap();
        assert_eq!(vad.file, "silero_vad.onnx");
        assert_eq!(vad.sha256.len(), 64);
    }

    /// The page lists the VAD and the files of each model that runs, in
    /// its form, and only files present.
    #[test]
    fn files_in_use_follow_the_models_and_their_forms() {
        let dir = tempfile::tempdir().unwrap();
        for e in entries().unwrap() {
            if e.file != "whisper_config.json" {
                std::fs::write(dir.path().join(&e.file), b"x").unwrap();
            }
        }
        let files = |w, m| -> Vec<String> {
            let v = in_use(dir.path(), w, m);
            let mut f: Vec<String> = v
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["file"].as_str().unwrap().to_owned())
                .collect();
            f.sort();
            f
        };
        assert_eq!(
            files(Some(["int8"; 2]), None),
            [
                "silero_vad.onnx",
                "whisper_decoder_int8.onnx",
                "whisper_encoder_int8.onnx",
                "whisper_tokenizer.json",
                "whisper_vocab_int8.npy",
                "whisper_vocab_scale.npy",
            ]
        );
        assert_eq!(
            files(None, Some(["fp32"; 2])),
            [
                "moonshine_decoder.onnx",
                "moonshine_encoder_kv.onnx",
                "moonshine_tokenizer.bin",
                "moonshine_tokenizer.json",
                "moonshine_vocab_int8.npy",
                "moonshine_vocab_scale.npy",
                "silero_vad.onnx",
            ]
        );
        let both = files(Some(["fp32"; 2]), Some(["int8"; 2]));
        assert_eq!(both.len(), 12, "{both:?}");
        assert!(both.contains(&"moonshine_decoder_int8.onnx".to_owned()));
        assert!(both.contains(&"whisper_decoder.onnx".to_owned()));
        assert!(!both.contains(&"moonshine_decoder.onnx".to_owned()));
        assert_eq!(files(None, None), ["silero_vad.onnx"]);
        // Stages in different forms: each stage's own file.
        let mixed = ["fp32", "int8"];
        let split = files(Some(mixed), Some(mixed));
        assert_eq!(split.len(), 12, "{split:?}");
        for f in [
            "whisper_encoder.onnx",
            "whisper_decoder_int8.onnx",
            "moonshine_encoder_kv.onnx",
            "moonshine_decoder_int8.onnx",
        ] {
            assert!(split.contains(&f.to_owned()), "{f} in {split:?}");
        }
    }

    #[test]
    fn missing_unknown_and_corrupt_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("silero_vad.onnx");
        assert!(matches!(verify(&p), Err(ModelError::Missing { .. })));
        std::fs::write(&p, b"truncated").unwrap();
        let e = verify(&p).unwrap_err();
        assert!(matches!(e, ModelError::Mismatch { .. }));
        assert!(
            e.to_string().contains("corrupt or the wrong version"),
            "{e}"
        );
        let other = dir.path().join("other.onnx");
        std::fs::write(&other, b"x").unwrap();
        assert!(matches!(verify(&other), Err(ModelError::Unknown { .. })));
    }
}
