//! The service started in-process through `talkie::service` (no process spawned).

use crate::support::*;
use std::path::Path;

/// A scripted one-clip session for an in-process service, played at real
/// time on its own clock: the press and release come at the same audio
/// time on any machine.
pub(crate) fn in_process_config(
    dir: &Path,
    clip: &str,
    token: &str,
) -> talkie::base::config::Config {
    session_config(dir, clip, &[eval_dir().join("dev").join(clip)], token)
}

/// As [`in_process_config`], for a session of several clips (scenario
/// layout: `dir/session/{session.wav,buttons.toml,clips.tsv}`).
fn session_config(
    dir: &Path,
    id: &str,
    clips: &[std::path::PathBuf],
    token: &str,
) -> talkie::base::config::Config {
    let clip = id;
    let out = dir.join("session");
    talkie_devtools::scenario::build(&talkie_devtools::scenario::ScenarioArgs {
        gap_ms: 2000,
        ..talkie_devtools::scenario::ScenarioArgs::new(&out, clips.to_vec())
    })
    .unwrap();
    let models = models_dir();
    let path = write(
        dir,
        "talkie.toml",
        &format!(
            "[device]\nid = {clip:?}\n[audio]\nbackend = \"file\"\nfile = {:?}\nrealtime = true\n\
             sim_clock = true\n[gpio]\nbackend = \"script\"\nscript = {:?}\n\
             [stt]\nmodel_dir = {models:?}\nmodel = {TEST_STT_MODEL:?}\nprecision = \"fp32\"\n\
             threads = 1\n[vad]\nmodel = {:?}\n[status]\nlisten = \"127.0.0.1:0\"\ntoken = {token:?}\n",
            out.join("session.wav"),
            out.join("buttons.toml"),
            models.join("silero_vad.onnx")
        ),
    );
    let mut cfg = talkie::base::config::load(&path, &talkie::base::config::Overrides::default())
        .unwrap()
        .config;
    cfg.device.state_dir = dir.join("state");
    cfg
}

/// Start an in-process service that stays up when its simulated source
/// ends (its API answers until the test shuts it down).
pub(crate) async fn start(
    cfg: talkie::base::config::Config,
) -> Result<talkie::service::ServiceHandle, talkie::service::StartError> {
    let options = talkie::service::ServiceOptions {
        end_with_source: false,
        ..talkie::service::ServiceOptions::fixed(&cfg)
    };
    talkie::service::Service::start(cfg, options).await
}

/// `GET /api/v1/status` of an in-process service, anonymously.
async fn status_of(addr: std::net::SocketAddr) -> serde_json::Value {
    json_of(reqwest::Client::new().get(format!("http://{addr}/api/v1/status"))).await
}

