//! Push-to-talk benchmark: the real `talkie run` (release) on sessions of
//! all 31 clips of `../shared/eval/dev` (1.5 s apart, real time, on the
//! simulation clock) with a button script pressing 300 ms before each clip
//! and releasing a *hold* after the clip's speech ends (by the VAD):
//! 100, 200, 300, 500 and 800 ms, each with speculative recognition on and
//! off (issue 19), plus a *resumed speech* set: two dev clips joined by a
//! 400 ms pause inside one press, released 300 ms after the second phrase.
//! Reports release → transcript (median, p95, mean), the speculative hit
//! rate and the session WER (simple normalizer) per run, and press → LED
//! from every press. `TALKIE_BENCH_HOLDS=300,800` runs fewer holds;
//! `TALKIE_BENCH_STT_MODEL=agreement` (any `stt.model`) another recognizer
//! tier than the configuration's default.
//! Writes `target/bench/ptt.md` and `target/bench/ptt.json`.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/wer.rs"]
mod wer;

use common::{machine, mean, percentile, write_report};
use std::path::{Path, PathBuf};
use std::process::Command;

/// faster-whisper 1.2.1, tiny.en int8, 1 thread, on the build machine, per
/// `shared/eval/README.md`: used only when `make bench` did not measure it
/// (`target/bench/faster_whisper.json`, per clip, same hour).
const FASTER_WHISPER_MEAN_MS: f64 = 500.0;

