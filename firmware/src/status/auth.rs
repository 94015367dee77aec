//! Technician access: one token, compared in constant time, presented as
//! `Authorization: Bearer <token>` or as the `talkie_session` cookie the
//! login form sets. Failed attempts are rate-limited per client address.
//!
//! The cookie holds a random session id (32 bytes from the kernel's
//! CSPRNG), kept server-side with an expiry: it says nothing about the
//! token (no offline guessing), differs on every kiosk and every login,
//! and is revoked by logout, by its expiry and by a token change (a reload
//! that changes the token builds a new [`Auth`] with no sessions; one that
//! does not keeps them).
//!
//! A cookie that names no live session (expired, evicted by the 33rd
//! login, revoked by a restart) is [`Access::Expired`]: not a wrong token.
//! It is not counted as a failed attempt (the ids are 256 random bits;
//! there is nothing to guess), the browser is told to forget it, and the
//! page asks for a login again instead of polling into a lock-out.

use axum::http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

/// Name of the session cookie.
pub const COOKIE: &str = "talkie_session";
/// How long a login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; a new login beyond this evicts the oldest.
pub const MAX_SESSIONS: usize = 32;
/// Failed attempts a client may make in a burst.
pub const BURST: f64 = 5.0;
/// One more failed attempt is allowed per this interval.
pub const REFILL: Duration = Duration::from_secs(12);
/// Client addresses tracked at once; beyond this, full (idle) buckets are
/// forgotten, and if none is idle the least recently used one is evicted:
/// a full table must never refuse a new address, or filling it from many
/// addresses would lock the real technician out.
pub const MAX_CLIENTS: usize = 1_024;

/// What a request may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health and state only.
    Anonymous,
    /// Everything.
    Technician,
    /// Presented a wrong token.
    Denied,
    /// Presented a session cookie that names no live session.
    Expired,
}

/// `Set-Cookie` that makes the browser forget a dead session cookie.
pub const CLEAR_COOKIE: &str = "talkie_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0";

fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let gained = now.duration_since(self.at).as_secs_f64() / REFILL.as_secs_f64();
        self.tokens = (self.tokens + gained).min(BURST);
        self.at = now;
    }
}

/// Token buckets of failed attempts per client address, bounded.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: HashMap<IpAddr, Bucket>,
}

impl Limiter {
    /// May `ip` try (again)? Does not spend anything.
    pub fn allowed(&mut self, ip: IpAddr, now: Instant) -> bool {
        match self.buckets.get_mut(&ip) {
            Some(b) => {
                b.refill(now);
                b.tokens >= 1.0
            }
            None => true,
        }
    }

    /// Spend one attempt of `ip` after a failure.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) {
        if !self.buckets.contains_key(&ip)
            && self.buckets.len() >= MAX_CLIENTS
            && !self.forget_idle(now)
        {
            self.evict_oldest();
        }
        let b = self.buckets.entry(ip).or_insert(Bucket {
            tokens: BURST,
            at: now,
        });
        b.refill(now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }

    /// Drop buckets that have refilled completely; true if room was made.
    fn forget_idle(&mut self, now: Instant) -> bool {
        self.buckets.retain(|_, b| {
            b.refill(now);
            b.tokens < BURST
        });
        self.buckets.len() < MAX_CLIENTS
    }

    fn evict_oldest(&mut self) {
        if let Some(ip) = self
            .buckets
            .iter()
            .min_by_key(|(_, b)| b.at)
            .map(|(ip, _)| *ip)
        {
            self.buckets.remove(&ip);
        }
    }

    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// The configured token (hashed) and the failure limiter.
#[derive(Debug)]
pub struct Auth {
    /// SHA-256 of the token; `None` = no token configured, nobody is a
    /// technician.
    token: Option<[u8; 32]>,
    /// Live session ids (hex) and when each expires.
    sessions: Mutex<HashMap<String, Instant>>,
    limiter: Mutex<Limiter>,
}

/// 32 random bytes from the kernel, as hex; `None` if it cannot be read.
fn random_id() -> Option<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .ok()?;
    Some(hex(&b))
}

impl Auth {
    pub fn new(token: Option<&str>) -> Self {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        Self {
            token: token.map(|t| digest(&[t.as_bytes()])),
            sessions: Mutex::new(HashMap::new()),
            limiter: Mutex::new(Limiter::default()),
        }
    }

    pub fn configured(&self) -> bool {
        self.token.is_some()
    }

    /// Is `token` the one this was built with (a reload that keeps the
    /// token keeps the sessions)?
    pub fn same_token(&self, token: Option<&str>) -> bool {
        let token = token.map(str::trim).filter(|t| !t.is_empty());
        match (&self.token, token) {
            (None, None) => true,
            (Some(_), Some(t)) => self.token_matches(t),
            _ => false,
        }
    }

    fn limiter(&self) -> std::sync::MutexGuard<'_, Limiter> {
        self.limiter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Is `candidate` the token? Constant time in the candidate's content
    /// (both sides are hashed to 32 bytes first, so its length leaks nothing).
    pub fn token_matches(&self, candidate: &str) -> bool {
        match &self.token {
            Some(t) => bool::from(digest(&[candidate.trim().as_bytes()]).ct_eq(t)),
            None => false,
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn session_matches(&self, candidate: &str) -> bool {
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.retain(|_, expires| *expires > now);
        // Constant time per comparison; the ids are random, so which one
        // matched (or how many there are) tells a guesser nothing.
        sessions.keys().fold(false, |hit, id| {
            hit | bool::from(id.as_bytes().ct_eq(candidate.as_bytes()))
        })
    }

    /// A new session (after a successful login): its `Set-Cookie` value.
    /// `None` without a token, or if the kernel gives no random bytes.
    pub fn session_cookie(&self) -> Option<String> {
        self.token?;
        let id = random_id()?;
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.retain(|_, expires| *expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), now + SESSION_TTL);
        Some(format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
            SESSION_TTL.as_secs()
        ))
    }

