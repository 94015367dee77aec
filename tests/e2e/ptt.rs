//! Push-to-talk sessions with the script button: transcripts, LEDs, pre-roll, auto stop.

use crate::support::*;

/// Five dev clips 8 s apart, played at real time (about 55 s): each event
/// leaves seconds of slack after the previous utterance's recognition and
/// LED flash, so the LED sequence does not depend on machine speed.
#[test]
fn push_to_talk_session_transcripts_leds_preroll_taps_and_silence() {
    let dir = tempfile::tempdir().unwrap();
    let dev = eval_dir().join("dev");
    let refs = wer::eval_references(&dev);
    let clips: Vec<&(String, String)> = refs.iter().take(5).collect();
    talkie_devtools::scenario::build(&talkie_devtools::scenario::ScenarioArgs {
        gap_ms: 11000,
        ..talkie_devtools::scenario::ScenarioArgs::new(
            dir.path(),
            clips.iter().map(|(f, _)| dev.join(f)).collect(),
        )
    })
    .unwrap();
    // The tap and the silent press below come 7.5 s after a release, when
    // the previous utterance has long been handled (about 1 s here; a
    // machine several times slower than the CI's 2 cores would see them
    // during "processing" and a different LED timeline).
    // clip  start_ms  end_ms  press_ms  release_ms
    let spans: Vec<(u64, u64)> = std::fs::read_to_string(dir.path().join("clips.tsv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<u64> = l.split('\t').skip(1).map(|v| v.parse().unwrap()).collect();
            (f[0], f[1])
        })
        .collect();
    assert_eq!(spans.len(), 5);

    // Where speech starts inside clip 1, by the VAD (its start includes
    // vad.speech_pad_ms = 100 of padding).
    let out = run(vad_json().arg(dev.join(&clips[1].0)));
    let vad: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let onset_ms = (vad["segments"][0][0].as_f64().unwrap() * 1000.0) as u64 + 100;

    let mut script = String::new();
    let mut ev = |at: u64, action: &str| {
        script.push_str(&format!("[[event]]\nat_ms = {at}\naction = \"{action}\"\n"));
    };
    // Clip 0: the press bounces (five edges within the 20 ms debounce window).
    let p = spans[0].0 - 300;
    for (i, a) in ["press", "release", "press", "release", "press"]
        .iter()
        .enumerate()
    {
        ev(p + 3 * i as u64, a);
    }
    ev(spans[0].1 + 400, "release");
    // Clip 1: pressed 200 ms after the speech started; the pre-roll keeps it.
    ev(spans[1].0 + onset_ms + 200, "press");
    ev(spans[1].1 + 400, "release");
    // Clip 2, then a 100 ms tap in the quiet gap.
    ev(spans[2].0 - 300, "press");
    ev(spans[2].1 + 400, "release");
    ev(spans[2].1 + 8000, "press");
    ev(spans[2].1 + 8100, "release");
    // Clip 3, then 1.2 s of a press over silence.
    ev(spans[3].0 - 300, "press");
    ev(spans[3].1 + 400, "release");
    ev(spans[3].1 + 7500, "press");
    ev(spans[3].1 + 8700, "release");
    // Clip 4.
    ev(spans[4].0 - 300, "press");
    ev(spans[4].1 + 400, "release");
    let script_path = write(dir.path(), "script.toml", &script);
    let cfg = scripted_config(dir.path(), &dir.path().join("session.wav"), &script_path);
    // Transcripts go through the outbox to a real agent over loopback.
    let mock = MockAgent::start(dir.path(), "127.0.0.1:0", &[]);
    let mut c = std::fs::read_to_string(&cfg).unwrap();
    c.push_str(&format!(
        "[agent]\nurl = \"http://127.0.0.1:{}\"\n[outbox]\npath = {:?}\n",
        mock.port,
        dir.path().join("outbox.db")
    ));
    std::fs::write(&cfg, c).unwrap();

    let out = run(talkie().args(["--config"]).arg(&cfg).args([
        "--log-format",
        "json",
        "run",
        "--until-script-done",
    ]));
    assert_eq!(out.status.code(), Some(0));
    let lines = json_lines(&out.stderr);

    let texts: Vec<String> = with_target(&lines, "talkie::transcript")
        .map(|l| l["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts.len(),
        5,
        "one transcript per clip, none for the tap or the silence: {texts:?}"
    );
    let (mut errors, mut total) = (0, 0);
    for ((_, reference), hyp) in clips.iter().zip(&texts) {
        let (e, n) = wer::errors(reference, hyp);
        eprintln!("{hyp:?} (ref {reference:?}, {e} errors)");
        errors += e;
        total += n;
    }
    assert!(
        errors as f64 <= 0.10 * total as f64,
        "WER {errors}/{total} over the session"
    );
    assert_eq!(
        wer::words(&texts[1]).first(),
        wer::words(&clips[1].1).first(),
        "the pre-roll keeps the first word of a late press"
    );

    let leds: Vec<&str> = with_target(&lines, "talkie::led")
        .map(|l| l["state"].as_str().unwrap())
        .collect();
    let utterance = ["listening", "processing", "sending", "sent", "idle"];
    let mut expected = vec!["idle"];
    for _ in 0..3 {
        expected.extend(utterance);
    }
    expected.extend(["listening", "too_short", "idle"]);
    expected.extend(utterance);
    expected.extend(["listening", "processing", "no_speech", "idle"]);
    expected.extend(utterance);
    expected.push("off");
    assert_eq!(leds, expected);

    let summary = lines
        .iter()
        .find(|l| l["message"] == "push-to-talk summary")
        .expect("summary line");
    assert_eq!(summary["presses"], 7, "the bounce burst is one press");
    assert_eq!(summary["transcripts"], 5);
    assert_eq!(summary["too_short"], 1);
    assert_eq!(summary["no_speech"], 1);
    assert_eq!(summary["tap_dropped"], 0);

    let arrived: Vec<String> = mock
        .records()
        .iter()
        .filter(|r| r["status"] == 200)
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        arrived, texts,
        "every transcript reached the agent once, in order"
    );
}

