//! The status port's accept loop: the router ([`super::router`]) behind
//! limits a LAN client cannot talk its way around.
//!
//! - **Header-read and idle timeout**: a connection must deliver a
//!   complete request head within [`Limits::header_timeout`] of opening or
//!   of its previous response (hyper's timer starts as soon as it waits
//!   for a head, so an idle keep-alive connection and a slowloris one are
//!   closed alike). A streaming response (live events) is not cut.
//! - **Connection caps**: at most [`Limits::max_connections`] from the LAN
//!   at once (derived from the process's file-descriptor limit, so the
//!   agent link, the outbox and the audio device always have descriptors
//!   left), at most [`Limits::per_address`] of them from one address, and
//!   a separate allowance for loopback so the watchdog's own probe and a
//!   technician on the kiosk get in while the LAN allowance is used up.
//!   A connection over a cap is closed at once and counted
//!   ([`ConnStats::refused`]).
//! - **Accept errors** (EMFILE, ENFILE, ENOBUFS) are counted and logged at
//!   most every 10 s; the loop pauses 100 ms instead of spinning.
//! - **Protocol errors** that hyper answers itself, before any request
//!   reaches the router (a bad request line, a NUL in a header, 414, 431),
//!   leave as JSON with the security headers like every other answer
//!   (`Guarded`).

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connections kept for loopback clients (the watchdog's probe, `talkie
/// health`, a technician on the kiosk), besides the LAN allowance.
pub const LOOPBACK_CONNECTIONS: usize = 32;
/// How long open connections get to finish when the service stops.
const DRAIN: Duration = Duration::from_secs(2);

/// What the accept loop enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub per_address: usize,
    pub header_timeout: Duration,
}

impl Limits {
    /// Limits for a process allowed `nofile` descriptors: a quarter of
    /// them for LAN connections (16 to 1,024), an eighth of that per
    /// address (at least 4), 10 s to send a request head.
    pub fn for_fd_limit(nofile: u64) -> Self {
        let max = usize::try_from(nofile / 4)
            .unwrap_or(usize::MAX)
            .clamp(16, 1024);
        Self {
            max_connections: max,
            per_address: (max / 8).max(4),
            header_timeout: Duration::from_secs(10),
        }
    }
}

/// The process's soft limit of open files (`RLIMIT_NOFILE`); 1,024 when
/// it cannot be read.
pub fn fd_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        1024
    }
}

/// Open file descriptors of this process (`/proc/self/fd`).
pub fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64)
}

/// What the accept loop counts (read by `/metrics` and the status API).
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Connections closed at once because a cap was reached.
    pub refused: AtomicU64,
    /// `accept()` failures (out of descriptors, buffers).
    pub accept_errors: AtomicU64,
    /// The LAN cap in force (for the page).
    pub limit: AtomicU64,
    /// Live-event clients dropped because they stopped reading.
    pub stalled_dropped: AtomicU64,
}

/// One connection, as its requests see it: a live-event stream watches its
/// socket's send queue and closes the connection of a client that stopped
/// reading ([`watch_send_queue`]).
#[derive(Debug, Clone)]
pub struct ConnHandle {
    fd: std::os::fd::RawFd,
    close: CancellationToken,
}

/// Bytes queued unsent or unacknowledged on the socket (`SIOCOUTQ`).
fn send_queue(fd: std::os::fd::RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int; `fd` is this
    // connection's socket, open while the connection is served (the
    // watcher ends with the stream it belongs to).
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (r == 0).then(|| usize::try_from(n).unwrap_or(0))
}

/// Bytes in the send queue above which a live-event client counts as not
/// reading (the events come at about 1 KB/s; a reading client keeps the
/// queue near empty).
pub const STALL_BYTES: usize = 4 * 1024;
/// How long the queue may stay above [`STALL_BYTES`] before the
/// connection is closed.
pub const STALL_FOR: Duration = Duration::from_secs(5);

