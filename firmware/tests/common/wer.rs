//! Word error rate with a simple normalizer, shared by the e2e test and the
//! STT benchmark.
//!
//! Lower case, hyphens and punctuation to spaces, then words. Whisper's
//! full English normalizer also maps spellings and numbers; this one counts
//! "4th" against "fourth" as an error, so it overstates the WER.
#![allow(unreachable_pub)] // `pub` for the test and bench crates that include it

/// The normalized words of `text`.
pub fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace('-', " ")
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Word-level Levenshtein distance.
pub fn edit_distance(a: &[String], b: &[String]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, x) in a.iter().enumerate() {
        let mut prev = row.clone();
        std::mem::swap(&mut prev, &mut row);
        row[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            row[j + 1] = (prev[j + 1] + 1)
                .min(row[j] + 1)
                .min(prev[j] + usize::from(x != y));
        }
    }
    row[b.len()]
}

/// (errors, reference words) of one pair.
pub fn errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = words(reference);
    (edit_distance(&r, &words(hypothesis)), r.len())
}

/// `(file, transcript)` of every clip in `dev/manifest.tsv`.
pub fn eval_references(dev: &std::path::Path) -> Vec<(String, String)> {
    std::fs::read_to_string(dev.join("manifest.tsv"))
        .unwrap_or_else(|e| panic!("{}: {e}", dev.join("manifest.tsv").display()))
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_owned(), f[4].to_owned())
        })
        .collect()
}