#[test]
fn until_script_done_needs_the_script_backend_and_a_valid_script() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.toml",
        "[[event]]\nat_ms = 10\naction = \"push\"\n",
    );
    let wav = eval_dir().join("dev/dev_00.wav");
    let cfg = scripted_config(dir.path(), &wav, &bad);
    let out = run(talkie()
        .args(["--config"])
        .arg(&cfg)
        .args(["run", "--until-script-done"]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("push"), "{err}");
    let out = run(talkie().args(["--config"]).arg(&cfg).args([
        "--set",
        "gpio.backend=none",
        "run",
        "--until-script-done",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--until-script-done needs gpio.backend = \"script\""));
}

/// Hands-free end (`ptt.vad_auto_stop_ms`) and the length limit
/// (`audio.max_utterance_s`): the button is held 5 s past the speech, and
/// the utterance ends by itself.
#[test]
fn utterances_end_by_themselves_on_trailing_silence_and_at_the_length_limit() {
    let dir = tempfile::tempdir().unwrap();
    let dev = eval_dir().join("dev");
    let refs = wer::eval_references(&dev);
    let (clip, reference) = &refs[1];
    talkie_devtools::scenario::build(&talkie_devtools::scenario::ScenarioArgs {
        release_lag_ms: 5000,
        ..talkie_devtools::scenario::ScenarioArgs::new(dir.path(), vec![dev.join(clip)])
    })
    .unwrap();
    let cfg = scripted_config(
        dir.path(),
        &dir.path().join("session.wav"),
        &dir.path().join("buttons.toml"),
    );
    let session = |sets: &[&str]| {
        let mut cmd = talkie();
        cmd.arg("--config").arg(&cfg).args(["--log-format", "json"]);
        for s in sets {
            cmd.args(["--set", s]);
        }
        let out = run(cmd.args(["run", "--until-script-done"]));
        assert_eq!(out.status.code(), Some(0));
        let lines = json_lines(&out.stderr);
        let t = with_target(&lines, "talkie::transcript")
            .next()
            .expect("a transcript")
            .clone();
        let leds: Vec<String> = with_target(&lines, "talkie::led")
            .map(|l| l["state"].as_str().unwrap().to_owned())
            .collect();
        (t, leds)
    };

    let (t, leds) = session(&["ptt.vad_auto_stop_ms=600"]);
    assert_eq!(t["auto_stopped"], true);
    let (e, n) = wer::errors(reference, t["text"].as_str().unwrap());
    assert!(e * 10 <= n, "{t} vs {reference:?}");
    let audio_ms: u64 = t["audio_ms"]
        .as_str()
        .map_or_else(|| t["audio_ms"].as_u64().unwrap(), |s| s.parse().unwrap());
    assert!(
        audio_ms < 5000,
        "ended ~0.6 s after the speech, not at the release: {audio_ms} ms"
    );
    assert_eq!(
        leds,
        [
            "idle",
            "listening",
            "processing",
            "sending",
            "sent",
            "idle",
            "off"
        ],
        "the late release changes nothing"
    );

    let (t, _) = session(&["audio.max_utterance_s=1"]);
    assert_eq!(t["auto_stopped"], true);
    let audio_ms: u64 = t["audio_ms"]
        .as_str()
        .map_or_else(|| t["audio_ms"].as_u64().unwrap(), |s| s.parse().unwrap());
    assert_eq!(audio_ms, 1500, "1 s limit + 500 ms pre-roll");
}

/// Issue 19: SIGTERM while a speculative run is going (the visitor still
/// holds the button after a pause) shuts down cleanly: exit 0, every
/// thread joined within the stop budget, and the utterance submitted
/// before it (a hit) was delivered. The signal is sent when the run's log
/// line appears, so the run is in progress or just finished: both must
/// stop cleanly.
#[test]
fn sigterm_during_a_speculative_run_stops_cleanly_and_keeps_what_was_submitted() {
    let dir = tempfile::tempdir().unwrap();
    let dev = eval_dir().join("dev");
    talkie_devtools::scenario::build(&talkie_devtools::scenario::ScenarioArgs {
        gap_ms: 2000,
        release_lag_ms: 800,
        ..talkie_devtools::scenario::ScenarioArgs::new(
            dir.path(),
            vec![dev.join("dev_01.wav"), dev.join("real_beckett.wav")],
        )
    })
    .unwrap();
    // The second press is held 20 s past its clip: the signal comes first.
    let script = std::fs::read_to_string(dir.path().join("buttons.toml")).unwrap();
    let last = script.rfind("at_ms = ").unwrap();
    let release: u64 = script[last + 8..]
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let script = format!(
        "{}at_ms = {}\naction = \"release\"\n",
        &script[..last],
        release + 20_000
    );
    let script_path = write(dir.path(), "script.toml", &script);
    let cfg = scripted_config(dir.path(), &dir.path().join("session.wav"), &script_path);
    let mut c = std::fs::read_to_string(&cfg).unwrap();
    c.push_str("[log]\nlevel = \"info,talkie::ptt::listener=debug\"\n");
    std::fs::write(&cfg, c).unwrap();
    let (mut child, logs) = start_service(&cfg);
    let hit = wait_log_for(&logs, "\"speculative\":\"hit\"", FIVE_MIN);
    assert!(
        hit.contains("What time does the museum close today?"),
        "{hit}"
    );
    // real_beckett pauses between its sentences: its first run.
    wait_log_for(&logs, "speculative run started", FIVE_MIN);
    let status = sigterm_and_wait(&mut child);
    let rest: Vec<String> = logs.try_iter().collect();
    assert!(status.success(), "{status:?}: {rest:?}");
    assert!(
        !rest
            .iter()
            .any(|l| l.contains("did not stop") || l.contains("\"level\":\"ERROR\"")),
        "{rest:?}"
    );
}

const FIVE_MIN: std::time::Duration = std::time::Duration::from_secs(300);
