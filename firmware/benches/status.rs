//! Status server under load: the real `talkie run` (release) on the file
//! backend at real time (`dev_long.wav` three times over), 200 concurrent SSE clients on `/api/v1/events`
//! plus 1,000 requests/s to `/api/v1/status` over loopback for
//! `TALKIE_STATUS_BENCH_S` seconds (default 60). Reports the p50/p99/max of
//! `/api/v1/status`, SSE events received, the service's dropped frames and
//! xruns over the run, and its RSS before and after (VmRSS).
//! Writes `target/bench/status.{md,json}`.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{machine, mean, percentile, write_report};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SSE_CLIENTS: usize = 200;
const RATE: u64 = 1_000;

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// dev_long.wav (60 s) three times over, in `dir`: the run must outlast
/// the load.
fn long_input(eval: &Path, dir: &Path) -> PathBuf {
    let input = dir.join("long.wav");
    let mut r = hound::WavReader::open(eval.join("dev/dev_long.wav")).unwrap();
    let spec = r.spec();
    let samples: Vec<i16> = r.samples::<i16>().map(Result::unwrap).collect();
    let mut w = hound::WavWriter::create(&input, spec).unwrap();
    for _ in 0..3 {
        for &s in &samples {
            w.write_sample(s).unwrap();
        }
    }
    w.finalize().unwrap();
    input
}

/// The load: [`SSE_CLIENTS`] clients on `/api/v1/events` and [`RATE`]
/// requests/s to `/api/v1/status` for `seconds`; (latencies in ms, failed
/// requests, SSE level events received).
async fn drive_load(base: &str, seconds: u64) -> (Vec<f64>, u64, u64) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    let events = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut sse = Vec::new();
    for _ in 0..SSE_CLIENTS {
        let (client, url, events, stop) = (
            client.clone(),
            format!("{base}/api/v1/events"),
            Arc::clone(&events),
            stop.clone(),
        );
        sse.push(tokio::spawn(async move {
            let Ok(mut resp) = client.get(url).send().await else {
                return;
            };
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    c = resp.chunk() => match c {
                        Ok(Some(bytes)) => {
                            let n = bytes.windows(12).filter(|w| w == b"event: level").count();
                            events.fetch_add(n as u64, Relaxed);
                        }
                        _ => return,
                    }
                }
            }
        }));
    }
    let errors = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut inflight = Vec::new();
    while Instant::now() < end {
        tick.tick().await;
        let (client, url, tx, errors) = (
            client.clone(),
            format!("{base}/api/v1/status"),
            tx.clone(),
            Arc::clone(&errors),
        );
        inflight.push(tokio::spawn(async move {
            let t0 = Instant::now();
            match client.get(url).send().await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    let _ = tx.send(t0.elapsed().as_secs_f64() * 1000.0);
                }
                _ => {
                    errors.fetch_add(1, Relaxed);
                }
            }
        }));
        if inflight.len() > 4096 {
            inflight.retain(|h: &tokio::task::JoinHandle<()>| !h.is_finished());
        }
    }
    for h in inflight {
        let _ = h.await;
    }
    stop.cancel();
    for h in sse {
        let _ = h.await;
    }
    drop(tx);
    let mut lat = Vec::new();
    while let Some(l) = rx.recv().await {
        lat.push(l);
    }
    (lat, errors.load(Relaxed), events.load(Relaxed))
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let eval = std::env::var_os("TALKIE_EVAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../shared/eval"));
    let seconds: u64 = std::env::var("TALKIE_STATUS_BENCH_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = root.join("target/bench/status-run");
    std::fs::create_dir_all(&dir).unwrap();
    let input = long_input(&eval, &dir);
    let cfg = dir.join("talkie.toml");
    std::fs::write(
        &cfg,
        format!(
            "[audio]\nbackend = \"file\"\nfile = {input:?}\nrealtime = true\n[stt]\nmodel_dir = {:?}\n\
             calibration_file = {:?}\n[status]\nlisten = \"127.0.0.1:{port}\"\n",
            root.join("models/build"),
            dir.join("calibration.json")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_talkie"))
        .arg("--config")
        .arg(&cfg)
        .args(["--log-format", "json", "run"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    for l in lines.by_ref() {
        if l.unwrap().contains("\"message\":\"ready\"") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let status = |base: &str| -> serde_json::Value {
        let url = format!("{base}/api/v1/status");
        rt.block_on(async {
            let body = reqwest::get(url).await.unwrap().bytes().await.unwrap();
            serde_json::from_slice(&body).unwrap()
        })
    };
    let status_before = status(&base);
    let rss_before = rss_kb(pid);
    eprintln!("status bench: {SSE_CLIENTS} SSE clients + {RATE} req/s for {seconds} s …");
    let (latencies, errors, events) = rt.block_on(drive_load(&base, seconds));
    let rss_after = rss_kb(pid);
    let status_after = status(&base);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    let mic = |s: &serde_json::Value, k: &str| s["microphone"][k].as_u64().unwrap_or(0);
    let dropped = mic(&status_after, "frames_dropped") - mic(&status_before, "frames_dropped");
    let xruns = mic(&status_after, "xruns") - mic(&status_before, "xruns");
    let (p50, p99, max) = (
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.iter().copied().fold(0.0, f64::max),
    );
    let growth_mb = (rss_after as f64 - rss_before as f64) / 1024.0;
    let machine = machine();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let md = format!(
        "# Status server benchmark\n\nMachine: {machine}; release build. The service runs on the file backend at \
         real time (`dev_long.wav`); on loopback, {SSE_CLIENTS} SSE clients on `/api/v1/events` and {RATE} requests/s \
         to `/api/v1/status` for {seconds} s (reqwest client in the same machine, 2 runtime threads).\n\n\
         | measure | value | target |\n|---|---|---|\n\
         | `/api/v1/status` requests answered | {} ({errors} failed) | |\n\
         | `/api/v1/status` latency p50 / p99 / max | {p50:.2} / {p99:.2} / {max:.1} ms (mean {:.2}) | p99 ≤ 20 ms ({}) |\n\
         | SSE level events received | {events} ({:.1}/s per client) | ~10/s |\n\
         | audio frames dropped during the run | {dropped} | 0 ({}) |\n\
         | xruns during the run | {xruns} | 0 ({}) |\n\
         | service RSS before → after | {:.1} → {:.1} MB ({growth_mb:+.1} MB) | growth ≤ 10 MB ({}) |\n\n\
         Command: `make bench` (`cargo bench -p talkie --bench status`).\n",
        latencies.len(),
        mean(&latencies),
        verdict(p99 <= 20.0),
        events as f64 / SSE_CLIENTS as f64 / seconds as f64,
        verdict(dropped == 0),
        verdict(xruns == 0),
        rss_before as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        verdict(growth_mb <= 10.0),
    );
    let json = serde_json::json!({
        "bench": "status",
        "machine": machine,
        "seconds": seconds,
        "sse_clients": SSE_CLIENTS,
        "rate_per_s": RATE,
        "requests": latencies.len(),
        "failed": errors,
        "latency_ms": {"p50": p50, "p99": p99, "max": max, "mean": mean(&latencies)},
        "sse_level_events": events,
        "frames_dropped": dropped,
        "xruns": xruns,
        "rss_mb": {"before": rss_before as f64 / 1024.0, "after": rss_after as f64 / 1024.0, "growth": growth_mb},
    });
    write_report("status", &json, &md);
}
