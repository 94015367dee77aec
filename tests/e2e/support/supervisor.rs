//! systemd, as far as talkie can tell: the real binary run the way
//! `board/systemd/talkie.service` runs it. A real notify socket
//! (`NOTIFY_SOCKET`, a Unix datagram socket this harness reads), the
//! unit's `WatchdogSec` as `WATCHDOG_USEC`, a kill (`SIGABRT`, systemd's
//! `WatchdogSignal`) when the pings stop for longer than that, restarts
//! after `RestartSec` on what `Restart=on-failure` and
//! `RestartForceExitStatus=` restart, and the unit's start limit
//! (`StartLimitBurst` in `StartLimitIntervalSec`, then the unit is failed).
//!
//! Timings come from the unit file, divided by a scale the test chooses
//! (minutes of the unit become seconds of a test); the service's own
//! timings are scaled by the same factor through its config.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The unit's restart and watchdog settings.
#[derive(Debug, Clone)]
pub struct Unit {
    pub watchdog: Duration,
    pub restart_sec: Duration,
    pub start_limit_burst: usize,
    pub start_limit_interval: Duration,
    pub timeout_start: Duration,
    pub force_restart_status: Vec<i32>,
}

impl Unit {
    /// `board/systemd/talkie.service` as shipped.
    pub fn shipped() -> Self {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../board/systemd/talkie.service");
        let text = std::fs::read_to_string(&path).unwrap();
        let key = |k: &str| -> String {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k}= not in {}", path.display()))
                .trim()
                .to_owned()
        };
        let secs = |k: &str| Duration::from_secs(key(k).parse().unwrap());
        assert_eq!(key("Type"), "notify");
        assert_eq!(
            key("Restart"),
            "on-failure",
            "the harness restarts as on-failure does"
        );
        Unit {
            watchdog: secs("WatchdogSec"),
            restart_sec: secs("RestartSec"),
            start_limit_burst: key("StartLimitBurst").parse().unwrap(),
            start_limit_interval: secs("StartLimitIntervalSec"),
            timeout_start: secs("TimeoutStartSec"),
            force_restart_status: key("RestartForceExitStatus")
                .split_whitespace()
                .map(|s| s.parse().unwrap())
                .collect(),
        }
    }

    /// Every timing divided by `by` but the start timeout (model loading
    /// takes what it takes on the machine at hand).
    pub fn scaled(self, by: u32) -> Self {
        Unit {
            watchdog: self.watchdog / by,
            restart_sec: self.restart_sec / by,
            start_limit_interval: self.start_limit_interval / by,
            ..self
        }
    }
}

/// Why the harness restarted the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// No `WATCHDOG=1` for longer than `WatchdogSec`.
    Watchdog,
    /// No `READY=1` within the start timeout.
    StartTimeout,
    /// Ended with this exit status (on-failure, or a forced restart one).
    Exit(i32),
    /// Killed by this signal (the test's `kill -9`, a crash).
    Signal(i32),
}

/// What the harness saw.
#[derive(Debug, Default)]
pub struct Record {
    /// Start times, the first included.
    pub starts: Vec<Instant>,
    pub restarts: Vec<(Instant, Cause)>,
    /// `READY=1` received, per start.
    pub readies: Vec<Instant>,
    pub pings: usize,
    /// The longest gap between two pings (or READY and the first ping).
    pub longest_ping_gap: Duration,
    /// Every `STATUS=` line, with its time.
    pub statuses: Vec<(Instant, String)>,
    /// The start limit was hit: the unit is failed, nothing restarts it.
    pub failed: bool,
    /// The last run ended with exit status 0 and was not restarted.
    pub exited_cleanly: bool,
    /// PID of the running service.
    pub pid: Option<u32>,
}

/// The service under the harness, supervised from a thread of its own.
pub struct Supervised {
    pub record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// stderr of every run, appended.
    pub log: PathBuf,
}

