//! HTTP plumbing: the router, authentication middleware, cookies, CSRF
//! checks, body limits and security headers.
//!
//! Who may do what:
//!
//! * Public: `/login`, `/static/*`, `POST /api/v1/login`,
//!   `/api/v1/openapi.json`. `/metrics` takes a Bearer token only.
//! * Everything else needs a session cookie or `Authorization: Bearer`.
//!   Without either, pages redirect to `/login` and the API answers 401.
//! * A state-changing request (POST, PUT, PATCH, DELETE) made with a
//!   session cookie must carry the session's CSRF token: API calls in the
//!   `X-CSRF-Token` header, HTML forms in their `csrf` field (checked by
//!   [`CsrfForm`] and the upload handler). Bearer calls are exempt: a
//!   browser never adds that header by itself.
//! * Every state-changing request without a Bearer token (the login forms
//!   included) must also come from this site: a browser's
//!   `Sec-Fetch-Site` must be `same-origin` (or `none`, typed by the user),
//!   and an `Origin` header must be this listener's own
//!   `https://<Host>`. A valid CSRF token on a request another site made
//!   (a leaked token, a sibling app on another port) is still refused (403).
//!   Clients that send neither header (curl, scripts) are judged by the
//!   token alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::auth::{self, SessionInfo};
use crate::error::ApiError;
use crate::{api, pages, Shared};

pub const SESSION_COOKIE: &str = "postern_session";
/// Double-submit cookie of the login form (there is no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "postern_login_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Largest request body: certificate uploads (chain and key) included.
pub const MAX_BODY: usize = 256 * 1024;

/// Who is making a request.
#[derive(Debug, Clone)]
pub enum Principal {
    /// A browser session (cookie).
    Session(SessionInfo),
    /// An API token, by name.
    Token(String),
}

impl Principal {
    /// The CSRF token forms must carry; `None` for token calls.
    pub fn csrf(&self) -> Option<&str> {
        match self {
            Principal::Session(s) => Some(&s.csrf),
            Principal::Token(_) => None,
        }
    }
}

pub fn router(state: Shared) -> Router {
    let protected = Router::new()
        .merge(api::routes())
        .merge(pages::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    let public = Router::new()
        .route("/login", get(pages::login::form).post(pages::login::submit))
        .route("/api/v1/login", axum::routing::post(api::session::login))
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/metrics", get(api::metrics))
        .route("/static/style.css", get(style_css))
        .route("/static/app.js", get(app_js))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }));
    Router::new()
        .merge(public)
        .merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(refuse_foreign_origin))
        .layer(middleware::from_fn(refuse_oversized))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

async fn not_found(method: Method, uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        return ApiError::not_found(format!("no route {method} {}", uri.path())).into_response();
    }
    (StatusCode::NOT_FOUND, "not found").into_response()
}

const STYLE_CSS: &str = include_str!("assets/style.css");
const APP_JS: &str = include_str!("assets/app.js");

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Largest body read (and thrown away) to answer an oversized request
/// cleanly; beyond it the connection is simply closed.
const MAX_DRAIN: u64 = 16 * 1024 * 1024;

/// A request that announces a body over [`MAX_BODY`] gets 413 at once.
/// The body is read and dropped first (up to [`MAX_DRAIN`], within 10 s),
/// so the client, still sending, can read the answer instead of a reset.
async fn refuse_oversized(request: Request, next: Next) -> Response {
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let Some(length) = length.filter(|l| *l > MAX_BODY as u64) else {
        return next.run(request).await;
    };
    let is_api = request.uri().path().starts_with("/api/");
    if length <= MAX_DRAIN {
        let mut body = request.into_body();
        let drain = async {
            while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
                if frame.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
    }
    let message = format!("the request body is larger than {} KiB", MAX_BODY / 1024);
    let mut response = if is_api {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
            .field("body")
            .into_response()
    } else {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Refused: {message}."),
        )
            .into_response()
    };
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Headers on every response: no framing, no sniffing, no referrers, no
/// foreign resources, no inline scripts, no caching of pages.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_static = request.uri().path().starts_with("/static/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000",
    );
    if !is_static {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}

/// The client's address (set by the server loop; loopback in tests).
pub fn client_ip(request_extensions: &axum::http::Extensions) -> IpAddr {
    request_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// The value of cookie `name`, if the request has it.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
}

