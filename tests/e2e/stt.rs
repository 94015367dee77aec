//! Silero VAD and Whisper: `talkie vad`, `talkie transcribe`, precision calibration, `talkie bench`.

use crate::support::*;
use std::path::{Path, PathBuf};

/// Share of 10 ms frames inside `truth` also inside `hyp`, and share of
/// frames outside `truth` inside `hyp`.
fn frame_agreement(truth: &[(f64, f64)], hyp: &[(f64, f64)], total_s: f64) -> (f64, f64) {
    let inside = |segs: &[(f64, f64)], t: f64| segs.iter().any(|&(a, b)| a <= t && t < b);
    let (mut speech, mut hit, mut other, mut false_alarm) = (0u32, 0u32, 0u32, 0u32);
    for i in 0..(total_s * 100.0) as u32 {
        let t = f64::from(i) / 100.0;
        if inside(truth, t) {
            speech += 1;
            hit += u32::from(inside(hyp, t));
        } else {
            other += 1;
            false_alarm += u32::from(inside(hyp, t));
        }
    }
    (
        f64::from(hit) / f64::from(speech),
        f64::from(false_alarm) / f64::from(other),
    )
}

#[test]
fn vad_finds_the_utterances_of_dev_long() {
    let eval = eval_dir().join("dev");
    let truth: Vec<(f64, f64)> = std::fs::read_to_string(eval.join("dev_long_segments.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let mut f = l.split('\t');
            (
                f.next().unwrap().parse().unwrap(),
                f.next().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let out = run(vad_json().arg(eval.join("dev_long.wav")));
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let hyp: Vec<(f64, f64)> = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s[0].as_f64().unwrap(), s[1].as_f64().unwrap()))
        .collect();
    let (detected, false_alarm) = frame_agreement(&truth, &hyp, v["audio_s"].as_f64().unwrap());
    eprintln!(
        "VAD on dev_long.wav: {} segments (truth {}), {:.1} % of speech frames detected, {:.1} % of non-speech frames marked",
        hyp.len(),
        truth.len(),
        detected * 100.0,
        false_alarm * 100.0
    );
    assert_eq!(hyp.len(), truth.len());
    assert!(detected >= 0.95, "{detected}");
    assert!(false_alarm <= 0.05, "{false_alarm}");
}

#[test]
fn vad_on_silence_and_tiny_clips_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |rate| hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let write_wav = |name: &str, rate: u32, n: usize| {
        let p = dir.path().join(name);
        let mut w = hound::WavWriter::create(&p, spec(rate)).unwrap();
        for _ in 0..n {
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();
        p
    };
    let silence = write_wav("silence.wav", 96_000, 96_000 * 3);
    let tiny = write_wav("tiny.wav", 8_000, 80);
    let empty = write_wav("empty.wav", 16_000, 0);
    let out = run(vad_json().args([&silence, &tiny, &empty]));
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["segments"].as_array().unwrap().len(), 0, "{l}");
    }
    assert!((lines[0]["audio_s"].as_f64().unwrap() - 3.0).abs() < 1e-3);
}

#[test]
fn corrupt_or_missing_models_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wav = eval_dir().join("dev/dev_00.wav");
    let out = run(talkie()
        .args(["--config", "/nonexistent/talkie.toml", "vad", "--models"])
        .arg(dir.path())
        .arg(&wav));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("silero_vad.onnx is missing (run `make models`"));
    let good = std::fs::read(models_dir().join("silero_vad.onnx")).unwrap();
    std::fs::write(dir.path().join("silero_vad.onnx"), &good[..good.len() / 2]).unwrap();
    let out = run(talkie()
        .args(["--config", "/nonexistent/talkie.toml", "vad", "--models"])
        .arg(dir.path())
        .arg(&wav));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is corrupt or the wrong version: sha256"));
}

