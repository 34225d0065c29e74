//! `/api/v1/settings`: the whole settings document of SPEC §4, as JSON.
//!
//! `PUT` replaces the document. The body must be an object, and so must
//! each section (`tls`, `tls.inbound`, ..., each `domain` entry): `[]` is
//! refused, never read as "every default". The answer says what the
//! change does to the `[[domain]]` table (entries and relay domains added
//! and removed, with warnings), and so does the log line. A document that
//! would delete every `[[domain]]` entry is refused (`409`) unless the
//! request says `?confirm=delete-domains`: relay domains would be refused
//! at once, which nobody should do by sending a partial document.

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use postern_config::{ConfigError, DomainChanges, Settings};
use postern_store::StoreError;
use serde_json::json;

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::http::Body;
use crate::Shared;

/// The `confirm` value that allows deleting every `[[domain]]` entry.
pub const CONFIRM_DELETE_DOMAINS: &str = "delete-domains";

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

/// Whether the query says `confirm=delete-domains`; any other parameter or
/// value is a 400 naming it.
fn confirmed(query: Option<&str>) -> Result<bool, ApiError> {
    let mut confirm = false;
    for (name, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match (name.as_ref(), value.as_ref()) {
            ("confirm", CONFIRM_DELETE_DOMAINS) => confirm = true,
            ("confirm", other) => {
                return Err(ApiError::bad_request(
                    "confirm",
                    format!(
                    "unknown confirmation {other:?}; the only one is \"{CONFIRM_DELETE_DOMAINS}\""
                ),
                ))
            }
            (other, _) => {
                return Err(ApiError::bad_request(
                    other.to_string(),
                    format!("unknown query parameter {other:?}; the only one is confirm"),
                ))
            }
        }
    }
    Ok(confirm)
}

/// Replace the settings: validated as a whole (and against the
/// certificate table) before anything changes.
pub async fn put_settings(
    State(state): State<Shared>,
    RawQuery(query): RawQuery,
    Body(body): Body,
) -> ApiResult<Response> {
    let confirm = confirmed(query.as_deref())?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_request("body", "the body is not UTF-8 text"))?;
    serde_json::from_str::<serde_json::Value>(text)
        .map_err(|e| ApiError::bad_request("body", format!("not valid JSON: {e}")))?;
    let settings =
        Settings::from_json(text).map_err(|e| ApiError::invalid(e.key.clone(), e.to_string()))?;
    let store = state.store.clone();
    // Compared with the saved settings inside the store's write
    // transaction, so the changes reported are the changes made.
    let (saved, changes, unreadable) = blocking(move || {
        // Saved settings that no longer validate (written by an older
        // version with looser bounds) cannot be compared with; replacing
        // them is how they get fixed, so that is allowed, and said.
        if let Err(StoreError::Invalid(e)) = store.settings() {
            store
                .put_settings(&settings)
                .map_err(ApiError::from_store)?;
            return Ok((settings, DomainChanges::default(), Some(e.to_string())));
        }
        let mut changes = DomainChanges::default();
        let mut needs_confirmation = false;
        let saved = store.update_settings(&mut |current| {
            changes = DomainChanges::between(current, &settings);
            if changes.deletes_every_domain && !confirm {
                needs_confirmation = true;
                return Err(StoreError::Invalid(ConfigError::new("domain", "")));
            }
            Ok(settings.clone())
        });
        match saved {
            Ok(saved) => Ok((saved, changes, None)),
            Err(_) if needs_confirmation => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "this document has no [[domain]] entries: saving it would delete all {} ({}), \
                     and mail for them would be refused at once; nothing was changed. To do \
                     that on purpose, send it again with ?confirm={CONFIRM_DELETE_DOMAINS}",
                    changes.domains_removed.len(),
                    changes.domains_removed.join(", ")
                ),
            )
            .field("domain")),
            Err(e) => Err(ApiError::from_store(e)),
        }
    })
    .await?;
    let mut warnings = changes.warnings();
    if let Some(e) = unreadable {
        warnings.push(format!(
            "the settings saved before did not validate ({e}); they were replaced without comparing"
        ));
    }
    if warnings.is_empty() {
        tracing::info!("settings replaced through the admin API");
    } else {
        tracing::warn!(
            "settings replaced through the admin API: {}",
            warnings.join("; ")
        );
    }
    let answer = json!({
        "settings": saved,
        "changes": changes,
        "warnings": warnings,
    });
    Ok((StatusCode::OK, axum::Json(answer)).into_response())
}