impl Supervised {
    /// Start `make_cmd()` (a fresh command per start) under `unit`.
    pub fn start(dir: &Path, unit: Unit, make_cmd: impl Fn() -> Command + Send + 'static) -> Self {
        let sock_path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let record = Arc::new(Mutex::new(Record::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let log = dir.join("service.log");
        let (r, s, l) = (Arc::clone(&record), Arc::clone(&stop), log.clone());
        let thread = std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || supervise(&unit, &sock, &sock_path, &make_cmd, &r, &s, &l))
            .unwrap();
        Supervised {
            record,
            stop,
            thread: Some(thread),
            log,
        }
    }

    /// Wait (bounded) until the service has said `READY=1` `n` times.
    pub fn wait_ready(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.record.lock().unwrap().readies.len() < n {
            assert!(
                Instant::now() < deadline,
                "not ready within {within:?}: {}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait (bounded) for the unit to become inactive: a clean exit that
    /// is not restarted, or the start limit. True on a clean exit.
    pub fn wait_inactive(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            {
                let r = self.record.lock().unwrap();
                if r.exited_cleanly || r.failed {
                    return r.exited_cleanly;
                }
            }
            assert!(
                Instant::now() < deadline,
                "still active after {within:?}: {}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Send `signal` to the running service.
    pub fn kill(&self, signal: i32) {
        if let Some(pid) = self.record.lock().unwrap().pid {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, signal) };
        }
    }

    /// The end of the service's log, for failure messages.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One run of the service: what it said and when.
struct Run {
    child: Child,
    started: Instant,
    ready: Option<Instant>,
    last_ping: Option<Instant>,
    start_deadline: Instant,
}

fn spawn(
    make_cmd: &dyn Fn() -> Command,
    sock_path: &Path,
    unit: &Unit,
    log: &Path,
    record: &Mutex<Record>,
) -> Run {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = make_cmd()
        .env("NOTIFY_SOCKET", sock_path)
        .env("WATCHDOG_USEC", unit.watchdog.as_micros().to_string())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let now = Instant::now();
    let mut r = record.lock().unwrap();
    r.starts.push(now);
    r.pid = Some(child.id());
    Run {
        child,
        started: now,
        ready: None,
        last_ping: None,
        start_deadline: now + unit.timeout_start,
    }
}

/// Read the notify socket and act as systemd would until `stop`.
fn supervise(
    unit: &Unit,
    sock: &UnixDatagram,
    sock_path: &Path,
    make_cmd: &dyn Fn() -> Command,
    record: &Mutex<Record>,
    stop: &AtomicBool,
    log: &Path,
) {
    let mut run = spawn(make_cmd, sock_path, unit, log, record);
    let mut buf = [0u8; 4096];
    while !stop.load(Relaxed) {
        if let Ok(n) = sock.recv(&mut buf) {
            notice(&String::from_utf8_lossy(&buf[..n]), &mut run, record);
        }
        let now = Instant::now();
        let cause = match run.child.try_wait().unwrap() {
            Some(status) => {
                use std::os::unix::process::ExitStatusExt;
                match (status.code(), status.signal()) {
                    (Some(0), _) => {
                        let mut r = record.lock().unwrap();
                        r.exited_cleanly = true;
                        r.pid = None;
                        return;
                    }
                    (Some(c), _) => Some(Cause::Exit(c)),
                    (None, Some(s)) => Some(Cause::Signal(s)),
                    (None, None) => Some(Cause::Exit(-1)),
                }
            }
            None => match (run.ready, run.last_ping) {
                (None, _) if now > run.start_deadline => Some(Cause::StartTimeout),
                (Some(ready), last) if now - last.unwrap_or(ready) > unit.watchdog => {
                    Some(Cause::Watchdog)
                }
                _ => None,
            },
        };
        let Some(cause) = cause else { continue };
        if matches!(cause, Cause::Watchdog | Cause::StartTimeout) {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(run.child.id() as i32, libc::SIGABRT) };
            let _ = run.child.wait();
        }
        let restart = !matches!(cause, Cause::Exit(c) if c == 0)
            || matches!(cause, Cause::Exit(c) if unit.force_restart_status.contains(&c));
        {
            let mut r = record.lock().unwrap();
            r.restarts.push((now, cause));
            r.pid = None;
            let recent = r
                .starts
                .iter()
                .filter(|t| now.duration_since(**t) < unit.start_limit_interval)
                .count();
            if !restart || recent >= unit.start_limit_burst {
                r.failed = true;
                return;
            }
        }
        let until = Instant::now() + unit.restart_sec;
        while Instant::now() < until && !stop.load(Relaxed) {
            let _ = sock.recv(&mut buf);
        }
        if stop.load(Relaxed) {
            return;
        }
        run = spawn(make_cmd, sock_path, unit, log, record);
    }
    // The test is over: stop the service as systemd stops a unit.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(run.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while run.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = run.child.kill();
    let _ = run.child.wait();
}

/// One datagram from the service.
fn notice(msg: &str, run: &mut Run, record: &Mutex<Record>) {
    let now = Instant::now();
    let mut r = record.lock().unwrap();
    for line in msg.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => {
                run.ready = Some(now);
                r.readies.push(now);
            }
            Some(("WATCHDOG", "1")) if run.ready.is_some() => {
                let since = run.last_ping.or(run.ready).unwrap_or(run.started);
                r.longest_ping_gap = r.longest_ping_gap.max(now - since);
                r.pings += 1;
                run.last_ping = Some(now);
            }
            Some(("EXTEND_TIMEOUT_USEC", v)) if run.ready.is_none() => {
                if let Ok(us) = v.parse::<u64>() {
                    run.start_deadline = run.start_deadline.max(now + Duration::from_micros(us));
                }
            }
            Some(("STATUS", s)) => r.statuses.push((now, s.to_owned())),
            _ => {}
        }
    }
}
