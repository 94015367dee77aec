//! systemd: notify socket, watchdog, signals, the unit file and the packages.

use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn run_notifies_systemd_loading_ready_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    // Read while talkie runs, as systemd does (an unread socket fills up).
    let reader = std::thread::spawn(move || {
        let mut msgs = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let last = m.contains("STOPPING=1");
            msgs.push(m);
            if last {
                break;
            }
        }
        msgs
    });
    let cfg = file_service_config(dir.path(), "dev_00.wav", "");
    // The default tier (`stt.model = "auto"`), as a kiosk starts it.
    let out = run(talkie()
        .env_remove("TALKIE_STT__MODEL")
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .arg("--config")
        .arg(&cfg)
        .arg("run"));
    assert_eq!(out.status.code(), Some(0));
    let msgs = reader.join().unwrap();
    eprintln!("{msgs:#?}");
    assert!(msgs[0].contains("STATUS=loading models") && msgs[0].contains("EXTEND_TIMEOUT_USEC="));
    let ready = msgs
        .iter()
        .position(|m| m.contains("READY=1"))
        .expect("READY=1");
    assert!(
        msgs[ready].contains("STATUS=listening on"),
        "{}",
        msgs[ready]
    );
    // Each stage of the load says what it is and extends the start
    // timeout again, so a slow board that progresses is not killed.
    let loading = &msgs[..ready];
    let stage = |s: &str| {
        loading
            .iter()
            .any(|m| m.contains(&format!("STATUS=loading models: {s}")))
    };
    assert!(
        stage("whisper-tiny: loading") && stage("warming up"),
        "{loading:#?}"
    );
    // `auto` loads Moonshine beside Whisper and times agreement wherever
    // two cores and 1 GiB of RAM allow it (then keeps it or drops it), and
    // loads Whisper alone where they do not.
    assert_eq!(
        stage("moonshine-base: loading") && stage("timing agreement"),
        agreement_can_fit(),
        "{loading:#?}"
    );
    for m in loading
        .iter()
        .filter(|m| m.contains("STATUS=loading models"))
    {
        assert!(m.contains("EXTEND_TIMEOUT_USEC=120000000"), "{m}");
    }
    let pings = msgs.iter().filter(|m| m.trim() == "WATCHDOG=1").count();
    assert!(
        pings >= 2,
        "pinged at half of WATCHDOG_USEC while healthy: {pings}"
    );
    let first_ping = msgs.iter().position(|m| m.trim() == "WATCHDOG=1").unwrap();
    assert!(first_ping > ready, "no ping before READY");
    assert!(msgs.last().unwrap().contains("STOPPING=1"));
}

/// Two cores and 1 GiB of RAM, where `stt.model = "auto"` loads both
/// models to time agreement (the rule's own reading of the board).
fn agreement_can_fit() -> bool {
    let cpu = talkie_speech::stt::calibrate::CpuInfo::read();
    cpu.cores >= 2 && !cpu.low_memory()
}

#[test]
fn a_wedged_loop_stops_the_watchdog_pings_within_two_intervals() {
    use std::io::BufRead;
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};
    // WATCHDOG_USEC 2 s → a ping every 1 s while healthy; stall_ms 1000, so
    // a loop that stops beating is stale ≤ 1 s later and the pings stop
    // within 2 × the interval.
    const INTERVAL: Duration = Duration::from_secs(1);
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // Every datagram with its arrival time, until 3 intervals after the
    // service says it is wedged (no ping may come in that time). A later
    // STATUS= that is not "wedged" means the loops beat again (a loop late
    // under load): keep reading.
    let notices = std::thread::spawn(move || {
        let mut msgs: Vec<(Instant, String)> = Vec::new();
        let mut buf = [0u8; 4096];
        let mut until: Option<Instant> = None;
        loop {
            if let Some(u) = until {
                let left = u.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                sock.set_read_timeout(Some(left)).unwrap();
            }
            let Ok(n) = sock.recv(&mut buf) else {
                if until.is_some() {
                    break;
                }
                panic!("no notice for 60 s: {msgs:#?}");
            };
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.contains("STATUS=wedged") {
                until.get_or_insert(Instant::now() + 3 * INTERVAL);
            } else if m.contains("STATUS=") {
                until = None;
            }
            msgs.push((Instant::now(), m));
        }
        msgs
    });
    let cfg = file_service_config(dir.path(), "dev_long.wav", "[watchdog]\nstall_ms = 1000\n");
    let mut child = talkie()
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .env("TALKIE_TEST_WEDGE", "stt:3000")
        .arg("--config")
        .arg(&cfg)
        .args(["--log-format", "json", "run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let logs = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .map(|l| (Instant::now(), l))
            .collect::<Vec<_>>()
    });
    let msgs = notices.join().unwrap();
    child.kill().unwrap(); // what systemd does to a wedged service
    child.wait().unwrap();
    let logs = logs.join().unwrap();
    let (hooked_at, _) = logs
        .iter()
        .find(|(_, l)| l.contains("TALKIE_TEST_WEDGE"))
        .expect("the hook's log line");
    let ready = msgs
        .iter()
        .position(|(_, m)| m.contains("READY=1"))
        .unwrap();
    let pings: Vec<Instant> = msgs[ready..]
        .iter()
        .filter(|(_, m)| m.trim() == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(
        pings.iter().filter(|t| *t < hooked_at).count() >= 1,
        "pings while healthy: {msgs:#?}"
    );
    let late: Vec<Duration> = pings
        .iter()
        .filter(|t| *t > hooked_at)
        .map(|t| t.duration_since(*hooked_at))
        .collect();
    assert!(
        late.iter().all(|d| *d <= 2 * INTERVAL),
        "pings after the wedge: {late:?}"
    );
    let wedged = msgs
        .iter()
        .rposition(|(_, m)| m.contains("STATUS=wedged"))
        .unwrap();
    assert_eq!(
        msgs[wedged].1.trim(),
        "STATUS=wedged: stt; watchdog pings withheld",
        "only the wedged loop is named"
    );
    assert!(
        !msgs[wedged..].iter().any(|(_, m)| m.contains("WATCHDOG=1")),
        "no ping after STATUS=wedged: {msgs:#?}"
    );
    assert!(logs
        .iter()
        .any(|(_, l)| l.contains("loops are wedged") && l.contains("stt")));
}