/// Close `conn` once its send queue has stayed above [`STALL_BYTES`] for
/// [`STALL_FOR`]; ends when `done` is cancelled (the stream ended).
pub async fn watch_send_queue(conn: ConnHandle, stats: Arc<ConnStats>, done: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut stalled_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = done.cancelled() => return,
            _ = conn.close.cancelled() => return,
            _ = tick.tick() => {}
        }
        match send_queue(conn.fd) {
            Some(q) if q > STALL_BYTES => {
                let since = *stalled_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= STALL_FOR {
                    stats.stalled_dropped.fetch_add(1, Relaxed);
                    tracing::info!(
                        queued = q,
                        "live-event client stopped reading: connection closed"
                    );
                    conn.close.cancel();
                    return;
                }
            }
            _ => stalled_since = None,
        }
    }
}

/// Open connections per address, and of loopback.
#[derive(Debug, Default)]
struct Slots {
    lan: usize,
    loopback: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// A connection's place under the caps, given back on drop.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    ip: IpAddr,
    stats: Arc<ConnStats>,
}

impl Slot {
    fn take(
        slots: &Arc<Mutex<Slots>>,
        ip: IpAddr,
        limits: &Limits,
        stats: &Arc<ConnStats>,
    ) -> Option<Self> {
        let mut s = slots.lock().unwrap_or_else(PoisonError::into_inner);
        if ip.is_loopback() {
            if s.loopback >= LOOPBACK_CONNECTIONS {
                return None;
            }
            s.loopback += 1;
        } else {
            let mine = s.per_address.get(&ip).copied().unwrap_or(0);
            if s.lan >= limits.max_connections || mine >= limits.per_address {
                return None;
            }
            s.lan += 1;
            s.per_address.insert(ip, mine + 1);
        }
        stats.open.fetch_add(1, Relaxed);
        Some(Self {
            slots: Arc::clone(slots),
            ip,
            stats: Arc::clone(stats),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if self.ip.is_loopback() {
            s.loopback = s.loopback.saturating_sub(1);
        } else {
            s.lan = s.lan.saturating_sub(1);
            if let Some(n) = s.per_address.get_mut(&self.ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    s.per_address.remove(&self.ip);
                }
            }
        }
        self.stats.open.fetch_sub(1, Relaxed);
    }
}

/// Serve `app` on `listener` under `limits` until `cancel`; then stop
/// accepting, ask every connection to finish and wait at most 2 s.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    cancel: CancellationToken,
) {
    stats.limit.store(limits.max_connections as u64, Relaxed);
    let slots = Arc::new(Mutex::new(Slots::default()));
    let conns = TaskTracker::new();
    let mut last_refusal_log: Option<Instant> = None;
    let mut last_error_log: Option<Instant> = None;
    let quiet = |last: &mut Option<Instant>| {
        let now = Instant::now();
        let due = last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if due {
            *last = Some(now);
        }
        due
    };
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Relaxed);
                if quiet(&mut last_error_log) {
                    tracing::warn!(error = %e, open = stats.open.load(Relaxed), fd_limit = fd_limit(), "status server cannot accept connections");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Some(slot) = Slot::take(&slots, peer.ip(), &limits, &stats) else {
            stats.refused.fetch_add(1, Relaxed);
            if quiet(&mut last_refusal_log) {
                tracing::warn!(peer = %peer.ip(), open = stats.open.load(Relaxed), limit = limits.max_connections, per_address = limits.per_address, refused_total = stats.refused.load(Relaxed), "status server: connection limit reached; closing new connections");
            }
            drop(stream);
            continue;
        };
        let (app, cancel) = (app.clone(), cancel.clone());
        let handle = ConnHandle {
            fd: std::os::fd::AsRawFd::as_raw_fd(&stream),
            close: CancellationToken::new(),
        };
        let stream = Guarded {
            inner: stream,
            pending: None,
        };
        conns.spawn(async move {
            let _slot = slot;
            let close = handle.close.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(handle.clone());
                app.clone().oneshot(req)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                // A client that sends its request and shuts its write side
                // (`nc -N`, scripts) still gets the answer: without this,
                // hyper closed at the EOF whenever it read it together
                // with the request (the chaos suite saw ~1 in 5 unanswered).
                .half_close(true)
                .max_buf_size(64 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(peer = %peer, error = %e, "status connection ended");
                    }
                }
                // A client that stopped reading its live events: dropping
                // the connection closes the socket.
                _ = close.cancelled() => {}
                _ = cancel.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(DRAIN, conn).await;
                }
            }
        });
    }
    conns.close();
    let _ = tokio::time::timeout(DRAIN + Duration::from_millis(500), conns.wait()).await;
}

