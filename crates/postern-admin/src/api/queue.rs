//! `/api/v1/queue`: the running gateway's queue, through [`QueueControl`].
//!
//! [`QueueControl`]: crate::QueueControl

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use postern_spool::{QueueId, QueuedEnvelope};
use serde_json::{json, Value};

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::views::{self, QueueFilter};
use crate::Shared;

pub fn parse_id(id: &str) -> Result<QueueId, ApiError> {
    id.parse::<QueueId>()
        .map_err(|e| ApiError::bad_request("id", format!("\"{id}\" is not a queue id: {e}")))
}

/// The queue, filtered. Blocking.
pub fn filtered(state: &Shared, filter: &QueueFilter) -> Result<Vec<QueuedEnvelope>, ApiError> {
    filter
        .check()
        .map_err(|message| ApiError::invalid("state", message))?;
    let list = state.queue.list().map_err(ApiError::from_queue)?;
    Ok(list.into_iter().filter(|q| filter.matches(q)).collect())
}

pub async fn list(
    State(state): State<Shared>,
    Query(filter): Query<QueueFilter>,
) -> ApiResult<Json<Vec<Value>>> {
    let list = blocking(move || filtered(&state, &filter)).await?;
    Ok(Json(list.iter().map(views::queue_json).collect()))
}

pub async fn show(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let queued = blocking(move || state.queue.get(&id).map_err(ApiError::from_queue)).await?;
    Ok(Json(views::queue_json(&queued)))
}

pub async fn delete(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let queue = state.queue.clone();
    let probe = id.clone();
    blocking(move || queue.get(&probe).map(|_| ()).map_err(ApiError::from_queue)).await?;
    state
        .queue
        .delete(id.clone())
        .await
        .map_err(ApiError::from_queue)?;
    tracing::info!("queued message {id} deleted through the admin UI/API");
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn retry(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let queue = state.queue.clone();
    let probe = id.clone();
    blocking(move || queue.get(&probe).map(|_| ()).map_err(ApiError::from_queue)).await?;
    state
        .queue
        .retry(id.clone())
        .await
        .map_err(ApiError::from_queue)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id.to_string(), "scheduled": "now" })),
    )
        .into_response())
}
