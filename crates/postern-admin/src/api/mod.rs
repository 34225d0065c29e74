//! The JSON API under `/api/v1/` (SPEC §8), documented in
//! `openapi.json` beside this file (served at `/api/v1/openapi.json`).

pub mod alerts;
pub mod certificates;
pub mod cluster;
pub mod domains;
pub mod messages;
pub mod policies;
pub mod queue;
pub mod session;
pub mod settings;
pub mod tlsrpt;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;

use crate::error::ApiError;
use crate::http;
use crate::Shared;

pub const OPENAPI: &str = include_str!("openapi.json");

/// The authenticated API routes.
pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/v1/session", get(session::show))
        .route("/api/v1/logout", post(session::logout))
        .route(
            "/api/v1/settings",
            get(settings::get_settings).put(settings::put_settings),
        )
        .route(
            "/api/v1/certificates",
            get(certificates::list).post(certificates::create),
        )
        .route(
            "/api/v1/certificates/{name}",
            get(certificates::show).delete(certificates::delete),
        )
        .route("/api/v1/domains", get(domains::list).post(domains::add))
        .route(
            "/api/v1/domains/{name}",
            put(domains::update).delete(domains::delete),
        )
        .route("/api/v1/queue", get(queue::list))
        .route("/api/v1/queue/{id}", get(queue::show).delete(queue::delete))
        .route("/api/v1/queue/{id}/retry", post(queue::retry))
        .route("/api/v1/queue/nodes", get(queue::nodes))
        .route("/api/v1/queue/requests/{request}", get(queue::request))
        .route("/api/v1/messages", get(messages::search))
        .route("/api/v1/messages/{id}", get(messages::show))
        .route("/api/v1/stats", get(messages::stats))
        .route("/api/v1/cluster", get(cluster::show))
        .route("/api/v1/policies", get(policies::list))
        .route(
            "/api/v1/policies/{domain}",
            get(policies::show).delete(policies::forget),
        )
        .route("/api/v1/policies/{domain}/pin", post(policies::pin))
        .route("/api/v1/alerts", get(alerts::alerts))
        .route("/api/v1/tlsrpt", get(tlsrpt::show))
        .route("/api/v1/alerts/acknowledge", post(alerts::acknowledge_all))
        .route("/api/v1/alerts/{id}/acknowledge", post(alerts::acknowledge))
}

pub async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// `/metrics`: Prometheus text; Bearer token only (no cookies).
pub async fn metrics(
    axum::extract::State(state): axum::extract::State<Shared>,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_string());
    let Some(token) = token else {
        return ApiError::unauthorized().into_response();
    };
    match http::check_token(&state, &token).await {
        Ok(Some(_)) => {}
        Ok(None) => return ApiError::unauthorized().into_response(),
        Err(e) => return e.into_response(),
    }
    let queue = state.queue.clone();
    let gauge = tokio::task::spawn_blocking(move || queue.list())
        .await
        .ok()
        .and_then(Result::ok)
        .map(|list| {
            let counts = crate::views::queue_counts(&list);
            crate::QueueGauge {
                messages: counts.messages,
                recipients_pending: counts.recipients_pending,
                recipients_deferred: counts.recipients_deferred,
            }
        })
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(gauge),
    )
        .into_response()
}

/// Run a blocking store or queue call off the async threads.
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}
