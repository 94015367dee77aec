//! The reliability ("chaos") suite of issue 18, in-process: mutation fuzzing
//! of configuration files and `--set` overrides, WAV uploads and raw HTTP
//! requests to the status server, each for a fixed number of iterations
//! from a fixed seed (a failure reproduces exactly), and a full disk under
//! the outbox. Each case asserts no panic, an answer to every input, and a
//! bounded peak RSS; each writes one line of the report
//! (`target/chaos/<case>.md`, gathered by `make chaos` into
//! `target/chaos-report.md`; the last one is in docs/reliability.md).
//!
//! `CHAOS_ITERATIONS` multiplies every case's iterations (default 1: the
//! size `make test` runs; `make chaos` runs 10×). `CHAOS_SEED` changes the
//! seed (default 18, the number).
//!
//! The cases that need the real binary or real time (kill -9 loops under a
//! failing agent, a microphone that appears late, slow and idle connection
//! floods) are in the e2e suite and talkie's unit tests; docs/reliability.md
//! names each.

use std::path::PathBuf;

#[path = "../../firmware/tests/common/tmpfs.rs"]
mod tmpfs;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Once};
use std::time::Instant;
use tmpfs::Tmpfs;

/// Panics on tokio's worker threads: the status server's handler tasks (a
/// panic in a spawned task does not fail the test by itself). Only the
/// HTTP case runs a runtime here; the other cases catch their panics per
/// iteration.
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-"))
            {
                PANICS.fetch_add(1, Relaxed);
            }
            default(info);
        }));
    });
}

fn iterations(base: u64) -> u64 {
    base * std::env::var("CHAOS_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(18)
}

/// Peak resident set of this process, bytes (`VmHWM`).
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// One line of the report.
fn report(case: &str, line: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../chaos");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{case}.md")), format!("{line}\n"));
    eprintln!("{line}");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Things that break parsers, spliced into inputs.
const TOKENS: &[&[u8]] = &[
    b"=",
    b"[",
    b"]]",
    b"\"",
    b"'''",
    b"\n",
    b"\r\n",
    b"\0",
    b"\xff\xfe",
    b"1e999",
    b"-1",
    b"nan",
    b"inf",
    b"-0",
    b"99999999999999999999999",
    b"18446744073709551616",
    b"[[audio]]",
    b"\\u0000",
    b"{",
    b"}",
    b"%",
    b"..",
    b"/dev/zero",
    b"0x",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 99999999999\r\n",
    b"Content-Length: -1\r\n",
    b"\r\n\r\n",
    b"HTTP/1.1",
    b"Authorization: Bearer x\r\n",
];

/// One random change to `input`: flip a byte, drop or repeat a run, splice
/// a token, cut the tail, or set a byte to an edge value.
fn mutate(rng: &mut fastrand::Rng, input: &mut Vec<u8>) {
    let len = input.len();
    let at = if len == 0 { 0 } else { rng.usize(..len) };
    match rng.u8(..7) {
        0 if len > 0 => input[at] ^= 1 << rng.u8(..8),
        1 if len > 0 => {
            let end = (at + rng.usize(1..64)).min(len);
            input.drain(at..end);
        }
        2 if len > 0 => {
            let end = (at + rng.usize(1..64)).min(len);
            let run = input[at..end].to_vec();
            for _ in 0..rng.usize(1..4) {
                input.splice(at..at, run.iter().copied());
            }
        }
        3 => {
            let t = TOKENS[rng.usize(..TOKENS.len())];
            input.splice(at..at, t.iter().copied());
        }
        4 if len > 0 => input.truncate(at),
        5 if len > 0 => input[at] = [0, 0x7f, 0x80, 0xff][rng.usize(..4)],
        _ => input.insert(at, rng.u8(..)),
    }
}

/// A mutated copy of one of `corpus` (1–4 changes).
fn mutant(rng: &mut fastrand::Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut m = corpus[rng.usize(..corpus.len())].clone();
    for _ in 0..rng.usize(1..5) {
        mutate(rng, &mut m);
    }
    m
}

