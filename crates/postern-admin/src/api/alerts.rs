//! `/api/v1/alerts`: the alerts kept in the store (SPEC §12), newest first,
//! filtered by kind and by acknowledgement; acknowledge one
//! (`POST /{id}/acknowledge`) or several (`POST /acknowledge` with the ids
//! shown, or every one up to the newest id seen). The Alerts page and the
//! Dashboard banner use the same functions.

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use postern_store::{AlertFilter, AlertKind, KeptAlert, Store};
use serde_json::{json, Value};

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::http::{parse_json, Body, Principal};
use crate::Shared;

/// Most alerts listed at once.
pub const MAX_LISTED: usize = 500;
/// Most ids in one acknowledgement.
pub const MAX_IDS: usize = 1000;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The query of a listing, as given (`?kind=downgrade&acknowledged=false`).
#[derive(serde::Deserialize, Default, Debug, Clone)]
#[serde(default)]
pub struct AlertQuery {
    pub kind: Option<String>,
    pub acknowledged: Option<String>,
    pub limit: Option<String>,
}

impl AlertQuery {
    /// The store filter, or a 400 naming the parameter at fault.
    pub fn filter(&self) -> Result<AlertFilter, ApiError> {
        let kind = match self.kind.as_deref().map(str::trim) {
            None | Some("") | Some("all") => None,
            Some(text) => Some(AlertKind::parse(text).ok_or_else(|| {
                let known: Vec<&str> = AlertKind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::bad_request(
                    "kind",
                    format!(
                        "kind: unknown alert kind \"{text}\"; known: {}",
                        known.join(", ")
                    ),
                )
            })?),
        };
        let acknowledged = match self.acknowledged.as_deref().map(str::trim) {
            None | Some("") | Some("all") => None,
            Some("true") | Some("yes") => Some(true),
            Some("false") | Some("no") => Some(false),
            Some(text) => {
                return Err(ApiError::bad_request(
                    "acknowledged",
                    format!("acknowledged: \"{text}\" is not true, false or all"),
                ))
            }
        };
        let limit = match self.limit.as_deref().map(str::trim) {
            None | Some("") => MAX_LISTED,
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_LISTED).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "limit",
                        format!("limit: \"{text}\" is not a number from 1 to {MAX_LISTED}"),
                    )
                })?,
        };
        Ok(AlertFilter {
            kind,
            acknowledged,
            limit,
        })
    }
}

/// Who acknowledges: recorded with the acknowledgement.
pub fn reviewer(principal: &Principal) -> String {
    match principal {
        Principal::Session(_) => "admin".to_string(),
        Principal::Token(name) => format!("token {name}"),
    }
}

/// An alert id from the path, or a 400.
pub fn parse_id(text: &str) -> Result<i64, ApiError> {
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            ApiError::bad_request(
                "id",
                format!("id: \"{text}\" is not an alert id (a positive number)"),
            )
        })
}

/// Acknowledge one alert; 404 when there is none with this id. An alert
/// acknowledged before keeps its first acknowledgement.
pub fn acknowledge_one(store: &dyn Store, id: i64, by: &str) -> Result<KeptAlert, ApiError> {
    let outcome = store
        .alerts()
        .acknowledge_alerts(&[id], by, now())
        .map_err(ApiError::from_store)?;
    if !outcome.unknown.is_empty() {
        return Err(ApiError::not_found(format!("no alert with id {id}")));
    }
    if outcome.count > 0 {
        tracing::info!("alert {id} acknowledged by {by}");
    }
    store
        .alerts()
        .kept_alert(id)
        .map_err(ApiError::from_store)?
        .ok_or_else(|| ApiError::not_found(format!("no alert with id {id}")))
}

/// Acknowledge the alerts `ids`: all of them, or none (404 naming the
/// unknown ones).
pub fn acknowledge_many(store: &dyn Store, ids: &[i64], by: &str) -> Result<usize, ApiError> {
    let outcome = store
        .alerts()
        .acknowledge_alerts(ids, by, now())
        .map_err(ApiError::from_store)?;
    if !outcome.unknown.is_empty() {
        let unknown: Vec<String> = outcome.unknown.iter().map(i64::to_string).collect();
        return Err(ApiError::not_found(format!(
            "no alert with id {}: nothing was acknowledged",
            unknown.join(", ")
        ))
        .field("ids"));
    }
    tracing::info!("{} alert(s) acknowledged by {by}", outcome.count);
    Ok(outcome.count)
}

