//! The status page in a real (headless) Chromium.

use crate::support::*;
use std::path::Path;
use std::process::Command;

/// A headless Chromium driven over the DevTools protocol (one page).
struct Browser {
    child: std::process::Child,
    ws: tungstenite::WebSocket<std::net::TcpStream>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Option<Self> {
        let exe = ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|n| which(n).ok());
        let Some(exe) = exe else {
            assert!(
                std::env::var_os("TALKIE_SKIP_BROWSER").is_some(),
                "chromium is not installed (make test installs it; set TALKIE_SKIP_BROWSER=1 to skip)"
            );
            return None;
        };
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--window-size=1000,1500",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Chromium writes its DevTools port here once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let port: u16 = loop {
            if let Some(p) = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.parse().ok()))
            {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "chromium did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        let (_, _, list) = http(port, "GET", "/json/list", &[], b"");
        let targets: serde_json::Value = serde_json::from_str(&list).unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .unwrap();
        let url = page["webSocketDebuggerUrl"].as_str().unwrap().to_owned();
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).unwrap();
        Some(Self {
            child,
            ws,
            next_id: 0,
            _profile: profile,
        })
    }

    /// Send one DevTools command and return its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let m = self.ws.read().unwrap();
            if let tungstenite::Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["id"] == id {
                    assert!(v.get("error").is_none(), "{method}: {v}");
                    return v["result"].clone();
                }
            }
        }
    }

    fn eval(&mut self, js: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
        );
        r["result"]["value"].clone()
    }

    /// The page's `<body data-*>` record of what it saw.
    fn dataset(&mut self) -> serde_json::Value {
        let seen = self.eval("JSON.stringify(document.body.dataset)");
        serde_json::from_str(seen.as_str().unwrap_or("{}")).unwrap()
    }

    /// Poll the dataset until `done` holds (bounded: 60 s); the last one.
    fn wait_for(
        &mut self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let d = self.dataset();
            if done(&d) {
                return d;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: page saw {d}");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// A PNG of the page as it is now, into `target/<name>`.
    fn screenshot(&mut self, name: &str) {
        use base64::Engine as _;
        let shot = self.call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png", "captureBeyondViewport": true }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"));
        let out = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(name);
        std::fs::write(&out, &png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The technician token of the browser test's service.
const TOKEN: &str = "browser-technician-token-0123456789";

#[test]
fn status_page_in_a_real_browser_shows_live_state_and_level() {
    let Some(mut browser) = Browser::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let input = eval_dir().join("dev/dev_long.wav");
    // One long press while speech plays: idle → listening → processing → idle.
    let script = write(
        dir.path(),
        "buttons.toml",
        "[[event]]\nat_ms = 8000\naction = \"press\"\n[[event]]\nat_ms = 11000\naction = \"release\"\n",
    );
    let cfg = write(
        dir.path(),
        "talkie.toml",
        &format!(
            "[device]\nid = \"browser-test\"\nstate_dir = {:?}\n[audio]\nbackend = \"file\"\nfile = {input:?}\nrealtime = true\n\
             [stt]\nmodel_dir = {:?}\n[gpio]\nbackend = \"script\"\nscript = {script:?}\n\
             [status]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n",
            dir.path().join("state"),
            models_dir(),
        ),
    );
    let (mut child, logs) = start_service(&cfg);
    browser.call(
        "Page.navigate",
        serde_json::json!({ "url": format!("http://127.0.0.1:{port}/") }),
    );
    // The page's script records what it saw on <body data-*>; poll it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    let seen = loop {
        let d = browser.dataset();
        let events: u32 = d["levelEvents"].as_str().unwrap_or("0").parse().unwrap();
        let range: f64 = d["levelRange"].as_str().unwrap_or("0").parse().unwrap();
        let states = d["statesSeen"].as_str().unwrap_or("").to_owned();
        if (events >= 20
            && range >= 10.0
            && states.contains("listening")
            && states.contains("processing"))
            || std::time::Instant::now() > deadline
        {
            break (events, range, states);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let (events, range, states) = seen;
    assert!(events >= 20, "live level events received: {events}");
    assert!(
        range >= 10.0,
        "the level meter moved by {range} dB while speech played"
    );
    for s in ["idle", "listening", "processing"] {
        assert!(states.contains(s), "state {s} shown; saw {states}");
    }
    let device = browser.eval("document.getElementById('device').textContent");
    assert_eq!(device, "browser-test");
    let overall = browser.eval("document.getElementById('overall').dataset.ok");
    assert_eq!(overall, "true", "healthy");
    wait_log(&logs, "transcript");
    // Issue 20 item 6: the pictures, drawn from the API's JSON. Anyone
    // sees the level history and release → text; a technician (logged in
    // through the page's own form endpoint) the last utterance's waveform.
    let d = browser.wait_for("level history and a release → text bar", |d| {
        d["levelPoints"]
            .as_str()
            .unwrap_or("0")
            .parse::<u32>()
            .unwrap()
            >= 4
            && d["rttBars"] == "1"
    });
    assert!(d.get("wavePeaks").is_none(), "no waveform anonymously: {d}");
    let login = browser.eval(&format!(
        "fetch('/login', {{method: 'POST', body: new URLSearchParams({{token: '{TOKEN}'}})}}).then(r => r.status)"
    ));
    assert_eq!(login, 204, "logged in");
    browser.call(
        "Page.navigate",
        serde_json::json!({ "url": format!("http://127.0.0.1:{port}/") }),
    );
    let wave = talkie::ptt::trace::WAVE_POINTS.to_string();
    browser.wait_for("the waveform drawn", |d| d["wavePeaks"] == wave.as_str());
    let caption = browser.eval("document.getElementById('wave-caption').textContent");
    assert!(
        caption.as_str().unwrap().contains("region(s) shaded"),
        "{caption}"
    );
    let board = browser.eval("document.getElementById('board').textContent");
    assert!(
        board.as_str().unwrap().contains("memory available"),
        "{board}"
    );
    browser.screenshot("status-page.png");
    // Phone width: the panels reflow into one column and nothing is wider
    // than the screen; the charts redraw at the new width.
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({ "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true }),
    );
    let drawn: u32 = browser.dataset()["chartsDrawn"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    browser.wait_for("charts redrawn at phone width", |d| {
        d["chartsDrawn"]
            .as_str()
            .unwrap_or("0")
            .parse::<u32>()
            .unwrap()
            > drawn + 1
    });
    let widths = browser.eval(
        "JSON.stringify([document.documentElement.scrollWidth, document.getElementById('wave').width])",
    );
    let widths: Vec<u32> = serde_json::from_str(widths.as_str().unwrap()).unwrap();
    assert!(widths[0] <= 390, "the page fits a 390 px phone: {widths:?}");
    assert!(widths[1] > 0 && widths[1] <= 2 * 390, "{widths:?}");
    browser.screenshot("status-page-phone.png");
    assert!(sigterm_and_wait(&mut child).success());
}
