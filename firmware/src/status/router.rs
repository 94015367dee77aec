//! The router: routes, who may call them, and the middleware every answer
//! passes (timeout, security headers, JSON errors, rate-limited refusals).

use super::handlers::*;
use super::reply::{denied, json_error, peer, too_many, SECURITY_HEADERS};
use super::*;

/// Gate for the technician endpoints.
pub(super) async fn require_technician(
    State(s): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let auth = s.auth();
    let ip = peer(&req);
    match auth.access(req.headers()) {
        Access::Anonymous => {
            let mut r = json_error(StatusCode::UNAUTHORIZED, "technician token required");
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
        Access::Expired => expired(),
        _ if !auth.allowed(ip) => too_many(),
        Access::Denied => denied(&s, &auth, ip, req.uri().path()),
        Access::Technician => match cross_origin(&req) {
            Some(why) => {
                tracing::warn!(client = %ip, path = req.uri().path(), why, "cross-origin state change refused");
                json_error(
                    StatusCode::FORBIDDEN,
                    format!("cross-origin request refused ({why}): use the page itself, or a Bearer token"),
                )
            }
            None => next.run(req).await,
        },
    }
}
/// Why a cookie-authenticated state change comes from another site, if it
/// does (issue 28 row 5): a browser sends `Sec-Fetch-Site` and `Origin`
/// with a cross-site POST, and a page elsewhere on the LAN or the web must
/// not drive the kiosk with the technician's cookie. Safe methods and
/// Bearer requests (scripts, `curl`: no ambient credential) are not checked.
fn cross_origin(req: &Request) -> Option<&'static str> {
    let h = req.headers();
    if req.method().is_safe() || h.contains_key(header::AUTHORIZATION) {
        return None;
    }
    let text = |name| h.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return Some("Sec-Fetch-Site is not same-origin");
        }
    }
    if let Some(origin) = text("origin") {
        let host = text("host").unwrap_or("");
        let same = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host));
        if !same {
            return Some("Origin is not this kiosk");
        }
    }
    None
}
/// A session cookie that names no live session: 401, not counted, and the
/// browser is told to forget the cookie (issue 28 row 2).
pub(super) fn expired() -> Response {
    let mut r = json_error(
        StatusCode::UNAUTHORIZED,
        "session expired or revoked: log in again",
    );
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(auth::CLEAR_COOKIE),
    );
    r
}
pub(super) fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
/// Request timeout as a plain middleware (no extra crate).
pub(super) async fn timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => json_error(StatusCode::REQUEST_TIMEOUT, "request timed out"),
    }
}
/// The same security headers on every response.
pub(super) async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        h.insert(
            header::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    r
}
/// Every error answer is JSON (`{"error": …}`), also those axum and its
/// extractors make on their own (405, 413, 400 from a bad form or query):
/// a plain-text or empty error body becomes JSON with its first 200
/// characters.
pub(super) async fn json_errors(req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    let status = r.status();
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return r;
    }
    let (parts, body) = r.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim()
                .chars()
                .take(200)
                .collect::<String>()
        })
        .unwrap_or_default();
    let msg = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    let mut out = json_error(status, msg);
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(v) = parts.headers.get(&name) {
            out.headers_mut().insert(name, v.clone());
        }
    }
    out
}
pub(super) async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such endpoint")
}
pub fn router(shared: Arc<Shared>) -> Router {
    let technician = Router::new()
        .route("/api/v1/transcripts", get(transcripts))
        .route("/api/v1/logs", get(logs))
        .route("/api/v1/support-bundle", get(super::bundle::support_bundle))
        .route("/api/v1/test/leds", post(test_leds))
        .route(
            "/api/v1/test/ptt",
            post(test_ptt).layer(DefaultBodyLimit::max(WAV_LIMIT)),
        )
        .route("/api/v1/capture", post(capture))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/restart", post(restart))
        .route("/api/v1/dead-letters", get(dead_letters))
        .route(
            "/api/v1/recordings",
            get(super::recordings::list).delete(super::recordings::delete_all),
        )
        .route(
            "/api/v1/recordings/{name}",
            get(super::recordings::download).delete(super::recordings::delete_one),
        )
        .route(
            "/api/v1/dead-letters/retry",
            post(|State(s): State<Arc<Shared>>, b: axum::body::Bytes| {
                dead_letter_action(s, b, true)
            }),
        )
        .route(
            "/api/v1/dead-letters/drop",
            post(|State(s): State<Arc<Shared>>, b: axum::body::Bytes| {
                dead_letter_action(s, b, false)
            }),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            require_technician,
        ));
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .route("/api/v1/status", get(status_handler))
        .route("/api/v1/events", get(events))
        .route("/api/v1/charts", get(super::charts::charts))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .merge(technician)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(security_headers))
        .layer(middleware::from_fn(timeout))
        .with_state(shared)
}