/// Configuration files and `--set` overrides, mutated: every one is either
/// a configuration or a `ConfigError`, never a panic.
#[test]
fn mutated_config_files_and_overrides_are_errors_not_panics() {
    let started = Instant::now();
    let corpus: Vec<Vec<u8>> = [
        std::fs::read(repo().join("board/talkie.toml")).unwrap(),
        b"[audio]\nbackend = \"file\"\nfile = \"x.wav\"\n[gpio]\nbackend = \"none\"\n".to_vec(),
        b"[agent]\nurl = \"https://agent.example/v1\"\ntoken = \"abcd\"\n[outbox]\nmax_items = 10\n"
            .to_vec(),
        b"[stt]\nprecision = \"auto\"\nthreads = \"auto\"\n[ptt]\nspeculate_after_ms = 100\n".to_vec(),
    ]
    .into();
    let sets: Vec<Vec<u8>> = [
        "audio.device=hw:1,0",
        "stt.threads=2",
        "status.listen=0.0.0.0:8080",
        "ptt.speculative=false",
        "agent.url=http://127.0.0.1:1/",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut rng = fastrand::Rng::with_seed(seed());
    let (mut ok, mut err, mut panicked) = (0u64, 0u64, Vec::new());
    let n = iterations(3000);
    for i in 0..n {
        let text = String::from_utf8_lossy(&mutant(&mut rng, &corpus)).into_owned();
        let overrides = talkie::base::config::Overrides {
            sets: (0..rng.usize(..3))
                .map(|_| String::from_utf8_lossy(&mutant(&mut rng, &sets)).into_owned())
                .collect(),
            ..Default::default()
        };
        let path = PathBuf::from("/chaos/talkie.toml");
        match std::panic::catch_unwind(|| talkie::base::config::load_str(&path, &text, &overrides))
        {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                // Errors are for people: bounded, never a whole input.
                assert!(e.to_string().len() < 4096, "iteration {i}: {e}");
                err += 1;
            }
            Err(_) => panicked.push(i),
        }
    }
    report(
        "config",
        &format!(
            "| config files + `--set` | {n} mutants, seed {} | {ok} valid, {err} errors, {} panics | {:.1} s |",
            seed(),
            panicked.len(),
            started.elapsed().as_secs_f64()
        ),
    );
    assert!(panicked.is_empty(), "panicked at iterations {panicked:?}");
}

/// WAV uploads (`POST /api/v1/test/ptt`'s decoder), mutated mostly in the
/// header: every one is a clip or an error, never a panic, and the decoder
/// never allocates what a header merely claims.
#[test]
fn mutated_wav_uploads_are_errors_not_panics_and_memory_stays_bounded() {
    let started = Instant::now();
    let eval = std::env::var_os("TALKIE_EVAL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/eval"));
    let mut corpus = Vec::new();
    for rel in ["dev/dev_00.wav", "dev/48k_stereo/dev_01_48k_stereo.wav"] {
        let mut bytes = std::fs::read(eval.join(rel)).unwrap();
        bytes.truncate(64 * 1024);
        corpus.push(bytes);
    }
    let mut rng = fastrand::Rng::with_seed(seed());
    let (mut ok, mut err, mut panicked) = (0u64, 0u64, Vec::new());
    let n = iterations(1500);
    let rss_before = peak_rss();
    for i in 0..n {
        let mut m = corpus[rng.usize(..corpus.len())].clone();
        for _ in 0..rng.usize(1..4) {
            // Most changes land in the 44-byte header and its chunk sizes.
            if rng.bool() {
                let at = rng.usize(..64.min(m.len()));
                m[at] = rng.u8(..);
            } else {
                mutate(&mut rng, &mut m);
            }
        }
        match std::panic::catch_unwind(|| talkie::audio::clip::decode_pipeline_clip(&m, 10)) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(_)) => err += 1,
            Err(_) => panicked.push(i),
        }
    }
    let grew = peak_rss().saturating_sub(rss_before);
    report(
        "wav",
        &format!(
            "| WAV uploads | {n} mutants, seed {} | {ok} decoded, {err} errors, {} panics; peak RSS +{} MiB | {:.1} s |",
            seed(),
            panicked.len(),
            grew >> 20,
            started.elapsed().as_secs_f64()
        ),
    );
    assert!(panicked.is_empty(), "panicked at iterations {panicked:?}");
    assert!(grew < 256 << 20, "peak RSS grew {} MiB", grew >> 20);
}

/// A status server like the service's (same router, limits and accept
/// loop) with a technician token, on a free loopback port.
async fn status_server(
    token: &str,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
    Arc<talkie::status::Shared>,
) {
    let mut cfg = talkie::base::config::Config::default();
    cfg.status.token = Some(talkie::base::config::Secret::new(token));
    let cancel = tokio_util::sync::CancellationToken::new();
    let shared = Arc::new(talkie::status::Shared::new(
        &cfg,
        "chaos".into(),
        Arc::default(),
        Arc::default(),
        Some(Arc::default()),
        talkie::base::logring::LogRing::default(),
        talkie::ptt::RecentTranscripts::default(),
        cancel.clone(),
    ));
    shared.ready.store(true, Relaxed);
    let (listener, addr) = talkie::status::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let server = tokio::spawn(talkie::status::serve(
        listener,
        Arc::clone(&shared),
        cancel.clone(),
    ));
    (addr, cancel, server, shared)
}