/// `Set-Cookie` for a cookie only this site's HTTPS pages see.
pub fn set_cookie(name: &str, value: &str, max_age_secs: u64) -> HeaderValue {
    let text = format!(
        "{name}={value}; Path=/; Max-Age={max_age_secs}; Secure; HttpOnly; SameSite=Strict"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Set-Cookie` that removes a cookie.
pub fn clear_cookie(name: &str) -> HeaderValue {
    set_cookie(name, "", 0)
}

fn is_state_changing(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The bearer token of a request: `Some(Ok(token))`, `Some(Err(()))` for a
/// malformed Authorization header, `None` without one.
fn bearer(headers: &HeaderMap) -> Option<Result<String, ()>> {
    let value = headers.get(header::AUTHORIZATION)?;
    let text = value.to_str().map_err(|_| ());
    Some(text.and_then(|t| {
        let (scheme, token) = t.trim().split_once(' ').ok_or(())?;
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            Ok(token.trim().to_string())
        } else {
            Err(())
        }
    }))
}

/// Check a bearer token against the store; the token's name when valid.
pub async fn check_token(state: &Shared, token: &str) -> Result<Option<String>, ApiError> {
    if !auth::looks_like_token(token) {
        return Ok(None);
    }
    let store = state.store.clone();
    let hash = auth::token_hash(token);
    let found = tokio::task::spawn_blocking(move || store.api_token_by_hash(&hash))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from_store)?;
    Ok(found.map(|t| t.name))
}

/// Who sent this request: a valid bearer token, else a live session.
/// A bearer header that is present but wrong is a 401, never a fallback
/// to the cookie.
pub async fn authenticate(
    state: &Shared,
    headers: &HeaderMap,
) -> Result<Option<Principal>, ApiError> {
    if let Some(token) = bearer(headers) {
        let Ok(token) = token else {
            return Err(ApiError::unauthorized());
        };
        return match check_token(state, &token).await? {
            Some(name) => Ok(Some(Principal::Token(name))),
            None => Err(ApiError::unauthorized()),
        };
    }
    let Some(id) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    // Validated on this node within the last second: no store round trip.
    if let Some(session) = state.sessions.cached(&id) {
        return Ok(Some(Principal::Session(session)));
    }
    let worker = state.clone();
    let now = auth::unix_seconds(SystemTime::now());
    let session = tokio::task::spawn_blocking(move || worker.sessions.get(&id, now))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from_store)?;
    Ok(session.map(Principal::Session))
}

async fn require_auth(State(state): State<Shared>, mut request: Request, next: Next) -> Response {
    let is_api = request.uri().path().starts_with("/api/");
    let principal = match authenticate(&state, request.headers()).await {
        Ok(Some(principal)) => principal,
        Ok(None) if is_api => return ApiError::unauthorized().into_response(),
        Ok(None) => return Redirect::to("/login").into_response(),
        Err(e) if is_api => return e.into_response(),
        Err(_) => return Redirect::to("/login").into_response(),
    };
    // Forms check their `csrf` field themselves (CsrfForm); the origin
    // was checked for every state-changing request (refuse_foreign_origin).
    if let Principal::Session(session) = &principal {
        if is_api && is_state_changing(request.method()) {
            let given = request
                .headers()
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !auth::constant_time_eq(given, &session.csrf) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "missing or wrong CSRF token: send the session's token in X-CSRF-Token \
                     (GET /api/v1/session)",
                )
                .field("X-CSRF-Token")
                .into_response();
            }
        }
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// Why a state-changing browser request did not come from this site, if
/// it did not. `Sec-Fetch-Site` cannot be set by a page's script, so when
/// present it decides; `Origin` must then be ours or `null` (Chromium
/// sends `null` on same-origin posts from pages with `Referrer-Policy:
/// no-referrer`, as ours are). Without `Sec-Fetch-Site` (older browsers)
/// an `Origin` must be ours; `null` is refused.
pub fn foreign_origin(headers: &HeaderMap) -> Option<String> {
    let text = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)").trim().to_string())
    };
    let fetch_site = text("sec-fetch-site").map(|v| v.to_ascii_lowercase());
    if let Some(site) = &fetch_site {
        if site != "same-origin" && site != "none" {
            return Some(format!(
                "cross-site request refused (Sec-Fetch-Site: {site}); use the admin UI's own pages"
            ));
        }
    }
    let origin = text("origin")?;
    if origin == "null" && fetch_site.is_some() {
        return None;
    }
    let own = text("host").map(|host| format!("https://{}", host.to_ascii_lowercase()));
    if own.as_deref() == Some(origin.to_ascii_lowercase().as_str()) {
        return None;
    }
    Some(format!(
        "cross-origin request refused: Origin {origin} is not this admin listener ({})",
        own.as_deref().unwrap_or("no Host header")
    ))
}

