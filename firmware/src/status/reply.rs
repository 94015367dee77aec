//! The answers every part of the status port shares: JSON errors, the
//! refusals (a wrong token, too many attempts), the peer's address and the
//! security headers every response carries (also the protocol errors hyper
//! answers itself: [`super::server`]). Below the router, the handlers and
//! the accept loop, so they all use it without importing each other.

use super::*;

/// A wrong token: counted against `ip`, logged once, 401.
pub(super) fn denied(s: &Shared, auth: &Auth, ip: std::net::IpAddr, path: &str) -> Response {
    auth.failed(ip);
    s.auth_failures.fetch_add(1, Relaxed);
    tracing::warn!(client = %ip, path, "wrong technician token");
    json_error(StatusCode::UNAUTHORIZED, "wrong technician token")
}
/// A JSON error body: `{"error": "..."}`.
pub fn json_error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}
pub(super) fn peer(req: &Request) -> std::net::IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip())
}
pub(super) fn too_many() -> Response {
    let mut r = json_error(
        StatusCode::TOO_MANY_REQUESTS,
        "too many failed attempts from this address; try again later",
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(auth::REFILL.as_secs()),
    );
    r
}
/// The headers every response of the status port carries (also the
/// protocol errors hyper answers itself).
pub(super) const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];