/// Send `req`, half-close, read the answer (bounded in size and time).
async fn exchange(addr: std::net::SocketAddr, req: &[u8]) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // The server may answer and close before reading everything.
    let _ = c.write_all(req).await;
    let _ = c.shutdown().await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        (&mut c).take(1 << 20).read_to_end(&mut out),
    )
    .await;
    match read {
        Err(_) => Err("no answer and no close within 30 s".into()),
        // A reset after an early answer is fine; the answer counts.
        Ok(_) => Ok(out),
    }
}

/// Raw HTTP requests to the status server, mutated: each gets an HTTP
/// answer or a close (never a hang), no handler panics, the server still
/// answers `/healthz` afterwards, its RSS stays bounded, and no mutant
/// with a wrong or broken token is let in as a technician.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_http_requests_get_an_answer_and_the_server_stays_up() {
    count_panics();
    let started = Instant::now();
    let before = PANICS.load(Relaxed);
    let token = "chaos-technician-token-0123456789";
    let (addr, cancel, server, shared) = status_server(token).await;
    let wav = {
        let mut w = Vec::new();
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut wr = hound::WavWriter::new(std::io::Cursor::new(&mut w), spec).unwrap();
        for i in 0..1600 {
            wr.write_sample(((i % 50) * 300) as i16).unwrap();
        }
        wr.finalize().unwrap();
        w
    };
    let mut ptt = format!(
        "POST /api/v1/test/ptt HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer not-the-token\r\n\
         Content-Type: audio/wav\r\nContent-Length: {}\r\n\r\n",
        wav.len()
    )
    .into_bytes();
    ptt.extend_from_slice(&wav);
    let corpus: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: k\r\n\r\n".to_vec(),
        b"GET /api/v1/status HTTP/1.1\r\nHost: k\r\nAuthorization: Bearer wrong-token\r\n\r\n".to_vec(),
        b"GET /metrics HTTP/1.1\r\nHost: k\r\nAccept: */*\r\n\r\n".to_vec(),
        b"GET /readyz HTTP/1.1\r\nHost: k\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.1\r\nHost: k\r\n\r\n".to_vec(),
        b"POST /login HTTP/1.1\r\nHost: k\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 11\r\n\r\ntoken=guess".to_vec(),
        b"POST /api/v1/dead-letters/retry HTTP/1.1\r\nHost: k\r\nCookie: talkie_session=abc\r\nContent-Length: 12\r\n\r\n{\"all\":true}".to_vec(),
        b"POST /api/v1/capture?seconds=5 HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
        b"GET /api/v1/support-bundle HTTP/1.1\r\nHost: k\r\nAuthorization: Basic Y2hhb3M=\r\n\r\n".to_vec(),
        ptt,
    ];
    let mut rng = fastrand::Rng::with_seed(seed());
    let n = iterations(600);
    let rss_before = peak_rss();
    let (mut answered, mut closed, mut technician) = (0u64, 0u64, Vec::new());
    let mut codes = std::collections::BTreeMap::<String, u64>::new();
    for i in 0..n {
        let req = mutant(&mut rng, &corpus);
        let out = exchange(addr, &req)
            .await
            .unwrap_or_else(|e| panic!("iteration {i}: {e}: {:?}", String::from_utf8_lossy(&req)));
        if out.is_empty() {
            closed += 1;
            continue;
        }
        let head = String::from_utf8_lossy(&out[..out.len().min(12)]).into_owned();
        assert!(head.starts_with("HTTP/1.1 "), "iteration {i}: {head:?}");
        answered += 1;
        let code = head.get(9..12).unwrap_or("???").to_owned();
        *codes.entry(code.clone()).or_default() += 1;
        // No mutant carries the right token: a technician-only answer
        // (200 from a technician path) would be a hole.
        let text = String::from_utf8_lossy(&req);
        let tech_path = [
            "/api/v1/test/",
            "/api/v1/capture",
            "/api/v1/dead-letters",
            "/api/v1/support-bundle",
        ]
        .iter()
        .any(|p| text.starts_with(&format!("GET {p}")) || text.starts_with(&format!("POST {p}")));
        if tech_path && code.starts_with('2') {
            technician.push(i);
        }
    }
    // Still serving.
    let health = exchange(addr, b"GET /healthz HTTP/1.1\r\nHost: k\r\n\r\n")
        .await
        .unwrap();
    let conns = &shared.conns;
    assert!(
        health.starts_with(b"HTTP/1.1 200"),
        "{:?}; open {} refused {} accept errors {}",
        String::from_utf8_lossy(&health),
        conns.open.load(Relaxed),
        conns.refused.load(Relaxed),
        conns.accept_errors.load(Relaxed)
    );
    let grew = peak_rss().saturating_sub(rss_before);
    let panics = PANICS.load(Relaxed) - before;
    cancel.cancel();
    let _ = server.await;
    report(
        "http",
        &format!(
            "| raw HTTP to the status port | {n} mutants, seed {} | {answered} answered ({}), {closed} closed, {} let in, {panics} panics; `/healthz` 200 after; peak RSS +{} MiB | {:.1} s |",
            seed(),
            codes
                .iter()
                .map(|(c, k)| format!("{c}×{k}"))
                .collect::<Vec<_>>()
                .join(" "),
            technician.len(),
            grew >> 20,
            started.elapsed().as_secs_f64()
        ),
    );
    assert!(
        technician.is_empty(),
        "let in without the token: {technician:?}"
    );
    assert_eq!(panics, 0);
    assert!(grew < 256 << 20, "peak RSS grew {} MiB", grew >> 20);
}