    /// Revoke the session named in `headers`' cookie (logout).
    pub fn end_session(&self, headers: &HeaderMap) {
        if let Some(id) = session_of(headers) {
            self.sessions().remove(&id);
        }
    }

    /// Is `ip` allowed another attempt right now?
    pub fn allowed(&self, ip: IpAddr) -> bool {
        self.limiter().allowed(ip, Instant::now())
    }

    /// Count a failed attempt of `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.limiter().failed(ip, Instant::now());
    }

    /// Classify a request by its headers (bearer first, then the cookie).
    pub fn access(&self, headers: &HeaderMap) -> Access {
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            let ok = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("Bearer "))
                .is_some_and(|t| self.token_matches(t));
            return if ok {
                Access::Technician
            } else {
                Access::Denied
            };
        }
        match session_of(headers) {
            Some(v) if self.session_matches(&v) => Access::Technician,
            Some(_) => Access::Expired,
            None => Access::Anonymous,
        }
    }
}

/// The session id in a request's cookies.
fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_and_cookie() {
        let a = Auth::new(Some("s3cret\n"));
        assert_eq!(a.access(&HeaderMap::new()), Access::Anonymous);
        assert_eq!(
            a.access(&headers(header::AUTHORIZATION, "Bearer s3cret")),
            Access::Technician
        );
        assert_eq!(
            a.access(&headers(header::AUTHORIZATION, "Bearer s3cre")),
            Access::Denied
        );
        assert_eq!(
            a.access(&headers(header::AUTHORIZATION, "Basic czNjcmV0")),
            Access::Denied
        );
        let cookie = a.session_cookie().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("s3cret"));
        let value = cookie.split(';').next().unwrap();
        assert_eq!(
            a.access(&headers(header::COOKIE, &format!("theme=dark; {value}"))),
            Access::Technician
        );
        assert_eq!(
            a.access(&headers(header::COOKIE, "talkie_session=00")),
            Access::Expired
        );
        // Random per login, not derived from the token; logout revokes it;
        // another Auth (a reload, another kiosk) does not know it.
        let second = a.session_cookie().unwrap();
        assert_ne!(second, cookie);
        let id = value.split_once('=').unwrap().1;
        assert_ne!(id, hex(&digest(&[b"talkie-session-v1:", b"s3cret"])));
        assert_ne!(id, hex(&digest(&[b"s3cret"])));
        let with = headers(header::COOKIE, value);
        a.end_session(&with);
        assert_eq!(a.access(&with), Access::Expired, "logged out");
        let second_value = second.split(';').next().unwrap();
        assert_eq!(
            a.access(&headers(header::COOKIE, second_value)),
            Access::Technician
        );
        let reloaded = Auth::new(Some("s3cret"));
        assert_eq!(
            reloaded.access(&headers(header::COOKIE, second_value)),
            Access::Expired
        );
        assert!(a.same_token(Some("s3cret\n")) && !a.same_token(Some("other")));
        assert!(!a.same_token(None) && Auth::new(None).same_token(Some(" ")));
    }

    #[test]
    fn no_token_means_no_technician() {
        let a = Auth::new(None);
        assert!(!a.configured());
        assert!(a.session_cookie().is_none());
        assert_eq!(
            a.access(&headers(header::AUTHORIZATION, "Bearer ")),
            Access::Denied
        );
        assert!(!a.token_matches(""));
    }

    #[test]
    fn failures_are_rate_limited_per_address() {
        let mut l = Limiter::default();
        let ip: IpAddr = [10, 0, 0, 7].into();
        let other: IpAddr = [10, 0, 0, 8].into();
        let t0 = Instant::now();
        for _ in 0..BURST as usize {
            assert!(l.allowed(ip, t0));
            l.failed(ip, t0);
        }
        assert!(!l.allowed(ip, t0), "burst spent");
        assert!(l.allowed(other, t0), "other clients unaffected");
        assert!(!l.allowed(ip, t0 + REFILL / 2));
        assert!(l.allowed(ip, t0 + REFILL), "one attempt back per refill");
    }

    #[test]
    fn tracked_clients_are_bounded() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_CLIENTS as u32 {
            l.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(l.tracked(), MAX_CLIENTS);
        // A full table of recent failures never locks out a new address
        // (the real technician arriving from a laptop nobody has seen).
        let newcomer: IpAddr = [192, 168, 1, 1].into();
        assert!(l.allowed(newcomer, t0), "a new address is never refused");
        l.failed(newcomer, t0 + Duration::from_millis(1));
        assert_eq!(
            l.tracked(),
            MAX_CLIENTS,
            "still bounded: the oldest was evicted"
        );
        assert!(l.buckets.contains_key(&newcomer));
        let later = t0 + REFILL * 2;
        l.failed([10, 0, 0, 1].into(), later);
        assert!(
            l.tracked() < MAX_CLIENTS,
            "idle buckets are forgotten first"
        );
    }
}
