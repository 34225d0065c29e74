//! `/api/v1/policies`: the learned outbound TLS levels (SPEC §10 item 4),
//! with their evidence (and, per domain, the cached MTA-STS policy and the
//! DANE status of the newest DANE attempt); forget one (`DELETE /{domain}`) or pin it as a
//! `[[domain]]` rule (`POST /{domain}/pin`). The rules are
//! `postern_store::learned::review`, shared with `postern policy`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use postern_store::event::{Attempt, PolicyType, ResultType};
use postern_store::learned::review::{self, ReviewError};
use postern_store::{event_kind, Event, EventQuery, Store, StoreError};
use serde_json::{json, Value};

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::Shared;

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) fn from_review(error: ReviewError) -> ApiError {
    match error {
        ReviewError::Unknown(_) => ApiError::not_found(error.to_string()),
        ReviewError::NotLearned { .. } => ApiError::new(StatusCode::CONFLICT, error.to_string()),
        ReviewError::Store(e) => ApiError::from_store(e),
    }
}

pub async fn list(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let store = state.store.clone();
    let all =
        blocking(move || review::list(store.as_ref(), now()).map_err(ApiError::from_store)).await?;
    Ok(Json(json!({ "learned": all })))
}

pub async fn show(
    State(state): State<Shared>,
    Path(domain): Path<String>,
) -> ApiResult<Json<Value>> {
    let store = state.store.clone();
    blocking(move || {
        let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        let entry = review::show(store.as_ref(), &domain, now()).map_err(ApiError::from_store)?;
        let mta_sts = store
            .mta_sts_policy(&domain)
            .map_err(ApiError::from_store)?;
        let dane = dane_statuses(store.as_ref(), now())
            .map_err(ApiError::from_store)?
            .into_iter()
            .find(|d| d.domain.eq_ignore_ascii_case(&domain));
        let mut value = match &entry {
            Some(entry) => serde_json::to_value(entry).map_err(ApiError::internal)?,
            None if mta_sts.is_some() || dane.is_some() => json!({ "domain": domain }),
            None => return Err(from_review(ReviewError::Unknown(domain.clone()))),
        };
        let verdicts = store
            .learned()
            .recent_verdicts(&domain, 20)
            .map_err(ApiError::from_store)?;
        value["verdicts"] = serde_json::to_value(verdicts).map_err(ApiError::internal)?;
        value["mta_sts"] = serde_json::to_value(mta_sts).map_err(ApiError::internal)?;
        value["dane"] = serde_json::to_value(dane).map_err(ApiError::internal)?;
        Ok(Json(value))
    })
    .await
}

pub async fn forget(
    State(state): State<Shared>,
    Path(domain): Path<String>,
) -> ApiResult<Json<Value>> {
    let store = state.store.clone();
    let rows = blocking(move || {
        let rows = review::forget(store.as_ref(), &domain).map_err(from_review)?;
        tracing::info!("learned TLS level of {domain} forgotten through the admin UI/API");
        Ok(rows)
    })
    .await?;
    Ok(Json(json!({ "forgotten_rows": rows })))
}

pub async fn pin(
    State(state): State<Shared>,
    Path(domain): Path<String>,
) -> ApiResult<Json<Value>> {
    let store = state.store.clone();
    let entry = blocking(move || {
        let entry = review::pin(store.as_ref(), &domain, now()).map_err(from_review)?;
        tracing::info!("learned TLS level of {domain} pinned through the admin UI/API");
        Ok(entry)
    })
    .await?;
    Ok(Json(
        serde_json::to_value(entry).map_err(ApiError::internal)?,
    ))
}

/// How far back the DANE status looks, and at most how many attempts.
const DANE_WINDOW_SECS: i64 = 7 * 86_400;
const DANE_ATTEMPTS: usize = 2000;

/// A recipient domain's DANE status: its newest delivery attempt where
/// DANE applied (TLSA records used, or a TLSA failure), from the typed
/// attempt records.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DaneStatus {
    pub domain: String,
    pub host: String,
    /// Unix seconds.
    pub at: i64,
    /// The TLSA records used (`3 1 1 <hex>`).
    pub tlsa: Vec<String>,
    /// The certificate usages of those records (`DANE-EE`, `DANE-TA`).
    pub usages: Vec<String>,
    /// `met`, `failed` or `not-reached`.
    pub verdict: &'static str,
    /// The RFC 8460 result type of a failure.
    pub result_type: Option<&'static str>,
    /// As deferral reasons name the requirement (`DANE`).
    pub requirement: String,
}

/// RFC 7671 names of a TLSA record's first field.
fn usage_name(record: &str) -> String {
    match record.split_whitespace().next() {
        Some("0") => "PKIX-TA".to_string(),
        Some("1") => "PKIX-EE".to_string(),
        Some("2") => "DANE-TA".to_string(),
        Some("3") => "DANE-EE".to_string(),
        other => format!("usage {}", other.unwrap_or("?")),
    }
}

/// The DANE status of one attempt, when DANE applied to it.
pub fn dane_of(domain: &str, at: i64, attempt: &Attempt) -> Option<DaneStatus> {
    let tlsa_failure = matches!(
        attempt.result_type,
        Some(ResultType::TlsaInvalid | ResultType::DaneRequired)
    );
    if attempt.tlsa.is_empty() && attempt.policy_type != PolicyType::Tlsa && !tlsa_failure {
        return None;
    }
    let mut usages: Vec<String> = attempt.tlsa.iter().map(|r| usage_name(r)).collect();
    usages.dedup();
    Some(DaneStatus {
        domain: domain.to_string(),
        host: attempt.host.clone(),
        at,
        tlsa: attempt.tlsa.clone(),
        usages,
        verdict: attempt.verdict().as_str(),
        result_type: attempt.result_type.map(ResultType::as_str),
        requirement: attempt.requirement.clone(),
    })
}

/// The DANE status of every domain with a DANE attempt in the last 7
/// days (the newest 2000 such attempts), newest first, one per domain.
pub fn dane_statuses(store: &dyn Store, now: i64) -> Result<Vec<DaneStatus>, StoreError> {
    let events = store.search_events(&EventQuery {
        // Every DANE attempt's detail names "tlsa" (its policy type, its
        // records or its result type): the store narrows, we decide.
        text: Some("tlsa".to_string()),
        since: Some(now - DANE_WINDOW_SECS),
        until: None,
        kinds: vec![event_kind::DELIVERY_ATTEMPT.to_string()],
        limit: DANE_ATTEMPTS,
    })?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for event in &events {
        let Some(Event::DeliveryAttempt(d)) = event.parse() else {
            continue;
        };
        if seen.contains(&d.domain) {
            continue;
        }
        if let Some(status) = dane_of(&d.domain, event.at, &d.attempt) {
            seen.insert(d.domain.clone());
            out.push(status);
        }
    }
    Ok(out)
}
