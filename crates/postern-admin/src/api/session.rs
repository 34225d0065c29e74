//! Login, logout and the session's CSRF token, for the API and the login
//! page alike.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use postern_store::StoreError;
use serde::Deserialize;
use serde_json::json;

use crate::auth::{self, SessionInfo, SESSION_IDLE};
use crate::error::{ApiError, ApiResult};
use crate::http::{self, Principal, SESSION_COOKIE};
use crate::Shared;

/// Why a login did not succeed.
pub enum LoginError {
    /// Too many failures: wait this long.
    Limited(Duration),
    /// Wrong password (or none set yet).
    Wrong,
    /// The store could not count the attempt or keep the session (a
    /// cluster store that is unreachable: no new logins meanwhile).
    Store(StoreError),
    Internal(String),
}

/// Check the password (rate-limited) and start a new session, ending the
/// one the browser had (no session fixation).
pub async fn attempt(
    state: &Shared,
    ip: IpAddr,
    previous: Option<String>,
    password: String,
) -> Result<SessionInfo, LoginError> {
    // Counted before the check (so a burst gets no more than the limit,
    // on all nodes together), then at most `password_checks` argon2 runs
    // at once.
    let worker = state.clone();
    let reserved = tokio::task::spawn_blocking(move || {
        worker
            .limiter
            .reserve(ip, auth::unix_seconds(SystemTime::now()))
    })
    .await
    .map_err(|e| LoginError::Internal(e.to_string()))?
    .map_err(LoginError::Store)?
    .map_err(LoginError::Limited)?;
    let _permit = state
        .password_checks
        .acquire()
        .await
        .map_err(|e| LoginError::Internal(e.to_string()))?;
    let worker = state.clone();
    // The version of the hash the password was checked against: the
    // session belongs to that password, not to whatever is stored later.
    tokio::task::spawn_blocking(move || {
        let hash = worker
            .store
            .admin_password_hash()
            .map_err(LoginError::Store)?;
        let Some(version) = hash
            .filter(|h| auth::verify_password(h, &password))
            .map(|h| auth::PasswordVersion::of(&h))
        else {
            tracing::warn!("admin login failed from {ip}");
            return Err(LoginError::Wrong);
        };
        worker
            .limiter
            .success(reserved)
            .map_err(LoginError::Store)?;
        let session = worker
            .sessions
            .create(
                previous.as_deref(),
                &version,
                auth::unix_seconds(SystemTime::now()),
            )
            .map_err(LoginError::Store)?;
        tracing::info!("admin login from {ip}");
        Ok(session)
    })
    .await
    .map_err(|e| LoginError::Internal(e.to_string()))?
}

/// The `Set-Cookie` value for a new session.
pub fn session_cookie(session: &SessionInfo) -> axum::http::HeaderValue {
    http::set_cookie(
        SESSION_COOKIE,
        &session.id,
        auth::SESSION_LIFETIME.as_secs(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    password: String,
}

/// `POST /api/v1/login` `{"password": "..."}`: sets the session cookie and
/// returns the CSRF token for later state-changing calls.
pub async fn login(State(state): State<Shared>, request: Request) -> Response {
    let ip = http::client_ip(request.extensions());
    let previous = http::cookie(request.headers(), SESSION_COOKIE);
    let body =
        match <http::Body as axum::extract::FromRequest<()>>::from_request(request, &()).await {
            Ok(body) => body.0,
            Err(e) => return e.into_response(),
        };
    let input: LoginRequest = match http::parse_json(&body) {
        Ok(input) => input,
        Err(e) => return e.into_response(),
    };
    match attempt(&state, ip, previous, input.password).await {
        Ok(session) => (
            StatusCode::OK,
            [(header::SET_COOKIE, session_cookie(&session))],
            Json(json!({
                "csrf_token": session.csrf,
                "idle_timeout_seconds": SESSION_IDLE.as_secs(),
            })),
        )
            .into_response(),
        Err(LoginError::Limited(wait)) => {
            let mut e = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed logins; try again in {} s",
                    wait.as_secs().max(1)
                ),
            );
            e.retry_after = Some(wait.as_secs().max(1));
            e.into_response()
        }
        Err(LoginError::Wrong) => ApiError::new(StatusCode::UNAUTHORIZED, "wrong password")
            .field("password")
            .into_response(),
        Err(LoginError::Store(e)) => ApiError::from_store(e).into_response(),
        Err(LoginError::Internal(e)) => ApiError::internal(e).into_response(),
    }
}

/// `POST /api/v1/logout`: ends the cookie session.
pub async fn logout(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
) -> Response {
    if let Principal::Session(session) = &principal {
        if let Err(e) = end_session(&state, session.id.clone()).await {
            // The cookie goes anyway; the session itself lives on in the
            // store until it expires or the store is back.
            let mut response = e.into_response();
            response
                .headers_mut()
                .insert(header::SET_COOKIE, http::clear_cookie(SESSION_COOKIE));
            return response;
        }
    }
    (
        StatusCode::OK,
        [(header::SET_COOKIE, http::clear_cookie(SESSION_COOKIE))],
        Json(json!({ "logged_out": true })),
    )
        .into_response()
}

/// End session `id` on every node (logout).
pub async fn end_session(state: &Shared, id: String) -> Result<(), ApiError> {
    let worker = state.clone();
    tokio::task::spawn_blocking(move || worker.sessions.remove(&id))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from_store)
}

/// `GET /api/v1/session`: who is calling, and the session's CSRF token.
pub async fn show(
    Extension(principal): Extension<Principal>,
) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(match principal {
        Principal::Session(session) => json!({
            "auth": "session",
            "csrf_token": session.csrf,
        }),
        Principal::Token(name) => json!({
            "auth": "token",
            "token_name": name,
        }),
    }))
}