/// `talkie transcribe --json` of `files` with `--set` overrides: one JSON
/// object per file.
fn transcribe_json(sets: &[&str], models: &Path, files: &[PathBuf]) -> Vec<serde_json::Value> {
    let mut cmd = talkie();
    cmd.args([
        "--config",
        "/nonexistent/talkie.toml",
        "transcribe",
        "--json",
    ]);
    for set in sets {
        cmd.args(["--set", set]);
    }
    let out = run(cmd.arg("--models").arg(models).args(files));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Word errors and reference words over (reference, result) pairs.
fn set_errors(refs: &[(String, String)], results: &[serde_json::Value]) -> (usize, usize) {
    refs.iter()
        .zip(results)
        .map(|((_, reference), r)| wer::errors(reference, r["text"].as_str().unwrap()))
        .fold((0, 0), |(e, n), (e1, n1)| (e + e1, n + n1))
}

#[test]
fn transcribe_dev_set_word_error_rate_and_exact_transcripts() {
    let eval = eval_dir().join("dev");
    let refs = wer::eval_references(&eval);
    let files: Vec<PathBuf> = refs.iter().map(|(f, _)| eval.join(f)).collect();
    let results = transcribe_json(&[], &models_dir(), &files);
    assert_eq!(results.len(), refs.len());
    for ((file, reference), r) in refs.iter().zip(&results) {
        assert!(
            r["encoder_ms"].as_f64().unwrap() > 0.0 && r["tokens"].as_u64().unwrap() > 0,
            "{file}: {r}"
        );
        eprintln!("{file}: {:?} (ref {reference:?})", r["text"]);
    }
    let (errors, total) = set_errors(&refs, &results);
    let wer = errors as f64 / total as f64;
    eprintln!(
        "WER {:.1} % over {total} words ({} files)",
        wer * 100.0,
        refs.len()
    );
    assert!(wer <= 0.10, "WER {:.1} %", wer * 100.0);
    for (i, expected) in [
        "Where is the nearest restroom?",
        "What time does the museum close today?",
        "Can you show me the way to the main entrance?",
        "How much is a ticket for two adults and one child?",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(results[i]["text"], *expected);
    }
}

/// `stt.precision = "auto"`: the first start measures and stores the
/// choice, the next reuses it, a broken file is measured again and
/// rewritten; the text does not depend on any of it.
#[test]
fn auto_precision_is_measured_once_then_reused_and_a_broken_cache_rewritten() {
    // Calibration is what this test checks: a precision or thread count
    // forced for the rest of the run (`TALKIE_STT__PRECISION=int8 make
    // test`) is not passed to these runs.
    let dir = tempfile::tempdir().unwrap();
    let cal = dir.path().join("state/calibration.json");
    let clip = eval_dir().join("dev/dev_00.wav");
    let transcribe = || {
        let out = run(talkie()
            .env_remove("TALKIE_STT__PRECISION")
            .env_remove("TALKIE_STT__THREADS")
            .args(["--log-format", "json", "--set"])
            .arg(format!("stt.calibration_file={}", cal.display()))
            .args(["transcribe", "--json", "--models"])
            .arg(models_dir())
            .arg(&clip));
        assert_eq!(out.status.code(), Some(0));
        let r: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
        let log = json_lines(&out.stderr);
        let line = log
            .iter()
            .find(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("calibration"))
            })
            .cloned()
            .expect("a calibration log line");
        (r["text"].as_str().unwrap().to_owned(), line)
    };
    let (text1, first) = transcribe();
    assert_eq!(first["message"], "calibration measured");
    let timings = first["timings"].as_str().unwrap();
    assert!(
        timings.contains("fp32/") && timings.contains("int8/"),
        "{first}"
    );
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cal).unwrap()).unwrap();
    assert_eq!(stored["chosen"]["precision"], first["precision"]);
    assert_eq!(stored["key"]["cpu_model"], first["cpu"]);

    let (text2, second) = transcribe();
    assert_eq!(second["message"], "calibration reused");
    assert_eq!(second["precision"], first["precision"]);
    assert_eq!(text2, text1);

    std::fs::write(&cal, b"{ not json").unwrap();
    let (text3, third) = transcribe();
    assert_eq!(
        third["message"], "calibration measured",
        "a broken file is ignored"
    );
    assert_eq!(text3, text1);
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cal).unwrap()).unwrap();
    assert!(again["chosen"]["threads"].as_u64().unwrap() >= 1);

    // An explicit precision skips calibration.
    let out = run(talkie()
        .args([
            "--log-format",
            "json",
            "--set",
            "stt.precision=fp32",
            "--set",
            "stt.threads=1",
        ])
        .args(["transcribe", "--json", "--models"])
        .arg(models_dir())
        .arg(&clip));
    assert!(json_lines(&out.stderr).iter().any(|l| l["message"]
        == "recognition settings fixed by configuration"
        && l["precision"] == "fp32"));
}