#[test]
fn systemd_unit_verifies_and_the_default_config_is_the_defaults() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let check = |cfg: &Path| {
        let out = run(talkie().arg("--config").arg(cfg).arg("check-config"));
        assert_eq!(out.status.code(), Some(0));
        text(&out.stdout)
    };
    let dir = tempfile::tempdir().unwrap();
    let empty = write(dir.path(), "empty.toml", "");
    assert_eq!(
        check(&root.join("board/talkie.toml")),
        check(&empty),
        "board/talkie.toml lists the defaults, all commented"
    );
    let shipped = std::fs::read_to_string(root.join("board/talkie.toml")).unwrap();
    for key in [
        "vad_auto_stop_ms",
        "led_pins",
        "breaker_open_s",
        "stall_ms",
        "max_items",
    ] {
        assert!(
            shipped.contains(&format!("# {key} = ")),
            "{key} is documented"
        );
    }
    // No silent skip (issue 29): `make test` installs systemd for this;
    // TALKIE_SKIP_SYSTEMD_ANALYZE=1 says on purpose that it is missing.
    let Some(mut tools) = tools_or_skip(
        &["systemd-analyze"],
        "TALKIE_SKIP_SYSTEMD_ANALYZE",
        "the systemd package",
    ) else {
        return;
    };
    let analyze = tools.remove(0);
    let unit = std::fs::read_to_string(root.join("board/systemd/talkie.service"))
        .unwrap()
        .replace("/usr/bin/talkie", env!("CARGO_BIN_EXE_talkie"));
    let path = write(dir.path(), "talkie.service", &unit);
    let out = run(Command::new(analyze).arg("verify").arg(&path));
    assert_eq!(out.status.code(), Some(0));
    let complaints = text(&out.stderr);
    assert!(
        !complaints.contains("talkie.service:"),
        "systemd-analyze verify: {complaints}"
    );
}

#[test]
fn models_package_is_arch_all_and_carries_every_manifest_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out_dir = tempfile::tempdir().unwrap();
    let out = run(Command::new(root.join("board/debian/build-debs.sh"))
        .arg("models")
        .env("DEB_OUT", out_dir.path())
        .env("DEB_COMPRESS", "none"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let deb = PathBuf::from(text(&out.stdout).trim());
    assert!(deb.ends_with("talkie-models_0.1.0-1_all.deb"), "{deb:?}");
    let field = |f: &str| text(&run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f)).stdout);
    assert_eq!(field("Architecture").trim(), "all");
    assert_eq!(field("Package").trim(), "talkie-models");
    let listing = text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout);
    let manifest = std::fs::read_to_string(root.join("models/manifest.toml")).unwrap();
    let files: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("file = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|f| !f.ends_with(".whl"))
        .chain(["manifest.toml"])
        .collect();
    // Whisper's and Moonshine's files (stt.model = "agreement" runs both).
    assert!(files.len() >= 19, "{files:?}");
    assert!(files.contains(&"moonshine_decoder_int8.onnx"), "{files:?}");
    for f in files {
        assert!(
            listing.contains(&format!("./usr/share/talkie/models/{f}\n")),
            "{f} missing from the package:\n{listing}"
        );
    }
}