/// Disk full under the outbox, on a 16 MiB tmpfs.
/// - The outbox fills it itself: new items are refused with the typed
///   `DiskFull` error once less than `DISK_RESERVE` is free, and every
///   waiting item can still be delivered (moved to `delivered`), after
///   which new items are taken again.
/// - Something else fills it to the last byte: new items are refused (an
///   error, never a panic or a half-written item); once the filler is gone
///   the outbox takes items again; reopened, every committed item is there,
///   in order.
#[test]
fn a_full_disk_refuses_new_items_keeps_the_old_and_recovers() {
    use talkie::agent::outbox::{Outbox, OutboxError, DISK_RESERVE};
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // No silent skip (issue 29): without a tmpfs this fails, unless
    // TALKIE_SKIP_TMPFS=1 says on purpose that it cannot be mounted here.
    let Some(fs) = Tmpfs::mount_or_skip(dir.path(), "16m") else {
        report(
            "disk-full",
            "| disk full (tmpfs) | skipped: TALKIE_SKIP_TMPFS=1 | – | – |",
        );
        return;
    };
    let path = fs.0.join("outbox.db");
    let body = "x".repeat(4000);
    let fill = |o: &mut Outbox, prefix: &str, ids: &mut Vec<String>| loop {
        let id = format!("{prefix}-{:05}", ids.len());
        match o.enqueue(&id, &body) {
            Ok(()) => ids.push(id),
            Err(e) => return e,
        }
        assert!(ids.len() < 20_000, "a 16 MiB disk never filled");
    };

    // 1. The outbox fills the disk itself.
    let mut o = Outbox::open(&path, 1_000_000).unwrap().outbox;
    let mut first = Vec::new();
    let refused = fill(&mut o, "own", &mut first);
    assert!(
        matches!(refused, OutboxError::DiskFull { .. }),
        "{refused:?}"
    );
    assert!(o.enqueue("again", "y").is_err());
    for id in &first {
        let head = o.head().unwrap().unwrap();
        assert_eq!(&head.id, id);
        o.mark_delivered(head.seq, Some("ok"))
            .unwrap_or_else(|e| panic!("delivering {id} on a full disk: {e}"));
    }
    assert_eq!(o.depth().unwrap(), 0);
    o.enqueue("after-drain", "y").unwrap();

    // 2. Something else fills the disk to the last byte.
    let mut second = vec!["after-drain".to_owned()];
    let filler = fs.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let refused_other = o.enqueue("while-full", &body).unwrap_err();
    assert_eq!(o.depth().unwrap(), 1, "nothing half-written");
    std::fs::remove_file(&filler).unwrap();
    let _ = fill(&mut o, "later", &mut second);
    assert!(second.len() > 1, "taken again once space is free");
    drop(o);
    let mut o = Outbox::open(&path, 1_000_000).unwrap().outbox;
    assert_eq!(o.depth().unwrap(), second.len() as u64, "none lost");
    for id in &second {
        let head = o.head().unwrap().unwrap();
        assert_eq!(&head.id, id, "in order");
        o.mark_delivered(head.seq, None).unwrap();
    }
    drop(o);
    drop(fs);
    report(
        "disk-full",
        &format!(
            "| disk full (16 MiB tmpfs, reserve {} MiB) | the outbox fills it; then a filler file fills it to the last byte | own fill: {} items, then `DiskFull`, all {} delivered on the full disk, new items taken; filler: refused ({}), {} items taken after it was removed, reopened: none lost, order kept | {:.1} s |",
            DISK_RESERVE >> 20,
            first.len(),
            first.len(),
            refused_other.to_string().chars().take(60).collect::<String>(),
            second.len(),
            started.elapsed().as_secs_f64()
        ),
    );
}
