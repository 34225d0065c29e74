//! The login page (the only page without a session) and logout.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};

use super::{render, see_other};
use crate::api::session::{attempt, end_session, session_cookie, LoginError};
use crate::auth;
use crate::http::{self, CsrfForm, Principal, LOGIN_CSRF_COOKIE, SESSION_COOKIE};
use crate::Shared;

fn login_page(csrf: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "Log in — Postern" }
                link rel="stylesheet" href="/static/style.css";
            }
            body.login {
                main.login-box {
                    h1 { "Postern" }
                    p.subtitle { "secure SMTP gateway — administration" }
                    @if let Some(text) = error {
                        p.error role="alert" { (text) }
                    }
                    form method="post" action="/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        label for="password" { "Admin password" }
                        input #password type="password" name="password" autocomplete="current-password" required autofocus;
                        button type="submit" { "Log in" }
                    }
                    p.help {
                        "The first password was printed once when the gateway first started. "
                        "Set a new one with " code { "postern admin passwd" } "."
                    }
                }
            }
        }
    }
}

/// A login form with a fresh double-submit token in a cookie.
fn show(status: StatusCode, error: Option<&str>) -> Response {
    let token = auth::random_hex(32);
    let mut response = render(status, login_page(&token, error));
    response.headers_mut().append(
        header::SET_COOKIE,
        http::set_cookie(LOGIN_CSRF_COOKIE, &token, 3600),
    );
    response
}

pub async fn form(State(state): State<Shared>, request: Request) -> Response {
    if let Ok(Some(_)) = http::authenticate(&state, request.headers()).await {
        return see_other("/");
    }
    show(StatusCode::OK, None)
}

pub async fn submit(State(state): State<Shared>, request: Request) -> Response {
    let ip = http::client_ip(request.extensions());
    let previous = http::cookie(request.headers(), SESSION_COOKIE);
    let cookie_token = http::cookie(request.headers(), LOGIN_CSRF_COOKIE).unwrap_or_default();
    let Ok(bytes) = axum::body::to_bytes(request.into_body(), 16 * 1024).await else {
        return show(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("The form is too large."),
        );
    };
    let fields: Vec<(String, String)> = form_urlencoded::parse(&bytes).into_owned().collect();
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let form_token = field("csrf");
    if cookie_token.is_empty() || !auth::constant_time_eq(&form_token, &cookie_token) {
        return show(
            StatusCode::FORBIDDEN,
            Some("The login form expired; please try again."),
        );
    }
    match attempt(&state, ip, previous, field("password")).await {
        Ok(session) => {
            let mut response = see_other("/");
            let headers = response.headers_mut();
            headers.append(header::SET_COOKIE, session_cookie(&session));
            headers.append(header::SET_COOKIE, http::clear_cookie(LOGIN_CSRF_COOKIE));
            response
        }
        Err(LoginError::Wrong) => show(StatusCode::UNAUTHORIZED, Some("Wrong password.")),
        Err(LoginError::Limited(wait)) => {
            let seconds = wait.as_secs().max(1);
            let mut response = show(
                StatusCode::TOO_MANY_REQUESTS,
                Some(&format!(
                    "Too many failed logins. Try again in {seconds} seconds."
                )),
            );
            if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        Err(LoginError::Store(e)) => {
            tracing::warn!("admin login refused: {e}");
            let (status, text) = match e {
                postern_store::StoreError::Unreachable(_) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Cluster store unreachable: logins are refused until it is back \
                     (sessions already open still work).",
                ),
                _ => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Login failed; see the gateway's log.",
                ),
            };
            show(status, Some(text))
        }
        Err(LoginError::Internal(e)) => {
            tracing::error!("admin login: {e}");
            show(
                StatusCode::INTERNAL_SERVER_ERROR,
                Some("Login failed; see the gateway's log."),
            )
        }
    }
}

pub async fn logout(State(state): State<Shared>, form: CsrfForm) -> Response {
    if let Principal::Session(session) = &form.principal {
        if let Err(e) = end_session(&state, session.id.clone()).await {
            tracing::warn!(
                "admin logout: the session stays in the store: {}",
                e.message
            );
        }
    }
    let mut response = see_other("/login");
    response
        .headers_mut()
        .append(header::SET_COOKIE, http::clear_cookie(SESSION_COOKIE));
    response.into_response()
}
