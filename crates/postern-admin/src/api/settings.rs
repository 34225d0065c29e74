//! `/api/v1/settings`: the whole settings document of SPEC §4, as JSON.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use postern_config::Settings;

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::http::Body;
use crate::Shared;

fn json_response(settings: &Settings) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        settings.to_json(),
    )
        .into_response()
}

pub async fn get_settings(State(state): State<Shared>) -> ApiResult<Response> {
    let store = state.store.clone();
    let settings = blocking(move || store.settings().map_err(ApiError::from_store)).await?;
    Ok(json_response(&settings))
}

/// Replace the settings: validated as a whole (and against the
/// certificate table) before anything changes.
pub async fn put_settings(State(state): State<Shared>, Body(body): Body) -> ApiResult<Response> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("body", "the body is not UTF-8 text"))?;
    serde_json::from_str::<serde_json::Value>(text)
        .map_err(|e| ApiError::bad_request("body", format!("not valid JSON: {e}")))?;
    let settings =
        Settings::from_json(text).map_err(|e| ApiError::invalid(e.key.clone(), e.to_string()))?;
    let store = state.store.clone();
    let saved = blocking(move || {
        store
            .put_settings(&settings)
            .map(|()| settings)
            .map_err(ApiError::from_store)
    })
    .await?;
    tracing::info!("settings replaced through the admin API");
    Ok(json_response(&saved))
}
