//! The support bundle: one `.tar.gz` a technician takes away from a kiosk
//! (`GET /api/v1/support-bundle`, the page's button, `talkie support-bundle`
//! over SSH) with everything needed to diagnose it elsewhere.
//!
//! This module only writes archives; what goes in is chosen by the caller
//! (the status API for a running service, `talkie support-bundle` for a
//! stopped one). Every entry is capped at [`MAX_ENTRY`], and every secret
//! the caller names is replaced by `<redacted>` in every entry's bytes,
//! raw and JSON-escaped, before anything is written: a secret that slipped
//! into a log line or an error text still never leaves the board.

use serde::Serialize;
use std::io::Write;

/// The most bytes one entry keeps (a longer one is cut and says so).
pub const MAX_ENTRY: usize = 4 * 1024 * 1024;
/// What a scrubbed secret reads as.
const REDACTED: &[u8] = crate::base::config::REDACTED.as_bytes();
/// Secrets shorter than this are not searched for: a one-letter "token"
/// would blank every occurrence of that letter (validation already asks
/// for longer ones).
const MIN_SECRET: usize = 4;

/// Why an archive could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("cannot write the support bundle: {0}")]
    Archive(#[source] std::io::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Entries of a bundle, in the order they are added, and the secrets to
/// scrub from them.
#[derive(Default)]
pub struct Bundle {
    entries: Vec<(String, Vec<u8>)>,
    secrets: Vec<Vec<u8>>,
}

impl Bundle {
    pub fn new() -> Self {
        Self::default()
    }

    /// A value that must not appear in any entry.
    pub fn secret(&mut self, value: &str) {
        if value.len() < MIN_SECRET {
            return;
        }
        self.secrets.push(value.as_bytes().to_vec());
        // Inside JSON text the same secret is escaped.
        if let Ok(quoted) = serde_json::to_string(value) {
            let inner = quoted.trim_matches('"');
            if inner != value {
                self.secrets.push(inner.as_bytes().to_vec());
            }
        }
    }

    /// A file of the archive (cut at [`MAX_ENTRY`]).
    pub fn file(&mut self, name: &str, bytes: impl Into<Vec<u8>>) {
        let mut bytes = bytes.into();
        if bytes.len() > MAX_ENTRY {
            bytes.truncate(MAX_ENTRY);
            bytes.extend_from_slice(b"\n[cut at the support bundle's size limit]\n");
        }
        self.entries.push((name.to_owned(), bytes));
    }

    /// A pretty-printed JSON file.
    pub fn json(&mut self, name: &str, value: &impl Serialize) {
        let bytes = serde_json::to_vec_pretty(value)
            .unwrap_or_else(|e| format!("{{\"error\": \"cannot serialize: {e}\"}}").into_bytes());
        self.file(name, bytes);
    }

    /// The file names so far.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// The archive: `talkie-support/<name>` for every entry plus
    /// `MANIFEST.txt` (name and size of each), secrets scrubbed, gzip'd.
    /// `mtime` (Unix seconds) is every entry's modification time.
    pub fn finish(mut self, mtime: u64) -> Result<Vec<u8>, SupportError> {
        let mut manifest = String::from("talkie support bundle\n");
        manifest.push_str(&format!("talkie {}\n\n", crate::VERSION));
        for (name, bytes) in &mut self.entries {
            for secret in &self.secrets {
                scrub(bytes, secret);
            }
            manifest.push_str(&format!("{name}\t{} bytes\n", bytes.len()));
        }
        self.entries
            .insert(0, ("MANIFEST.txt".to_owned(), manifest.into_bytes()));
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(mtime);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(
                &mut header,
                format!("talkie-support/{name}"),
                bytes.as_slice(),
            )
            .map_err(SupportError::Archive)?;
        }
        let gz = tar.into_inner().map_err(SupportError::Archive)?;
        gz.finish().map_err(SupportError::Archive)
    }
}