/// Send `req` and read its body as JSON.
async fn json_of(req: reqwest::RequestBuilder) -> serde_json::Value {
    let body = req.send().await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// Wait until `h` has delivered `n` transcripts (bounded: a broken
/// service fails here, a slow one only takes longer).
async fn wait_transcripts(h: &talkie::service::ServiceHandle, n: u64) {
    let mut count = h.transcript_count();
    tokio::time::timeout(
        std::time::Duration::from_secs(300),
        count.wait_for(|c| *c >= n),
    )
    .await
    .unwrap_or_else(|_| panic!("{n} transcript(s) within 5 minutes"))
    .unwrap();
}

/// Issue 17: the service is a library. Three services start in one test
/// process, each on its own port, each recognizes its own press, answers
/// its own API, reloads, and both shut down cleanly through their handles.
/// Issue 31: a press through the whole service with each `stt.model`:
/// Whisper tiny.en, Moonshine base, and the two cross-scored, whose
/// verdict reaches the transcript. The agreement press is dev_29, whose
/// text both models give at every capture offset tried (0–110 ms in 10 ms
/// steps: the press's start moves by a period from run to run, and dev_13,
/// used before, read "pay" or "play" with it); which model "won" a tie of
/// texts is not fixed, so the test asserts a winner and, unless the texts
/// agreed, the scores. The rule itself is held by
/// `agreement_takes_the_text_both_decoders_prefer` on fixed audio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_in_one_process_each_recognize_their_own_press() {
    let token = "in-process-technician-token-0123456789";
    let cases = [
        ("dev_01.wav", "What time does the museum close today?"),
        (
            "dev_02.wav",
            "Can you show me the way to the main entrance?",
        ),
        ("dev_29.wav", "Thank you very much, that was very helpful."),
    ];
    let dirs: Vec<tempfile::TempDir> = cases.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut handles = Vec::new();
    let models = [
        talkie::base::config::SttModel::WhisperTiny,
        talkie::base::config::SttModel::MoonshineBase,
        talkie::base::config::SttModel::Agreement,
    ];
    for (((clip, _), dir), model) in cases.iter().zip(&dirs).zip(models) {
        let mut cfg = in_process_config(dir.path(), clip, token);
        cfg.stt.model = model;
        let h = start(cfg).await.unwrap();
        handles.push(h);
    }
    let (a, b) = (handles[0].status_addr(), handles[1].status_addr());
    assert_ne!(a.port(), b.port());
    for h in &handles {
        assert!(h.ready().await, "ready");
    }
    let http = reqwest::Client::new();
    for ((h, (clip, text)), model) in handles.iter().zip(cases).zip(models) {
        let url = format!("http://{}/api/v1/transcripts", h.status_addr());
        wait_transcripts(h, 1).await;
        let status = status_of(h.status_addr()).await;
        assert_eq!(status["stt"]["model"], model.as_str(), "{clip}");
        let body = http.get(&url).bearer_auth(token).send().await.unwrap();
        assert_eq!(body.status(), 200);
        let body: serde_json::Value = serde_json::from_slice(&body.bytes().await.unwrap()).unwrap();
        let got: Vec<&str> = body["transcripts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["text"].as_str().unwrap())
            .collect();
        assert_eq!(got, [text], "{clip} {body}");
        let verdict = &body["transcripts"][0]["agreement"];
        let winner = &verdict["winner"];
        if model == talkie::base::config::SttModel::Agreement {
            let w = winner.as_str().unwrap_or_default();
            assert!(
                ["agreed", "whisper-tiny", "moonshine-base"].contains(&w),
                "{body}"
            );
            assert_eq!(verdict["scores"].is_null(), w == "agreed", "{body}");
            let texts = [&verdict["whisper_text"], &verdict["moonshine_text"]];
            assert!(texts.iter().any(|t| t.as_str() == Some(text)), "{body}");
        } else {
            assert!(winner.is_null(), "{body}");
        }
        // Issue 20 item 6: the pictures' data. The waveform only for a
        // technician; the level history and release → text for anyone.
        let charts = format!("http://{}/api/v1/charts", h.status_addr());
        let anon: serde_json::Value = json_of(http.get(&charts)).await;
        assert!(anon["last_utterance"].is_null(), "{anon}");
        assert_eq!(
            anon["release_to_text"].as_array().unwrap().len(),
            1,
            "{anon}"
        );
        assert!(anon["level_history"].is_array());
        let tech: serde_json::Value = json_of(http.get(&charts).bearer_auth(token)).await;
        let t = &tech["last_utterance"];
        assert_eq!(
            t["peaks"].as_array().unwrap().len(),
            talkie::ptt::trace::WAVE_POINTS
        );
        assert!(
            t["peaks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p.as_f64().unwrap() > 0.05),
            "{t}"
        );
        let speech = t["speech_ms"].as_array().unwrap();
        assert!(!speech.is_empty(), "the VAD heard the question: {t}");
        let (press, release) = (
            t["press_ms"].as_u64().unwrap(),
            t["release_ms"].as_u64().unwrap(),
        );
        assert!(
            press > 0 && press < release && release == t["audio_ms"].as_u64().unwrap(),
            "{t}"
        );
        assert!(speech
            .iter()
            .all(|s| s[0].as_u64() < s[1].as_u64() && s[1].as_u64().unwrap() <= release));
        // Item 5: recordings are off by default: nothing on disk, 404.
        let recs = format!("http://{}/api/v1/recordings", h.status_addr());
        let r = http.get(&recs).bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let report = h.reload().await.expect("a running service reloads");
        assert!(report.ok && report.changed.is_empty(), "{report:?}");
    }
    for h in &handles {
        h.shutdown();
    }
    for h in handles {
        h.wait().await.expect("a clean stop");
    }
    for dir in &dirs {
        assert!(
            !dir.path().join("state").join("recordings").exists(),
            "no audio kept by default"
        );
    }
    // Stopped: the ports are closed.
    for addr in [a, b] {
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}

/// Issue 20 item 5: with `debug.keep_utterances = 1`, a two-press session
/// keeps only the newest utterance (WAV + its facts), technician only; the
/// status says recordings are on (the page's banner); delete removes it.
/// (Age and byte limits with an injected clock: `talkie::ptt::recordings`
/// unit tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_when_turned_on_keep_the_newest_utterances_for_a_technician() {
    let dir = tempfile::tempdir().unwrap();
    let token = "in-process-technician-token-0123456789";
    let clips: Vec<_> = ["dev_01.wav", "dev_02.wav"]
        .iter()
        .map(|c| eval_dir().join("dev").join(c))
        .collect();
    let mut cfg = session_config(dir.path(), "two", &clips, token);
    cfg.debug.keep_utterances = 1;
    let h = start(cfg).await.unwrap();
    assert!(h.ready().await);
    wait_transcripts(&h, 2).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/v1/recordings", h.status_addr());
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    // The second recording is written off the controller's task just
    // after its transcript: wait for it (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let list = loop {
        let r: serde_json::Value = json_of(http.get(&url).bearer_auth(token)).await;
        let list = r["recordings"].as_array().unwrap().clone();
        if list
            .first()
            .is_some_and(|e| e["meta"]["transcript"]["id"] == 2)
        {
            break list;
        }
        assert!(std::time::Instant::now() < deadline, "{r}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(list.len(), 1, "keep_utterances = 1: {list:?}");
    let e = &list[0];
    assert_eq!(
        e["meta"]["transcript"]["text"],
        "Can you show me the way to the main entrance?"
    );
    assert!(!e["meta"]["vad_speech_ms"].as_array().unwrap().is_empty());
    let status = status_of(h.status_addr()).await;
    assert_eq!(status["recordings"]["enabled"], true, "{status}");
    assert_eq!(status["recordings"]["kept"], 1);
    let name = e["name"].as_str().unwrap();
    let wav = http
        .get(format!("{url}/{name}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(wav.status(), 200);
    assert_eq!(wav.headers()["content-type"], "audio/wav");
    let bytes = wav.bytes().await.unwrap();
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    assert_eq!(
        (reader.spec().sample_rate, reader.spec().channels),
        (16_000, 1)
    );
    let ms = u64::from(reader.duration()) * 1000 / 16_000;
    let audio_ms = e["meta"]["transcript"]["audio_ms"].as_u64().unwrap();
    assert!(ms > 1000 && ms <= audio_ms, "{ms} ms of {audio_ms}");
    let files = std::fs::read_dir(dir.path().join("state/recordings"))
        .unwrap()
        .count();
    assert_eq!(files, 2, "one WAV and its JSON");
    assert_eq!(
        http.get(format!("{url}/..%2Fruns"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let del = http
        .delete(format!("{url}/{name}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let files = std::fs::read_dir(dir.path().join("state/recordings"))
        .unwrap()
        .count();
    assert_eq!(files, 0);
    h.shutdown();
    h.wait().await.unwrap();
}

/// Issue 18 row 5, the outbox half: an outbox that cannot be opened at
/// start (its directory is a file) no longer ends the service. It comes
/// up, `/readyz` says why it is not ready, the health list names the
/// outbox, and it stops cleanly. (Healing once the path is writable:
/// `a_closed_outbox_opens_on_the_next_use`, unit.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_outbox_is_a_degraded_state_not_an_exit() {
    let dir = tempfile::tempdir().unwrap();
    let token = "in-process-technician-token-0123456789";
    let mut cfg = in_process_config(dir.path(), "dev_01.wav", token);
    let blocker = write(dir.path(), "not-a-dir", "");
    cfg.agent.url = Some("http://127.0.0.1:9".into());
    cfg.outbox.path = blocker.join("outbox.db");
    let h = start(cfg).await.expect("starts degraded");
    assert!(h.ready().await);
    let http = reqwest::Client::new();
    let base = format!("http://{}", h.status_addr());
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let why = r.text().await.unwrap();
    assert!(why.contains("outbox cannot be opened"), "{why}");
    let status = status_of(h.status_addr()).await;
    let outbox = status["health"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "outbox")
        .cloned()
        .unwrap_or_else(|| panic!("no outbox check in {status}"));
    assert_eq!(outbox["ok"], false, "{outbox}");
    assert!(
        outbox["reason"].as_str().unwrap().contains("not-a-dir"),
        "{outbox}"
    );
    h.shutdown();
    h.wait().await.expect("a clean stop");
}

/// Issue 20 item 1: board health from a fake `/proc` + `/sys` tree (a Pi
/// at 85 °C that saw under-voltage): two warnings with reasons in
/// `/api/v1/status` and the matching figures on `/metrics`; warnings do
/// not fail readiness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn board_health_from_a_fake_sysfs_gives_warnings_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fake_board(
        &root,
        "85000\n",
        "0x50000\n",
        &[(
            talkie::platform::updates::MENDER_ARTIFACT_INFO,
            "artifact_name=talkie-2026.12.0\n",
        )],
    );
    let token = "in-process-technician-token-0123456789";
    let mut cfg = in_process_config(dir.path(), "dev_01.wav", token);
    cfg.board.root = root;
    let h = start(cfg).await.unwrap();
    assert!(h.ready().await);
    let http = reqwest::Client::new();
    let base = format!("http://{}", h.status_addr());
    let get = |path: &str| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (_, body) = get("/api/v1/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let board = &status["board"];
    assert_eq!(board["cpu_temp_c"], 85.0, "{board}");
    assert_eq!(
        board["throttled"]["under_voltage_since_boot"], true,
        "{board}"
    );
    let names: Vec<&str> = board["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["temperature", "power"], "{board}");
    assert!(board["warnings"][1]["reason"]
        .as_str()
        .unwrap()
        .contains("under-voltage since boot"));
    let (_, metrics) = get("/metrics").await;
    let scrape =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let value = |name: &str, label: Option<(&str, &str)>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    assert_eq!(
        value("talkie_board_cpu_temperature_celsius", None),
        Some(85.0)
    );
    assert_eq!(
        value("talkie_board_warning", Some(("name", "power"))),
        Some(1.0)
    );
    assert_eq!(
        value("talkie_board_warning", Some(("name", "temperature"))),
        Some(1.0)
    );
    assert_eq!(value("talkie_board_uptime_seconds", None), Some(120.0));
    let (code, why) = get("/readyz").await;
    assert_eq!(code, 200, "warnings are not readiness failures: {why}");
    // Item 3: the update system's view, read in the background after start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let updates = loop {
        let (_, body) = get("/api/v1/status").await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status["updates"]["checked_ms"].as_u64().unwrap_or(0) > 0 {
            break status["updates"].clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "updates never read: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(updates["mender_artifact"], "talkie-2026.12.0", "{updates}");
    assert_eq!(
        updates["rauc"],
        serde_json::Value::Null,
        "no rauc here: {updates}"
    );
    h.shutdown();
    h.wait().await.unwrap();
}

/// Issue 20 item 7, the guard: a restart is refused (429 with
/// Retry-After) until the service has run `status.restart_min_uptime_s`,
/// so a script cannot restart it into systemd's start limit; once allowed,
/// the service ends with `Ended::Restart` (the binary exits 75).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_is_refused_right_after_start_then_ends_the_service() {
    use talkie::service::Ended;
    let token = "in-process-technician-token-0123456789";
    let mut ended = Vec::new();
    for min_uptime in [3600, 0] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = in_process_config(dir.path(), "dev_01.wav", token);
        cfg.status.restart_min_uptime_s = min_uptime;
        let h = start(cfg).await.unwrap();
        assert!(h.ready().await);
        let r = reqwest::Client::new()
            .post(format!("http://{}/api/v1/restart", h.status_addr()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        if min_uptime > 0 {
            assert_eq!(r.status(), 429);
            assert!(r.headers().get("retry-after").is_some());
            h.shutdown();
        } else {
            assert_eq!(r.status(), 202);
        }
        ended.push(h.wait().await.unwrap());
    }
    assert_eq!(ended, [Ended::Stopped, Ended::Restart]);
}

/// Issue 20 item 3, the run history: a second start in the same state
/// directory says the first ended cleanly and counts two starts in 24 h
/// (status API and metrics). Killed runs are covered by the unit tests of
/// `talkie::base::runs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_shows_how_the_previous_run_ended() {
    let dir = tempfile::tempdir().unwrap();
    let token = "in-process-technician-token-0123456789";
    let cfg = in_process_config(dir.path(), "dev_01.wav", token);
    let mut seen = Vec::new();
    for _ in 0..2 {
        let h = start(cfg.clone()).await.unwrap();
        let base = format!("http://{}", h.status_addr());
        let status = status_of(h.status_addr()).await;
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        seen.push((status["runs"].clone(), metrics));
        h.shutdown();
        h.wait().await.unwrap();
    }
    assert_eq!(seen[0].0["starts_24h"], 1, "{}", seen[0].0);
    assert!(seen[0].0["previous_end"].is_null(), "{}", seen[0].0);
    assert_eq!(seen[1].0["starts_24h"], 2, "{}", seen[1].0);
    assert_eq!(seen[1].0["previous_end"], "clean", "{}", seen[1].0);
    assert!(
        seen[1].1.contains("talkie_service_starts_24h 2"),
        "{}",
        seen[1].1
    );
    assert!(
        seen[1]
            .1
            .contains("talkie_previous_run_end{how=\"clean\"} 1"),
        "{}",
        seen[1].1
    );
}

/// Issue 19, speculative recognition, in two services playing the same
/// session, one with `ptt.speculative` on (the default) and one off:
/// - press 1, dev_01 held 800 ms past its end: recognized from the pause
///   while still held, the result used at release (`hit`);
/// - press 2, dev_05, 400 ms of quiet, dev_00, released as the second
///   phrase ends: the run made at the pause is discarded when speech comes
///   back (a miss, or abandoned if it was still running), and the press's
///   transcript has both phrases. Whether that transcript is the whole
///   press recognized after release (`miss`) or a second run cut in the
///   second phrase's trailing quiet (`hit`) depends on whether the worker
///   was idle again by then, i.e. on the CPU's speed: both are right, and
///   the test accepts both (CI saw `hit` on a fast run).
/// Both services give the same words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speculation_hits_on_a_long_hold_misses_when_speech_comes_back_and_keeps_the_words() {
    let token = "in-process-technician-token-0123456789";
    let dev = eval_dir().join("dev");
    let joined = tempfile::tempdir().unwrap();
    let two = joined.path().join("dev_05_pause_dev_00.wav");
    {
        let (mut a, spec) = read_wav(&dev.join("dev_05.wav"));
        let (b, _) = read_wav(&dev.join("dev_00.wav"));
        a.resize(a.len() + 6_400, 0.0);
        a.extend(b);
        let mut w = hound::WavWriter::create(&two, spec).unwrap();
        for s in a {
            w.write_sample((s * 32_767.0) as i16).unwrap();
        }
        w.finalize().unwrap();
    }
    let clips = [dev.join("dev_01.wav"), two];
    let mut runs = Vec::new();
    for speculative in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = session_config(dir.path(), "speculation", &clips, token);
        cfg.ptt.speculative = speculative;
        // clip  start_ms  end_ms  press_ms  release_ms: release 800 ms
        // after the first clip, at the end of the second.
        let tsv = std::fs::read_to_string(dir.path().join("session/clips.tsv")).unwrap();
        let mut script = String::new();
        for (i, line) in tsv.lines().skip(1).enumerate() {
            let f: Vec<u64> = line
                .split('\t')
                .skip(1)
                .map(|v| v.parse().unwrap())
                .collect();
            let release = if i == 0 { f[1] + 800 } else { f[1] };
            script.push_str(&format!(
                "[[event]]\nat_ms = {}\naction = \"press\"\n[[event]]\nat_ms = {release}\naction = \"release\"\n",
                f[2]
            ));
        }
        std::fs::write(dir.path().join("session/buttons.toml"), script).unwrap();
        let h = start(cfg).await.unwrap();
        runs.push((dir, h));
    }
    let mut seen = Vec::new();
    for (_, h) in &runs {
        wait_transcripts(h, 2).await;
        let list = h.transcripts();
        let texts: Vec<String> = list.iter().map(|t| t.text.clone()).collect();
        let how: Vec<&str> = list.iter().map(|t| t.speculative.as_str()).collect();
        let body = reqwest::get(format!("http://{}/api/v1/status", h.status_addr()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        seen.push((texts, how, status["push_to_talk"]["speculative"].clone()));
    }
    for (_, h) in &runs {
        h.shutdown();
    }
    for (_, h) in runs {
        h.wait().await.expect("a clean stop");
    }
    let (on, off) = (&seen[0], &seen[1]);
    eprintln!("on: {on:?}\noff: {off:?}");
    // The press starts a few ms after its audio time (threads), so the
    // pre-roll's alignment and a near-tie word may differ from run to run
    // whatever the setting; exact equality of a cut and the whole capture
    // is the unit test's (talkie-speech, every dev clip).
    let refs = [
        "What time does the museum close today?",
        "I would like to check in for my reservation. Where is the nearest restroom?",
    ];
    for texts in [&on.0, &off.0] {
        assert_eq!(texts.len(), 2, "{texts:?}");
        for (hyp, reference) in texts.iter().zip(refs) {
            let (errors, _) = wer::errors(reference, hyp);
            assert!(errors <= 3, "{hyp:?} for {reference:?}");
        }
        assert!(
            texts[1].contains("check in for my") && texts[1].contains("restroom"),
            "both phrases of the second press: {texts:?}"
        );
    }
    assert_eq!(on.1[0], "hit");
    assert!(on.1[1] == "miss" || on.1[1] == "hit", "{:?}", on.1);
    assert_eq!(off.1, ["off", "off"]);
    let s = &on.2;
    assert_eq!(s["enabled"], true);
    let hits = on.1.iter().filter(|o| **o == "hit").count();
    assert_eq!(s["hits"], hits, "{s}");
    let (runs, misses, abandoned) = (
        s["runs"].as_u64().unwrap(),
        s["misses"].as_u64().unwrap(),
        s["abandoned"].as_u64().unwrap(),
    );
    assert!(
        misses + abandoned >= 1,
        "the run at the pause was discarded: {s}"
    );
    assert_eq!(runs, hits as u64 + misses + abandoned, "{s}");
    assert_eq!(off.2["enabled"], false);
    assert_eq!(off.2["runs"], 0);
}

/// The files of a support bundle (`talkie-support/` stripped) and their bytes.
fn unpack_bundle(gz: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let name = path.strip_prefix("talkie-support/").unwrap().to_owned();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (name, bytes)
        })
        .collect()
}

/// No secret and none of the visitor's words anywhere in a bundle, in the
/// archive's bytes or unpacked.
fn assert_clean(gz: &[u8], files: &[(String, Vec<u8>)], secrets: &[&str]) {
    let all: Vec<u8> = files.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    for needle in secrets {
        for hay in [gz, all.as_slice()] {
            assert!(
                !hay.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle:?} is in the bundle"
            );
        }
    }
}

/// Issue 20 item 4: the support bundle. Technician only (401 without the
/// token); one archive with status, metrics, logs, config, transcripts'
/// metadata, outbox, board, calibration, runs and versions, in which
/// neither token, the agent's token nor what the visitor said appears.
/// `talkie support-bundle` (the real binary, as over SSH) fetches the same
/// from the running service, and writes a disk-only bundle saying why when
/// the service is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_support_bundle_has_every_part_and_no_secret_live_or_offline() {
    let dir = tempfile::tempdir().unwrap();
    let token = "in-process-technician-token-0123456789";
    let agent_token = "agent-bearer-secret-9876543210";
    let mock = MockAgent::start(dir.path(), "127.0.0.1:0", &["--token", agent_token]);
    let mut cfg = in_process_config(dir.path(), "dev_01.wav", token);
    cfg.agent.url = Some(format!("http://127.0.0.1:{}", mock.port));
    cfg.agent.token = Some(talkie::base::config::Secret::new(agent_token));
    cfg.outbox.path = dir.path().join("outbox.db");
    let (state_dir, outbox) = (cfg.device.state_dir.clone(), cfg.outbox.path.clone());
    let h = start(cfg).await.unwrap();
    assert!(h.ready().await);
    wait_transcripts(&h, 1).await;
    let url = format!("http://{}/api/v1/support-bundle", h.status_addr());
    let http = reqwest::Client::new();
    // Issue 20 item 2: the agent's reachability, step by step (checked at
    // start, then every minute), and the clock.
    let reach = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let s = status_of(h.status_addr()).await;
            // The transcript delivered (its answer's status and Date) and
            // the first check done.
            if !s["agent"]["reachability"].is_null() && s["agent"]["delivered"] == 1 {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a delivery and a reachability check within 60 s");
    let r = &reach["agent"]["reachability"];
    assert!(r["failed_step"].is_null(), "{r}");
    assert!(
        r["dns_ms"].is_number() && r["connect_ms"].is_number() && r["request_ms"].is_number(),
        "{r}"
    );
    assert!(r["http_status"].is_number(), "{r}");
    assert_eq!(r["tls"], false);
    assert_eq!(
        reach["agent"]["last_http_status"], 200,
        "{}",
        reach["agent"]
    );
    assert!(reach["agent"]["clock_offset_s"].as_f64().unwrap().abs() < 5.0);
    assert!(reach["time"]["synchronized"].is_boolean() || reach["time"]["synchronized"].is_null());
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(&url).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/gzip");
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with("attachment; filename=\"talkie-support-dev_01_wav-"),
        "{disposition}"
    );
    let gz = r.bytes().await.unwrap();
    let files = unpack_bundle(&gz);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    let live = [
        "MANIFEST.txt",
        "status.json",
        "metrics.txt",
        "board.json",
        "logs.json",
        "config.json",
        "transcripts.json",
        "outbox.json",
        "calibration.json",
        "runs.json",
        "versions.json",
    ];
    assert_eq!(names, live);
    let words = "museum close today";
    assert_clean(&gz, &files, &[token, agent_token, words]);
    let file = |name: &str| -> serde_json::Value {
        let (_, b) = files.iter().find(|(n, _)| n == name).unwrap();
        serde_json::from_slice(b).unwrap()
    };
    let transcripts = file("transcripts.json");
    assert_eq!(transcripts[0]["text_chars"], 38, "{transcripts}");
    assert!(transcripts[0]["release_to_text_ms"].is_number());
    // (An in-process service has no log subscriber: its ring stays empty.
    // The words' omission from log lines: unit tests in talkie::base::support and
    // talkie::status::bundle.)
    assert!(file("logs.json")["lines"].is_array());
    assert_eq!(file("status.json")["access"], "technician");
    assert_eq!(
        file("config.json")["effective"]["agent"]["token"],
        "<redacted>"
    );
    assert!(file("outbox.json")["dead_letters"].is_array());
    assert_eq!(file("runs.json")["starts_24h"], 1);

    // The command a technician runs over SSH, against the running service.
    let token_file = write(dir.path(), "status-token", token);
    let cli_cfg = write(
        dir.path(),
        "cli.toml",
        &format!(
            "[device]\nstate_dir = {state_dir:?}\n[status]\nlisten = \"{}\"\ntoken_file = {token_file:?}\n\
             [agent]\nurl = \"http://127.0.0.1:{}\"\ntoken = {agent_token:?}\n[outbox]\npath = {outbox:?}\n",
            h.status_addr(),
            mock.port
        ),
    );
    let bundle_cmd = |out: std::path::PathBuf| {
        let cli_cfg = cli_cfg.clone();
        tokio::task::spawn_blocking(move || {
            let o = run(talkie()
                .arg("--config")
                .arg(&cli_cfg)
                .arg("support-bundle")
                .arg(&out));
            assert!(o.status.success());
            (text(&o.stderr), std::fs::read(&out).unwrap())
        })
    };
    let (said, gz) = bundle_cmd(dir.path().join("live.tar.gz")).await.unwrap();
    assert!(said.contains("running service's support bundle"), "{said}");
    let files = unpack_bundle(&gz);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, live);
    assert_clean(&gz, &files, &[token, agent_token, words]);

    // The service is gone: what the disk says, and why.
    h.shutdown();
    h.wait().await.unwrap();
    let (said, gz) = bundle_cmd(dir.path().join("offline.tar.gz")).await.unwrap();
    assert!(said.contains("the service gave no bundle"), "{said}");
    let files = unpack_bundle(&gz);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "MANIFEST.txt",
            "service.txt",
            "config.json",
            "calibration.json",
            "runs.json",
            "board.json",
            "outbox.json",
            "journal.txt",
            "versions.json"
        ]
    );
    assert_clean(&gz, &files, &[token, agent_token, words]);
    let runs: serde_json::Value = serde_json::from_slice(&files[4].1).unwrap();
    assert!(runs.to_string().contains("clean"), "{runs}");
    assert!(files[6].1.starts_with(b"{"));
}

/// Issue 28 row 6: the page and `/api/v1/status` said `idle` while the
/// LEDs showed `offline`: the state shown was updated on button events
/// only, and an agent outage with nobody pressing made none. Here nobody
/// presses at all; the agent is down with a transcript waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_offline_when_the_agent_is_down_without_any_press() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = in_process_config(dir.path(), "dev_01.wav", "t0k3n-0123456789");
    let script = write(dir.path(), "no-presses.toml", "# nobody presses\n");
    cfg.gpio.script = Some(script);
    cfg.agent.url = Some("http://127.0.0.1:9".into());
    cfg.agent.breaker_failures = 1;
    cfg.outbox.path = dir.path().join("outbox.db");
    talkie::agent::outbox::Outbox::open(&cfg.outbox.path, 100)
        .unwrap()
        .outbox
        .enqueue("waiting", "{}")
        .unwrap();
    let h = start(cfg).await.unwrap();
    assert!(h.ready().await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let s = status_of(h.status_addr()).await;
        if s["state"] == "offline" && s["agent"]["breaker"] == "open" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page never showed offline: {}",
            s["state"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    h.shutdown();
    h.wait().await.expect("a clean stop");
}

/// Issue 28 row 7: a status port that could not be bound (in use, or an
/// address not assigned yet at boot) made the service exit. Now it starts
/// without its page, retries the port, and serves it once it is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_port_in_use_is_retried_not_an_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = in_process_config(dir.path(), "dev_01.wav", "t0k3n-0123456789");
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap();
    cfg.status.listen = port;
    let h = start(cfg).await.expect("starts without its page");
    assert!(h.ready().await, "ready while the port is taken");
    assert_eq!(h.status_addr(), port);
    drop(blocker);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    loop {
        if let Ok(r) = client
            .get(format!("http://{port}/api/v1/status"))
            .send()
            .await
        {
            let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
            assert_eq!(v["device_id"], "dev_01.wav");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never served");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    h.shutdown();
    h.wait().await.expect("a clean stop");
}