/// `GET /api/v1/alerts`: the newest alerts of every node (SPEC §12).
pub async fn alerts(
    State(state): State<Shared>,
    Query(query): Query<AlertQuery>,
) -> ApiResult<Json<Value>> {
    let filter = query.filter()?;
    let store = state.store.clone();
    let (list, unacknowledged) = blocking(move || {
        let alerts = store.alerts();
        let list = alerts.kept_alerts(&filter).map_err(ApiError::from_store)?;
        let count = alerts
            .unacknowledged_alert_count()
            .map_err(ApiError::from_store)?;
        Ok((list, count))
    })
    .await?;
    Ok(Json(
        json!({ "alerts": list, "unacknowledged": unacknowledged }),
    ))
}

/// `POST /api/v1/alerts/{id}/acknowledge`.
pub async fn acknowledge(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> ApiResult<Json<KeptAlert>> {
    let id = parse_id(&id)?;
    let by = reviewer(&principal);
    let store = state.store.clone();
    let kept = blocking(move || acknowledge_one(store.as_ref(), id, &by)).await?;
    Ok(Json(kept))
}

/// The body of `POST /api/v1/alerts/acknowledge`: exactly one of the two.
#[derive(serde::Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct AcknowledgeMany {
    /// The alerts shown (every one must exist).
    ids: Option<Vec<i64>>,
    /// Every unacknowledged alert with an id up to this (the newest seen).
    through: Option<i64>,
}

/// `POST /api/v1/alerts/acknowledge`.
pub async fn acknowledge_all(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
    Body(body): Body,
) -> ApiResult<Json<Value>> {
    let request: AcknowledgeMany = parse_json(&body)?;
    let by = reviewer(&principal);
    let store = state.store.clone();
    let count = match (request.ids, request.through) {
        (Some(ids), None) => {
            if ids.is_empty() || ids.len() > MAX_IDS {
                return Err(ApiError::invalid(
                    "ids",
                    format!("ids: give from 1 to {MAX_IDS} alert ids"),
                ));
            }
            if let Some(bad) = ids.iter().find(|id| **id <= 0) {
                return Err(ApiError::invalid(
                    "ids",
                    format!("ids: {bad} is not an alert id (a positive number)"),
                ));
            }
            blocking(move || acknowledge_many(store.as_ref(), &ids, &by)).await?
        }
        (None, Some(through)) => {
            if through <= 0 {
                return Err(ApiError::invalid(
                    "through",
                    format!("through: {through} is not an alert id (a positive number)"),
                ));
            }
            blocking(move || {
                let count = store
                    .alerts()
                    .acknowledge_alerts_through(through, &by, now())
                    .map_err(ApiError::from_store)?;
                tracing::info!("{count} alert(s) up to id {through} acknowledged by {by}");
                Ok(count)
            })
            .await?
        }
        _ => {
            return Err(ApiError::invalid(
                "body",
                "give either \"ids\" (the alerts to acknowledge) or \"through\" \
                 (every unacknowledged alert up to this id)",
            ))
        }
    };
    Ok(Json(json!({ "acknowledged": count })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(kind: Option<&str>, acknowledged: Option<&str>) -> AlertQuery {
        AlertQuery {
            kind: kind.map(str::to_string),
            acknowledged: acknowledged.map(str::to_string),
            limit: None,
        }
    }

    #[test]
    fn filters_parse_and_name_the_bad_parameter() {
        let f = query(Some("downgrade"), Some("false")).filter().unwrap();
        assert_eq!(f.kind, Some(AlertKind::Downgrade));
        assert_eq!(f.acknowledged, Some(false));
        assert_eq!(f.limit, MAX_LISTED);
        let all = query(Some(""), Some("all")).filter().unwrap();
        assert_eq!((all.kind, all.acknowledged), (None, None));
        let e = query(Some("nope"), None).filter().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("kind"));
        assert!(e.message.contains("starttls-missing"), "{}", e.message);
        let e = query(None, Some("maybe")).filter().unwrap_err();
        assert_eq!(e.field.as_deref(), Some("acknowledged"));
        let mut big = query(None, None);
        big.limit = Some("100000".into());
        assert_eq!(big.filter().unwrap_err().field.as_deref(), Some("limit"));
    }

    #[test]
    fn ids_must_be_positive_numbers() {
        assert_eq!(parse_id("42").unwrap(), 42);
        for bad in ["0", "-1", "x", "", "1.5"] {
            let e = parse_id(bad).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(e.field.as_deref(), Some("id"));
        }
    }
}