/// Refuse state-changing requests that other sites made (see the module
/// documentation); Bearer calls are not ambient credentials and pass.
async fn refuse_foreign_origin(request: Request, next: Next) -> Response {
    if !is_state_changing(request.method()) || request.headers().contains_key(header::AUTHORIZATION)
    {
        return next.run(request).await;
    }
    match foreign_origin(request.headers()) {
        Some(why) => {
            tracing::warn!(
                "admin: {why} ({} {})",
                request.method(),
                request.uri().path()
            );
            forbidden(request.uri().path().starts_with("/api/"), &why)
        }
        None => next.run(request).await,
    }
}

fn forbidden(is_api: bool, message: &str) -> Response {
    if is_api {
        ApiError::new(StatusCode::FORBIDDEN, message).into_response()
    } else {
        (StatusCode::FORBIDDEN, message.to_string()).into_response()
    }
}

/// An HTML form body (`application/x-www-form-urlencoded`) whose `csrf`
/// field matched the session's token.
pub struct CsrfForm {
    pub fields: Vec<(String, String)>,
    pub principal: Principal,
}

impl CsrfForm {
    /// The first value of a field, trimmed; empty when absent.
    pub fn get(&self, name: &str) -> String {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    }

    /// Every non-empty value of a repeated field (checkboxes).
    pub fn all(&self, name: &str) -> Vec<String> {
        self.fields
            .iter()
            .filter(|(k, v)| k == name && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|(k, _)| k == name)
    }
}

/// Check a form's CSRF field against the principal.
pub fn csrf_ok(principal: &Principal, given: &str) -> bool {
    match principal.csrf() {
        Some(expected) => auth::constant_time_eq(given, expected),
        None => true,
    }
}

impl<S: Send + Sync> FromRequest<S> for CsrfForm {
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Some(principal) = request.extensions().get::<Principal>().cloned() else {
            return Err(Redirect::to("/login").into_response());
        };
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let fields: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
        let given = fields
            .iter()
            .find(|(k, _)| k == "csrf")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if !csrf_ok(&principal, given) {
            return Err((
                StatusCode::FORBIDDEN,
                "the form's security token is missing or stale; reload the page and try again",
            )
                .into_response());
        }
        Ok(Self { fields, principal })
    }
}

/// A request body for the JSON API: at most [`MAX_BODY`] bytes, refused
/// with a JSON error (413) beyond.
pub struct Body(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(|rejection| {
                let status = rejection.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        status,
                        format!("the request body is larger than {} KiB", MAX_BODY / 1024),
                    )
                    .field("body")
                } else {
                    ApiError::bad_request("body", rejection.body_text())
                }
            })
    }
}

/// Parse a JSON body into `T`; the error names the field (400 for bad
/// JSON, 422 for a well-formed document with a wrong field).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("body", format!("not valid JSON: {e}")))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::invalid(field, e.inner().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8025"));
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_our_own_origin_may_change_things() {
        let ours: &[&[(&str, &str)]] = &[
            &[],
            &[("origin", "https://127.0.0.1:8025")],
            &[("origin", "HTTPS://127.0.0.1:8025")],
            &[("sec-fetch-site", "same-origin")],
            &[("sec-fetch-site", "same-origin"), ("origin", "null")],
            &[("sec-fetch-site", "none")],
        ];
        for pairs in ours {
            assert_eq!(foreign_origin(&headers(pairs)), None, "{pairs:?}");
        }
        let foreign: &[&[(&str, &str)]] = &[
            &[("origin", "https://evil.example")],
            &[("origin", "null")],
            &[("origin", "http://127.0.0.1:8025")],
            &[("origin", "https://127.0.0.1:8026")],
            &[("sec-fetch-site", "cross-site")],
            &[("sec-fetch-site", "same-site")],
            &[
                ("sec-fetch-site", "same-origin"),
                ("origin", "https://evil.example"),
            ],
        ];
        for pairs in foreign {
            let why = foreign_origin(&headers(pairs)).expect("refused");
            assert!(why.contains("refused"), "{pairs:?}: {why}");
        }
        // No Host header: an Origin cannot be ours.
        let mut map = HeaderMap::new();
        map.insert("origin", HeaderValue::from_static("https://127.0.0.1:8025"));
        assert!(foreign_origin(&map).is_some());
    }
}
