//! `/api/v1/policies`: the learned outbound TLS levels (SPEC §10 item 4),
//! with their evidence; forget one (`DELETE /{domain}`) or pin it as a
//! `[[domain]]` rule (`POST /{domain}/pin`). The rules are
//! `postern_store::learned::review`, shared with `postern policy`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use postern_store::learned::review::{self, ReviewError};
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
        let entry = review::show(store.as_ref(), &domain, now())
            .map_err(ApiError::from_store)?
            .ok_or_else(|| from_review(ReviewError::Unknown(domain.clone())))?;
        let verdicts = store
            .learned()
            .recent_verdicts(&entry.domain, 20)
            .map_err(ApiError::from_store)?;
        let mut value = serde_json::to_value(&entry).map_err(ApiError::internal)?;
        value["verdicts"] = serde_json::to_value(verdicts).map_err(ApiError::internal)?;
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
