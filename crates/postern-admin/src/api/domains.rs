//! `/api/v1/domains`: the `[[domain]]` entries of the settings. Every
//! change is a read-modify-write of the settings in one store transaction,
//! validated as a whole; errors name the entry's field (`name`, `next_hop`,
//! `tls`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use postern_config::{ConfigError, DomainEntry, OutboundMode, Settings};
use postern_store::StoreError;

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::http::{parse_json, Body};
use crate::Shared;

/// A change to the domain table.
pub enum DomainChange {
    Add(DomainEntry),
    /// Replace the entry named (ignoring case) by the first field.
    Update(String, DomainEntry),
    Delete(String),
}

/// `domain[3].next_hop` → `next_hop`.
pub fn entry_field(key: &str) -> String {
    match key.strip_prefix("domain[") {
        Some(rest) => rest
            .split_once("].")
            .map_or_else(|| "name".to_string(), |(_, field)| field.to_string()),
        None => key.to_string(),
    }
}

/// The outbound mode from its settings name; `""` means "use the global mode".
pub fn parse_mode(text: &str) -> Result<Option<OutboundMode>, ApiError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_value(serde_json::Value::String(text.to_string()))
        .map(Some)
        .map_err(|_| {
            ApiError::invalid(
                "tls",
                format!(
                    "\"{text}\" is not a TLS mode; use none, opportunistic, require or verify \
                     (or leave it empty for the global mode)"
                ),
            )
        })
}

fn position(settings: &Settings, name: &str) -> Option<usize> {
    settings
        .domains
        .iter()
        .position(|d| d.name.eq_ignore_ascii_case(name.trim()))
}

/// Apply a change through the store. Blocking.
pub fn apply(state: &Shared, change: DomainChange) -> Result<Settings, ApiError> {
    let mut missing = None;
    let result = state.store.update_settings(&mut |current| {
        let mut next = current.clone();
        match &change {
            DomainChange::Add(entry) => next.domains.push(normalise(entry)),
            DomainChange::Update(name, entry) => match position(current, name) {
                Some(i) => next.domains[i] = normalise(entry),
                None => {
                    missing = Some(name.clone());
                    return Err(StoreError::Invalid(ConfigError::new("name", "not found")));
                }
            },
            DomainChange::Delete(name) => match position(current, name) {
                Some(i) => {
                    next.domains.remove(i);
                }
                None => {
                    missing = Some(name.clone());
                    return Err(StoreError::Invalid(ConfigError::new("name", "not found")));
                }
            },
        }
        Ok(next)
    });
    if let Some(name) = missing {
        return Err(ApiError::not_found(format!("no domain entry \"{name}\"")));
    }
    result.map_err(|e| match e {
        StoreError::Invalid(config) => {
            let field = entry_field(&config.key);
            let status = if config.message.contains("listed twice") {
                StatusCode::CONFLICT
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            ApiError::new(status, format!("{field}: {}", config.message)).field(field)
        }
        other => ApiError::from_store(other),
    })
}

/// Trim the text fields; an empty next hop means "route by MX".
fn normalise(entry: &DomainEntry) -> DomainEntry {
    DomainEntry {
        name: entry.name.trim().to_string(),
        relay: entry.relay,
        next_hop: entry
            .next_hop
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string),
        tls: entry.tls,
        mta_sts: entry.mta_sts,
        dane: entry.dane,
        monitor: entry.monitor,
    }
}

pub async fn list(State(state): State<Shared>) -> ApiResult<Json<Vec<DomainEntry>>> {
    let store = state.store.clone();
    let settings = blocking(move || store.settings().map_err(ApiError::from_store)).await?;
    Ok(Json(settings.domains))
}

fn saved_entry(settings: &Settings, name: &str) -> Json<serde_json::Value> {
    let entry = position(settings, name).and_then(|i| settings.domains.get(i));
    Json(serde_json::to_value(entry).unwrap_or_default())
}

pub async fn add(State(state): State<Shared>, Body(body): Body) -> ApiResult<Response> {
    let entry: DomainEntry = parse_json(&body)?;
    let name = entry.name.trim().to_string();
    let settings = blocking(move || apply(&state, DomainChange::Add(entry))).await?;
    Ok((StatusCode::CREATED, saved_entry(&settings, &name)).into_response())
}

pub async fn update(
    State(state): State<Shared>,
    Path(name): Path<String>,
    Body(body): Body,
) -> ApiResult<Response> {
    let entry: DomainEntry = parse_json(&body)?;
    let new_name = entry.name.trim().to_string();
    let settings = blocking(move || apply(&state, DomainChange::Update(name, entry))).await?;
    Ok(saved_entry(&settings, &new_name).into_response())
}

pub async fn delete(State(state): State<Shared>, Path(name): Path<String>) -> ApiResult<Response> {
    blocking(move || apply(&state, DomainChange::Delete(name))).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_entry_keys() {
        assert_eq!(entry_field("domain[3].next_hop"), "next_hop");
        assert_eq!(entry_field("domain[0].name"), "name");
        assert_eq!(entry_field("domain[12]"), "name");
        assert_eq!(entry_field("tls.inbound.mode"), "tls.inbound.mode");
    }

    #[test]
    fn modes_parse_with_the_field_named() {
        assert_eq!(parse_mode("").ok(), Some(None));
        assert_eq!(parse_mode("verify").ok(), Some(Some(OutboundMode::Verify)));
        let err = parse_mode("strict").unwrap_err();
        assert_eq!(err.field.as_deref(), Some("tls"));
        assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
}
