//! A service process and HTTP over loopback: reqwest for exchanges, raw
//! bytes where the wire itself is under test.

use super::*;
use std::path::{Path, PathBuf};

pub fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}

/// The system tools a test needs, found on PATH; `None` only when the
/// documented variable `skip_var` says on purpose that they are missing —
/// otherwise a missing tool fails the test (no silent skips, issue 29;
/// docs/development.md lists the variables). `packages` is what `make
/// test` installs for them.
pub fn tools_or_skip(names: &[&str], skip_var: &str, packages: &str) -> Option<Vec<PathBuf>> {
    let found: Result<Vec<PathBuf>, &str> =
        names.iter().map(|n| which(n).map_err(|()| *n)).collect();
    match found {
        Ok(paths) => Some(paths),
        Err(missing) => {
            assert!(
                std::env::var_os(skip_var).is_some(),
                "{missing} is not installed (make test installs {packages}; set {skip_var}=1 to skip)"
            );
            eprintln!("{missing} missing: skipped ({skip_var})");
            None
        }
    }
}

/// One HTTP exchange through reqwest: (status code, lower-cased response
/// headers, body). Redirects are not followed and no connection is kept
/// (one connection per exchange), so per-address connection caps count
/// exactly what a test opened.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let (code, hdrs, body) = exchange(port, method, path, headers, body, 10);
    (code, hdrs, String::from_utf8_lossy(&body).into_owned())
}

/// The callers are plain `#[test]`s: one client and one runtime for the
/// whole test process.
fn exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_s: u64,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    static CLIENT: std::sync::OnceLock<(tokio::runtime::Runtime, reqwest::Client)> =
        std::sync::OnceLock::new();
    let (rt, client) = CLIENT.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        (rt, client)
    });
    let mut req = client
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("http://127.0.0.1:{port}{path}"),
        )
        .timeout(std::time::Duration::from_secs(timeout_s));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.to_vec());
    rt.block_on(async move {
        let resp = req.send().await.unwrap();
        let code = resp.status().as_u16();
        let hdrs = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        (code, hdrs, resp.bytes().await.unwrap().to_vec())
    })
}

/// The same exchange written byte for byte on a plain TCP connection, for
/// the tests where the wire is the point: a body larger than the server
/// reads, answered (413) before it is sent in full, which a client library
/// reports as a broken pipe rather than as the answer.
pub fn raw_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut head_lines = head.lines();
    let code = head_lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    let hdrs = head_lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (code, hdrs, body.to_owned())
}

/// POST with headers; the raw response body bytes (for WAV downloads).
pub fn http_bytes(port: u16, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    exchange(port, "POST", path, headers, b"", 30).2
}

/// GET: (status code, body).
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let (code, _, body) = http(port, "GET", path, &[], b"");
    (code, body)
}

pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `talkie run` with `cfg`, JSON logs; returns once it logged "ready",
/// with the rest of its log lines forwarded to the returned channel.
pub fn start_service(cfg: &Path) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    start_service_with(talkie().arg("--config").arg(cfg))
}

/// [`start_service`] with a command the caller prepared (environment,
/// `--set` overrides).
pub fn start_service_with(
    cmd: &mut std::process::Command,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    start_service_lines(cmd, false)
}

/// [`start_service_with`], and with `keep_early` the log lines from before
/// "ready" stay in the channel too (for what happens during start-up, in
/// whatever order the threads log it).
pub fn start_service_lines(
    cmd: &mut std::process::Command,
    keep_early: bool,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut child = cmd
        .args(["--log-format", "json", "run"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let l = lines
            .next()
            .expect("talkie ended before it was ready")
            .unwrap();
        let ready = l.contains("\"message\":\"ready\"");
        if keep_early {
            let _ = tx.send(l);
        }
        if ready {
            break;
        }
    }
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (child, rx)
}

/// Wait (bounded) for a log line containing `needle`.
pub fn wait_log(rx: &std::sync::mpsc::Receiver<String>, needle: &str) -> String {
    wait_log_for(rx, needle, std::time::Duration::from_secs(30))
}

/// [`wait_log`] with a bound of the caller's (room for recognition on a
/// slow CPU).
pub fn wait_log_for(
    rx: &std::sync::mpsc::Receiver<String>,
    needle: &str,
    within: std::time::Duration,
) -> String {
    let deadline = std::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(needle) => return l,
            Ok(_) => {}
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

pub fn sigterm_and_wait(child: &mut std::process::Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap()
}
