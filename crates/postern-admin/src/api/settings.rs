//! `/api/v1/settings`: the whole settings document of SPEC §4, as JSON.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use postern_config::{ConfigError, Settings};
use postern_store::Store;
use postern_tls::CertKeyPem;

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
        check_ecdsa_certificate(store.as_ref(), &settings)
            .map_err(|e| ApiError::invalid(e.key.clone(), e.to_string()))?;
        store
            .put_settings(&settings)
            .map(|()| settings)
            .map_err(ApiError::from_store)
    })
    .await?;
    tracing::info!("settings replaced through the admin API");
    Ok(json_response(&saved))
}

/// The store checks that every named certificate exists and has a key; this
/// checks that the entry named as `tls.inbound.ecdsa_certificate` can be
/// presented beside the primary one (an RSA key never would be).
pub(crate) fn check_ecdsa_certificate(
    store: &dyn Store,
    settings: &Settings,
) -> Result<(), ConfigError> {
    let name = &settings.tls.inbound.ecdsa_certificate;
    if name.is_empty() {
        return Ok(());
    }
    // Missing entry or key: the store's own check names it.
    let Ok(Some(record)) = store.certificate(name) else {
        return Ok(());
    };
    let Some(key_pem) = record.key_pem.as_deref() else {
        return Ok(());
    };
    CertKeyPem {
        chain_pem: &record.chain_pem,
        key_pem,
    }
    .check_alternate()
    .map_err(|e| ConfigError::new("tls.inbound.ecdsa_certificate", format!("\"{name}\": {e}")))
}