/// faster-whisper's milliseconds per clip ≤ 5 s, measured by `make bench`.
fn faster_whisper_short_mean(root: &Path) -> Option<(f64, usize)> {
    let t = std::fs::read_to_string(root.join("target/bench/faster_whisper.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&t).ok()?;
    let ms: Vec<f64> = v["files"]
        .as_array()?
        .iter()
        .filter(|f| f["audio_s"].as_f64().unwrap_or(f64::MAX) <= 5.0)
        .filter_map(|f| f["seconds"].as_f64().map(|s| s * 1000.0))
        .collect();
    (!ms.is_empty()).then(|| (mean(&ms), ms.len()))
}

/// One session's outcome.
struct Session {
    release_to_text: Vec<f64>,
    /// `speculative` of each transcript.
    how: Vec<String>,
    press_to_led: Vec<f64>,
    texts: Vec<String>,
}

fn num(v: &serde_json::Value) -> f64 {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Where speech ends in each clip, ms from its start (VAD: last segment's
/// end less its 100 ms padding; a segment cut by the clip's end counts
/// as ending 50 ms before it).
fn speech_ends_ms(talkie: &str, models: &Path, clips: &[PathBuf]) -> Vec<u64> {
    let out = Command::new(talkie)
        .args([
            "--config",
            "/nonexistent/talkie.toml",
            "vad",
            "--json",
            "--models",
        ])
        .arg(models)
        .args(clips)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let audio = v["audio_s"].as_f64().unwrap();
            let end = v["segments"]
                .as_array()
                .and_then(|s| s.last())
                .map_or(audio, |s| s[1].as_f64().unwrap());
            let speech_end = if end >= audio - 1e-3 {
                audio - 0.05
            } else {
                end - 0.1
            };
            (speech_end.max(0.0) * 1000.0) as u64
        })
        .collect()
}

/// The holds to run: `TALKIE_BENCH_HOLDS` (comma-separated ms), else all.
fn holds() -> Vec<u64> {
    std::env::var("TALKIE_BENCH_HOLDS")
        .ok()
        .map(|v| v.split(',').filter_map(|h| h.trim().parse().ok()).collect())
        .filter(|v: &Vec<u64>| !v.is_empty())
        .unwrap_or_else(|| vec![100, 200, 300, 500, 800])
}

/// Play `dir/session.wav` with a script releasing `hold_ms` after each
/// clip's speech end (`ends`: ms from each clip's start).
fn play(
    talkie: &str,
    dir: &Path,
    models: &Path,
    ends: &[u64],
    hold_ms: u64,
    speculative: bool,
    stt_model: Option<&str>,
) -> Session {
    let tsv = std::fs::read_to_string(dir.join("clips.tsv")).unwrap();
    let mut script = String::new();
    for (line, end) in tsv.lines().skip(1).zip(ends) {
        let f: Vec<u64> = line
            .split('\t')
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        let (start, press) = (f[0], f[2]);
        script.push_str(&format!(
            "[[event]]\nat_ms = {press}\naction = \"press\"\n[[event]]\nat_ms = {}\naction = \"release\"\n",
            start + end + hold_ms
        ));
    }
    let script_path = dir.join(format!("buttons-{hold_ms}-{speculative}.toml"));
    std::fs::write(&script_path, script).unwrap();
    let cfg = dir.join("talkie.toml");
    std::fs::write(
        &cfg,
        format!(
            "[audio]\nbackend = \"file\"\nfile = {:?}\nsim_clock = true\n[gpio]\nbackend = \"script\"\nscript = {script_path:?}\n\
             [ptt]\nspeculative = {speculative}\n\
             [stt]\nmodel_dir = {models:?}\ncalibration_file = {:?}\n{}[status]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("session.wav"),
            dir.join("calibration.json"),
            stt_model.map_or_else(String::new, |m| format!("model = {m:?}\n")),
        ),
    )
    .unwrap();
    eprintln!(
        "ptt bench: {} presses, hold {hold_ms} ms, speculation {}…",
        ends.len(),
        if speculative { "on" } else { "off" }
    );
    let out = Command::new(talkie)
        .env("RUST_LOG", "info,talkie::ptt::indicator=debug")
        .arg("--config")
        .arg(&cfg)
        .args(["--log-format", "json", "run", "--until-script-done"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let transcripts: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["target"] == "talkie::transcript")
        .collect();
    assert_eq!(transcripts.len(), ends.len(), "one transcript per press");
    Session {
        release_to_text: transcripts
            .iter()
            .map(|t| num(&t["release_to_text_ms"]))
            .collect(),
        how: transcripts
            .iter()
            .map(|t| t["speculative"].as_str().unwrap_or("?").to_owned())
            .collect(),
        press_to_led: lines
            .iter()
            .filter(|l| l["message"] == "press shown")
            .map(|l| num(&l["press_to_led_ms"]))
            .collect(),
        texts: transcripts
            .iter()
            .map(|t| t["text"].as_str().unwrap_or("").to_owned())
            .collect(),
    }
}

/// A simulated session (`talkie::scenario`) in `dir` from `clips`, 1.5 s apart.
fn scenario(dir: &Path, clips: &[PathBuf]) {
    talkie_devtools::scenario::build(&talkie_devtools::scenario::ScenarioArgs {
        gap_ms: 1500,
        ..talkie_devtools::scenario::ScenarioArgs::new(dir, clips.to_vec())
    })
    .unwrap();
}

/// Two clips joined by `pause_ms` of digital silence, as one 16 kHz WAV.
fn join(a: &Path, b: &Path, pause_ms: u32, out: &Path) {
    let read = |p: &Path| -> (Vec<i16>, hound::WavSpec) {
        let r = hound::WavReader::open(p).unwrap();
        let spec = r.spec();
        (r.into_samples::<i16>().map(Result::unwrap).collect(), spec)
    };
    let (mut x, spec) = read(a);
    let (y, _) = read(b);
    x.resize(x.len() + pause_ms as usize * 16, 0);
    x.extend(y);
    let mut w = hound::WavWriter::create(out, spec).unwrap();
    for s in x {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

fn median(v: &[f64]) -> f64 {
    percentile(v, 50.0)
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dev = std::env::var_os("TALKIE_EVAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/eval"))
        .join("dev");
    let refs = wer::eval_references(&dev);
    let durations: Vec<f64> = std::fs::read_to_string(dev.join("manifest.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(1).unwrap().parse().unwrap())
        .collect();
    let talkie = env!("CARGO_BIN_EXE_talkie");
    let models = root.join("models/build");
    let holds = holds();
    let stt_model = std::env::var("TALKIE_BENCH_STT_MODEL").ok();
    let stt_model = stt_model.as_deref();

    // The 31 clips, one session WAV, a script per hold and setting.
    let dir = root.join("target/bench/ptt-session");
    let clips: Vec<PathBuf> = refs.iter().map(|(f, _)| dev.join(f)).collect();
    scenario(&dir, &clips);
    let ends = speech_ends_ms(talkie, &models, &clips);
    let wer_of = |texts: &[String], refs: &[String]| {
        let (mut e, mut n) = (0, 0);
        for (hyp, r) in texts.iter().zip(refs) {
            let (a, b) = wer::errors(r, hyp);
            e += a;
            n += b;
        }
        100.0 * e as f64 / n.max(1) as f64
    };
    let references: Vec<String> = refs.iter().map(|(_, r)| r.clone()).collect();
    let mut rows = Vec::new();
    let mut press_to_led = Vec::new();
    let mut short_at_400 = None;
    for &hold in &holds {
        for speculative in [true, false] {
            let s = play(talkie, &dir, &models, &ends, hold, speculative, stt_model);
            press_to_led.extend_from_slice(&s.press_to_led);
            if !speculative && hold == 300 {
                let short: Vec<f64> = s
                    .release_to_text
                    .iter()
                    .zip(&durations)
                    .filter(|(_, d)| **d <= 5.0)
                    .map(|(r, _)| *r)
                    .collect();
                short_at_400 = Some(short);
            }
            rows.push((
                format!("all 31, hold {hold} ms"),
                hold,
                speculative,
                wer_of(&s.texts, &references),
                s,
            ));
        }
    }
    // Resumed speech: clip 2k and 2k+1 joined by 400 ms, one press each.
    let rdir = root.join("target/bench/ptt-resumed");
    std::fs::create_dir_all(&rdir).unwrap();
    let mut joined = Vec::new();
    let mut joined_refs = Vec::new();
    for pair in refs.chunks(2).filter(|p| p.len() == 2) {
        let out = rdir.join(format!(
            "{}+{}",
            pair[0].0.trim_end_matches(".wav"),
            pair[1].0
        ));
        join(&dev.join(&pair[0].0), &dev.join(&pair[1].0), 400, &out);
        joined.push(out);
        joined_refs.push(format!("{} {}", pair[0].1, pair[1].1));
    }
    scenario(&rdir, &joined);
    let rends = speech_ends_ms(talkie, &models, &joined);
    for speculative in [true, false] {
        let s = play(talkie, &rdir, &models, &rends, 300, speculative, stt_model);
        rows.push((
            format!(
                "resumed speech ({} pairs, 400 ms pause), hold 300 ms",
                joined.len()
            ),
            300,
            speculative,
            wer_of(&s.texts, &joined_refs),
            s,
        ));
    }

    let machine = machine();
    let mut table = String::from(
        "| set | speculation | median | p95 | mean | hits | WER |\n|---|---|---|---|---|---|---|\n",
    );
    let mut json_rows = Vec::new();
    for (set, hold, speculative, wer_pct, s) in &rows {
        let r = &s.release_to_text;
        let hits = s.how.iter().filter(|h| *h == "hit").count();
        let _ = std::fmt::Write::write_fmt(
            &mut table,
            format_args!(
                "| {set} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {hits}/{} | {wer_pct:.1} % |\n",
                if *speculative { "on" } else { "off" },
                median(r),
                percentile(r, 95.0),
                mean(r),
                r.len()
            ),
        );
        json_rows.push(serde_json::json!({
            "set": set, "hold_ms": hold, "speculative": speculative,
            "release_to_text_ms": {"median": median(r), "p95": percentile(r, 95.0), "mean": mean(r)},
            "hits": hits, "presses": r.len(), "outcomes": s.how, "wer_percent": wer_pct,
            "texts": s.texts,
        }));
    }
    let (led_mean, led_p95) = (mean(&press_to_led), percentile(&press_to_led, 95.0));
    let (fw_ms, fw_source) = match faster_whisper_short_mean(&root) {
        Some((m, n)) => (
            m,
            format!("{m:.0} ms mean over the same {n} clips ≤ 5 s, measured by `make bench` (models/bench_faster_whisper.py: 1.2.1, int8, 1 thread, beam 1)"),
        ),
        None => (
            FASTER_WHISPER_MEAN_MS,
            format!("{FASTER_WHISPER_MEAN_MS:.0} ms mean per utterance from `shared/eval/README.md` (not measured in this run)"),
        ),
    };
    let short = short_at_400.unwrap_or_default();
    let json = serde_json::json!({
        "bench": "ptt",
        "machine": machine,
        "stt_model": stt_model.unwrap_or("the default"),
        "input": format!("talkie::scenario sessions of the {} dev clips, 1.5 s gaps, real time, simulation clock", refs.len()),
        "press_to_led_ms": {"mean": led_mean, "p95": led_p95, "presses": press_to_led.len()},
        "runs": json_rows,
        "faster_whisper_reference_ms": fw_ms,
        "release_to_text_ms_le_5s_hold_300_off": {"n": short.len(), "mean": mean(&short)},
    });
    let md = format!(
        "# Push-to-talk benchmark\n\nMachine: {machine}; release build; `stt.model` {}.\n\
         Input: `talkie::scenario` sessions of the {} clips of `shared/eval/dev` (1.5 s gaps), played at real \
         time on the simulation clock by `talkie run --until-script-done` with the script button: press 300 ms \
         before each clip, release a hold after the clip's speech end (VAD), speculative recognition on and off. \
         Latencies are the service's own per-event log fields (release → transcript ready).\n\n\
         {table}\n\
         press → LED shows listening: mean {led_mean:.2} ms, p95 {led_p95:.2} ms over {} presses.\n\n\
         faster-whisper reference: {fw_source}.\n\n\
         Command: `make bench` (`cargo bench -p talkie --bench ptt`; `TALKIE_BENCH_HOLDS=300,800` for fewer holds).\n",
        stt_model.map_or_else(|| "default".to_owned(), |m| format!("\"{m}\"")),
        refs.len(),
        press_to_led.len(),
    );
    write_report("ptt", &json, &md);
}