/// Replace every occurrence of `secret` in `bytes` with `<redacted>`.
fn scrub(bytes: &mut Vec<u8>, secret: &[u8]) {
    if secret.is_empty() || bytes.len() < secret.len() {
        return;
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest: &[u8] = bytes;
    let mut changed = false;
    while !rest.is_empty() {
        if rest.starts_with(secret) {
            out.extend_from_slice(REDACTED);
            rest = rest.get(secret.len()..).unwrap_or_default();
            changed = true;
        } else if let Some((first, tail)) = rest.split_first() {
            out.push(*first);
            rest = tail;
        }
    }
    if changed {
        *bytes = out;
    }
}

/// A transcript's log line with its words taken out: in `key=value` form
/// (the log ring, the journal's plain lines) `text=… audio_ms=` becomes
/// `text=<omitted> audio_ms=` (the order the transcript line writes its
/// fields in); in JSON (`log.format = "json"`) the `"text"` string becomes
/// `"<omitted>"`. `None` when `line` carries no transcript text.
pub fn omit_transcript_text(line: &str) -> Option<String> {
    if !line.contains("transcript") {
        return None;
    }
    let cut = |start: usize, end: usize| {
        Some(format!(
            "{}<omitted>{}",
            line.get(..start)?,
            line.get(end..)?
        ))
    };
    if let Some(start) = line.find(" text=").map(|i| i + " text=".len()) {
        if let Some(len) = line.get(start..).and_then(|r| r.find(" audio_ms=")) {
            return cut(start, start + len);
        }
    }
    let start = line.find("\"text\":\"")? + "\"text\":\"".len();
    let mut escaped = false;
    let (len, _) = line.get(start..)?.char_indices().find(|&(_, c)| {
        let closes = !escaped && c == '"';
        escaped = !escaped && c == '\\';
        closes
    })?;
    cut(start, start + len)
}

/// Write `bytes` to `path` through `<path>.partial`, renamed into place,
/// so a half-written bundle is never left under the final name.
pub fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), SupportError> {
    let failed = |source| SupportError::Write {
        path: path.to_owned(),
        source,
    };
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let written = std::fs::File::create(&partial)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&partial, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        return Err(failed(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn unpack(gz: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        tar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                (name, bytes)
            })
            .collect()
    }

    #[test]
    fn secrets_are_scrubbed_raw_and_json_escaped_and_the_manifest_lists_every_file() {
        let mut b = Bundle::new();
        b.secret("s3cret-\"token\"");
        b.secret("abc"); // too short to search for
        b.file(
            "log.txt",
            "token=s3cret-\"token\" twice s3cret-\"token\" abc",
        );
        b.json(
            "status.json",
            &serde_json::json!({ "t": "s3cret-\"token\"" }),
        );
        let files = unpack(&b.finish(1_700_000_000).unwrap());
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "talkie-support/MANIFEST.txt",
                "talkie-support/log.txt",
                "talkie-support/status.json"
            ]
        );
        let all: Vec<u8> = files.iter().flat_map(|(_, b)| b.clone()).collect();
        let text = String::from_utf8(all).unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        assert_eq!(text.matches("<redacted>").count(), 3, "{text}");
        assert!(text.contains("abc"));
        assert!(text.contains("log.txt\t"), "{text}");
    }

    #[test]
    fn an_entry_past_the_limit_is_cut_and_says_so() {
        let mut b = Bundle::new();
        b.file("big", vec![b'x'; MAX_ENTRY + 10]);
        let files = unpack(&b.finish(0).unwrap());
        let (_, big) = &files[1];
        assert!(big.len() < MAX_ENTRY + 100);
        assert!(big.ends_with(b"[cut at the support bundle's size limit]\n"));
    }

    #[test]
    fn a_transcripts_words_are_omitted_and_other_lines_kept() {
        assert_eq!(
            omit_transcript_text("transcript id=3 text=hello there audio_ms=900 speech_ms=700")
                .as_deref(),
            Some("transcript id=3 text=<omitted> audio_ms=900 speech_ms=700")
        );
        assert_eq!(
            omit_transcript_text(
                r#"{"fields":{"message":"transcript","id":3,"text":"say \"hi\" now","audio_ms":9}}"#
            )
            .as_deref(),
            Some(r#"{"fields":{"message":"transcript","id":3,"text":"<omitted>","audio_ms":9}}"#)
        );
        assert_eq!(omit_transcript_text("ready listen=0.0.0.0:8080"), None);
        assert_eq!(omit_transcript_text("transcript id=3 text=cut"), None);
    }

    #[test]
    fn scrub_handles_overlaps_and_edges() {
        let mut v = b"aaaa".to_vec();
        scrub(&mut v, b"aa");
        assert_eq!(v, b"<redacted><redacted>");
        let mut v = b"xa".to_vec();
        scrub(&mut v, b"abc");
        assert_eq!(v, b"xa");
    }
}