/// A connection whose protocol errors hyper answers itself (with an
/// empty body and none of the router's headers) are rewritten into the
/// status port's JSON errors. Every answer of the router carries the
/// security headers; an error status line whose head does not is hyper's
/// own, written in one piece with no body, and is replaced whole.
struct Guarded {
    inner: tokio::net::TcpStream,
    /// The replacement being written, and how much of it is out.
    pending: Option<(Vec<u8>, usize)>,
}

/// The JSON answer for one of hyper's own error heads, or `None` if `head`
/// is not one.
fn rewrite_protocol_error(buf: &[u8]) -> Option<Vec<u8>> {
    // Cheap checks first: this sees every write of every connection.
    if !buf.starts_with(b"HTTP/1.") || !matches!(buf.get(9), Some(b'4' | b'5')) {
        return None;
    }
    let end = buf.windows(4).take(8192).position(|w| w == b"\r\n\r\n")?;
    let text = std::str::from_utf8(buf.get(..end)?).ok()?;
    let status_line = text.lines().next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?;
    let code: u16 = parts.next()?.parse().ok()?;
    if !version.starts_with("HTTP/1.") || !(400..600).contains(&code) {
        return None;
    }
    if text
        .to_ascii_lowercase()
        .contains("x-content-type-options:")
    {
        return None;
    }
    let reason = parts.next().unwrap_or("error").trim().to_owned();
    let body = serde_json::json!({ "error": format!("{} (the request could not be parsed)", reason.to_lowercase()) })
        .to_string();
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in super::reply::SECURITY_HEADERS {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Some(out.into_bytes())
}

impl tokio::io::AsyncRead for Guarded {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Guarded {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        if self.pending.is_none() {
            let Some(replacement) = rewrite_protocol_error(buf) else {
                return std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
            };
            self.pending = Some((replacement, 0));
        }
        // Write the replacement whole; hyper's bytes count as written then.
        let this = &mut *self;
        while let Some((bytes, done)) = this.pending.as_mut() {
            if *done >= bytes.len() {
                this.pending = None;
                return Poll::Ready(Ok(buf.len()));
            }
            let rest = bytes.get(*done..).unwrap_or_default();
            match std::pin::Pin::new(&mut this.inner).poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use std::io::{Read, Write};
    use std::net::SocketAddr;

    async fn start(limits: Limits) -> (SocketAddr, Arc<ConnStats>, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = Router::new().route("/healthz", get(|| async { "ok" }));
        let (stats, cancel) = (Arc::new(ConnStats::default()), CancellationToken::new());
        tokio::spawn(serve(l, app, limits, Arc::clone(&stats), cancel.clone()));
        (addr, stats, cancel)
    }

    /// Read until the server closes the connection (bounded: 30 s).
    fn read_to_close(s: &mut std::net::TcpStream) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
        }
    }

    /// Issue 18 row 4: a slowloris connection (half a request head) and an
    /// idle keep-alive one (after a full exchange) are both closed by the
    /// server; before, neither ever was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_and_idle_connections_are_closed() {
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::for_fd_limit(1024)
        };
        let (addr, stats, cancel) = start(limits).await;
        let out = tokio::task::spawn_blocking(move || {
            let mut slow = std::net::TcpStream::connect(addr).unwrap();
            slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            let slow_got = read_to_close(&mut slow);
            let mut idle = std::net::TcpStream::connect(addr).unwrap();
            idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let idle_got = read_to_close(&mut idle);
            (slow_got, idle_got)
        })
        .await
        .unwrap();
        let (slow, idle) = (
            String::from_utf8_lossy(&out.0),
            String::from_utf8_lossy(&out.1),
        );
        assert!(!slow.contains("200 OK"), "no answer to half a head: {slow}");
        assert!(idle.starts_with("HTTP/1.1 200 OK"), "{idle}");
        assert!(
            idle.ends_with("ok"),
            "answered, then closed while idle: {idle}"
        );
        cancel.cancel();
        assert_eq!(stats.refused.load(Relaxed), 0);
    }

    /// Issue 18 row 4: 1,100 idle connections ran the process out of
    /// descriptors. Over the per-address cap new connections are closed
    /// at once and counted; loopback keeps its own allowance.
    #[test]
    fn caps_refuse_and_give_back_slots() {
        let limits = Limits::for_fd_limit(1024);
        assert_eq!((limits.max_connections, limits.per_address), (256, 32));
        assert_eq!(Limits::for_fd_limit(65536).max_connections, 1024);
        assert_eq!(Limits::for_fd_limit(10).max_connections, 16);
        let slots = Arc::new(Mutex::new(Slots::default()));
        let stats = Arc::new(ConnStats::default());
        let lan: IpAddr = [192, 168, 1, 7].into();
        let held: Vec<Slot> = (0..limits.per_address)
            .map(|_| Slot::take(&slots, lan, &limits, &stats).expect("under the cap"))
            .collect();
        assert!(
            Slot::take(&slots, lan, &limits, &stats).is_none(),
            "per-address cap"
        );
        let other = Slot::take(&slots, [192, 168, 1, 8].into(), &limits, &stats);
        assert!(other.is_some(), "another address still gets in");
        let local: IpAddr = [127, 0, 0, 1].into();
        let loop_held: Vec<Slot> = (0..LOOPBACK_CONNECTIONS)
            .map(|_| Slot::take(&slots, local, &limits, &stats).unwrap())
            .collect();
        assert!(Slot::take(&slots, local, &limits, &stats).is_none());
        assert_eq!(
            stats.open.load(Relaxed),
            (limits.per_address + 1 + LOOPBACK_CONNECTIONS) as u64
        );
        drop(held);
        drop(loop_held);
        drop(other);
        assert_eq!(stats.open.load(Relaxed), 0);
        assert!(
            slots.lock().unwrap().per_address.is_empty(),
            "no entry left behind"
        );
        assert!(Slot::take(&slots, lan, &limits, &stats).is_some());
    }

    /// Over loopback's own cap, the server closes new connections without
    /// an answer and counts them; a closed one frees its slot.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_server_refuses_and_counts() {
        let (addr, stats, cancel) = start(Limits::for_fd_limit(1024)).await;
        let s2 = Arc::clone(&stats);
        tokio::task::spawn_blocking(move || {
            let mut held = Vec::new();
            for _ in 0..LOOPBACK_CONNECTIONS {
                let mut c = std::net::TcpStream::connect(addr).unwrap();
                // A full exchange proves the server took this one.
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .unwrap();
                let mut buf = [0u8; 256];
                let n = c.read(&mut buf).unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
                held.push(c);
            }
            let mut over = std::net::TcpStream::connect(addr).unwrap();
            let _ = over.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
            assert!(read_to_close(&mut over).is_empty(), "closed unanswered");
            assert_eq!(s2.refused.load(Relaxed), 1);
        })
        .await
        .unwrap();
        cancel.cancel();
    }
}