#[test]
fn sigterm_during_transcription_and_during_delivery_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let token = write(dir.path(), "token", "t");
    // The agent is down (nothing listens on its port) while we speak.
    let cfg = agent_config(dir.path(), free_port());
    let mut text_cfg = std::fs::read_to_string(&cfg).unwrap();
    text_cfg.push_str(&format!(
        "[audio]\nbackend = \"file\"\nfile = {:?}\nrealtime = true\n[stt]\nmodel_dir = {:?}\n\
         [status]\nlisten = \"127.0.0.1:{port}\"\ntoken_file = {token:?}\n[log]\nlevel = \"info,talkie::agent=debug\"\n\
         [ptt]\nfinish_on_stop_ms = 20000\n",
        eval_dir().join("dev/dev_long.wav"),
        models_dir(),
    ));
    std::fs::write(&cfg, &text_cfg).unwrap();
    let bearer = [("Authorization", "Bearer t")];

    // 1. SIGTERM right after an utterance is submitted: shutdown finishes
    //    it and commits the transcript to the outbox.
    let (mut child, logs) = start_service(&cfg);
    let clip = std::fs::read(eval_dir().join("dev/dev_00.wav")).unwrap();
    assert_eq!(
        http(port, "POST", "/api/v1/test/ptt", &bearer, &clip).0,
        202
    );
    let t0 = std::time::Instant::now();
    assert!(sigterm_and_wait(&mut child).success());
    eprintln!("stopped {:?} after SIGTERM", t0.elapsed());
    let lines: Vec<String> = logs.try_iter().collect();
    // The controller counts the utterance as submitted before it answers
    // 202, and recognition takes far longer than the signal's delivery.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("finishing the utterance in progress")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Where is the nearest restroom?")),
        "the transcript was finished during shutdown"
    );
    assert_eq!(outbox_status(&cfg)["depth"], 1, "kept in the outbox");

    // 2. SIGTERM while the agent holds the request: abandoned, kept.
    let slow = MockAgent::start(dir.path(), "127.0.0.1:0", &["--delay-ms", "30000"]);
    let agent_line = text_cfg
        .lines()
        .find(|l| l.starts_with("url = "))
        .unwrap()
        .to_owned();
    edit(
        &cfg,
        &agent_line,
        &format!("url = \"http://127.0.0.1:{}\"", slow.port),
    );
    let (mut child, logs) = start_service(&cfg);
    wait_log(&logs, "\"sending\"");
    assert!(sigterm_and_wait(&mut child).success());
    let lines: Vec<String> = logs.try_iter().collect();
    assert!(
        lines.iter().any(|l| l.contains("request abandoned")),
        "{lines:?}"
    );
    assert_eq!(outbox_status(&cfg)["depth"], 1, "still in the outbox");
    drop(slow);

    // 3. The agent is back: the transcript arrives.
    let mock = MockAgent::start(dir.path(), "127.0.0.1:0", &[]);
    let slow_line = format!("url = \"http://127.0.0.1:{}\"", {
        let t = std::fs::read_to_string(&cfg).unwrap();
        t.lines()
            .find(|l| l.starts_with("url = "))
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .trim_end_matches('"')
            .to_owned()
    });
    edit(
        &cfg,
        &slow_line,
        &format!("url = \"http://127.0.0.1:{}\"", mock.port),
    );
    assert!(deliver(&cfg).status.success());
    let got = std::fs::read_to_string(&mock.record).unwrap();
    assert!(got.contains("Where is the nearest restroom?"), "{got}");
    assert_eq!(outbox_status(&cfg)["depth"], 0);
}

/// Issue 20 item 7: a technician's `POST /api/v1/restart` stops the
/// service cleanly and it exits 75, which `talkie.service` restarts
/// (`RestartForceExitStatus=75`); a second request while stopping is a
/// conflict. The unit file carries the setting.
#[test]
fn a_technicians_restart_stops_cleanly_and_exits_75() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // dev_long plays for a minute at real time: the service is still
    // running when the request comes, on any machine.
    let cfg = file_service_config(dir.path(), "dev_long.wav", "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "listen = \"127.0.0.1:0\"",
        &format!(
            "listen = \"127.0.0.1:{port}\"\ntoken = \"restart-test-token-0123456789\"\nrestart_min_uptime_s = 0"
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let (mut child, logs) = start_service(&cfg);
    let bearer = [("Authorization", "Bearer restart-test-token-0123456789")];
    let (code, _, body) = http(port, "POST", "/api/v1/restart", &bearer, b"");
    assert_eq!(code, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["exit_status"], 75);
    let line = wait_log(&logs, "restart requested by a technician");
    assert!(
        line.contains("127.0.0.1"),
        "logs the client address: {line}"
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(75));
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/systemd/talkie.service"),
    )
    .unwrap();
    assert!(unit.contains("RestartForceExitStatus=75"));
}