/// `talkie bench --json --quick`: every field a board report needs, the
/// tiers and the one `auto` picks included.
#[test]
fn bench_reports_every_precision_thread_count_and_tier_as_json() {
    let out = run(talkie()
        .args(["bench", "--json", "--quick", "--models"])
        .arg(models_dir())
        .arg(eval_dir().join("dev/dev_05.wav")));
    assert_eq!(out.status.code(), Some(0));
    let b: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert!(!b["cpu"]["model"].as_str().unwrap().is_empty());
    assert!(b["cpu"]["features"].is_array() && b["cpu"]["cores"].as_u64().unwrap() >= 1);
    assert!(b["tract"].as_str().unwrap().starts_with("0."), "{b}");
    let rows = b["rows"].as_array().unwrap();
    let precisions: std::collections::HashSet<&str> = rows
        .iter()
        .map(|r| r["precision"].as_str().unwrap())
        .collect();
    assert_eq!(precisions, ["fp32", "int8"].into_iter().collect());
    for r in rows {
        for k in [
            "calibration_encoder_ms",
            "calibration_decoder_ms",
            "calibration_total_ms",
            "load_ms",
        ] {
            assert!(r[k].as_f64().unwrap() > 0.0, "{k} in {r}");
        }
        assert!(r["peak_rss_mb"].as_f64().unwrap() > 10.0, "{r}");
        let f = &r["files"];
        assert_eq!(f["count"], 1);
        assert!(f["real_time_factor"].as_f64().unwrap() > 0.0);
        assert!(!f["texts"][0].as_str().unwrap().is_empty(), "{r}");
    }
    assert!(["fp32", "int8"].contains(&b["auto"]["precision"].as_str().unwrap()));
    let (enc, dec) = (&b["auto"]["threads"], &b["auto"]["decoder_threads"]);
    assert!(
        enc.as_u64().unwrap() >= 1 && dec.as_u64().unwrap() >= 1,
        "{b}"
    );
    assert!(
        text(&out.stderr).contains("[1/"),
        "a progress line per step"
    );
    // The tiers as the service loads them, and what `auto` picks.
    let tiers = b["tiers"].as_array().unwrap();
    let names: Vec<&str> = tiers.iter().map(|t| t["model"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["whisper-tiny", "moonshine-base", "agreement"],
        "{b}"
    );
    for t in tiers {
        assert!(t["utterance_ms"].as_f64().unwrap() > 0.0, "{t}");
        assert!(t["peak_rss_mb"].as_f64().unwrap() > 10.0, "{t}");
        assert_eq!(t["files"]["count"], 1, "{t}");
        assert!(!t["files"]["texts"][0].as_str().unwrap().is_empty(), "{t}");
    }
    assert!(tiers[2]["forms"].as_str().unwrap().contains("moonshine"));
    let auto = b["auto_tier"]["model"].as_str().unwrap();
    assert!(["whisper-tiny", "agreement"].contains(&auto), "{b}");
    assert!(b["auto_tier"]["reason"]
        .as_str()
        .unwrap()
        .starts_with(&format!("stt.model = \"auto\": {auto}")));
    assert!(text(&out.stderr).contains("[tier 3/3] agreement"));
}

#[test]
fn fp32_models_transcribe_too() {
    let eval = eval_dir().join("dev");
    let refs: Vec<(String, String)> = wer::eval_references(&eval).into_iter().take(5).collect();
    let files: Vec<PathBuf> = refs.iter().map(|(f, _)| eval.join(f)).collect();
    let results = transcribe_json(&["stt.precision=fp32"], &models_dir(), &files);
    assert_eq!(results.len(), refs.len());
    let (errors, total) = set_errors(&refs, &results);
    assert!(total > 30, "{total} words");
    assert!(
        errors as f64 / total as f64 <= 0.10,
        "{errors} errors in {total} words"
    );
    // The int8 files are checked against the manifest like the fp32 ones,
    // and so is the vocabulary matrix (outside the decoder graph).
    let dir = tempfile::tempdir().unwrap();
    let refused = |bad: &str, content: &[u8]| {
        for f in [
            "silero_vad.onnx",
            "whisper_encoder_int8.onnx",
            "whisper_decoder_int8.onnx",
            "whisper_tokenizer.json",
            "whisper_vocab_int8.npy",
            "whisper_vocab_scale.npy",
            "whisper_config.json",
        ] {
            std::fs::copy(models_dir().join(f), dir.path().join(f)).unwrap();
        }
        std::fs::write(dir.path().join(bad), content).unwrap();
        let out = run(talkie()
            .args(["--config", "/nonexistent/talkie.toml", "transcribe"])
            .args(["--set", "stt.precision=int8", "--models"])
            .arg(dir.path())
            .arg(&files[0]));
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(stderr.contains(&format!("{bad} is corrupt")), "{stderr}");
    };
    refused("whisper_decoder_int8.onnx", b"not a model");
    let vocab = std::fs::read(models_dir().join("whisper_vocab_int8.npy")).unwrap();
    refused("whisper_vocab_int8.npy", &vocab[..vocab.len() - 1]);
}

#[test]
fn transcribe_silence_invents_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("silence.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(&p, spec).unwrap();
    for i in 0..44_100 * 2 {
        // Silence with a few NaN and infinite samples mixed in.
        w.write_sample(match i % 10_000 {
            0 => f32::NAN,
            1 => f32::INFINITY,
            _ => 0.0,
        })
        .unwrap();
    }
    w.finalize().unwrap();
    let out = run(talkie()
        .args([
            "--config",
            "/nonexistent/talkie.toml",
            "transcribe",
            "--json",
            "--models",
        ])
        .arg(models_dir())
        .arg(&p));
    assert_eq!(out.status.code(), Some(0));
    let r: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(r["text"], "");
    assert_eq!(r["speech_s"], 0.0);
    let not_wav = dir.path().join("notes.wav");
    std::fs::write(&not_wav, "not audio").unwrap();
    let out = run(talkie()
        .args([
            "--config",
            "/nonexistent/talkie.toml",
            "transcribe",
            "--models",
        ])
        .arg(models_dir())
        .arg(&not_wav));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("notes.wav"));
}
