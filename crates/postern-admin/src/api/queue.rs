//! `/api/v1/queue`: every node's queue (SPEC §9). This node's messages are
//! read and changed through [`QueueControl`]; another node's are read from
//! its published snapshot, and retry/delete are asked of that node through
//! the store (`202 Accepted` with the request, whose outcome
//! `/api/v1/queue/requests/{request}` tells).
//!
//! [`QueueControl`]: crate::QueueControl

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use postern_spool::QueueId;
use postern_store::{QueueAction, QueueRequest};
use serde_json::{json, Value};

use super::blocking;
use crate::cluster_queue::{self, Listing, Located};
use crate::error::{ApiError, ApiResult};
use crate::views::{self, QueueFilter};
use crate::Shared;

pub fn parse_id(id: &str) -> Result<QueueId, ApiError> {
    id.parse::<QueueId>()
        .map_err(|e| ApiError::bad_request("id", format!("\"{id}\" is not a queue id: {e}")))
}

/// Every node's queue, filtered. Blocking.
pub fn filtered(state: &Shared, filter: &QueueFilter) -> Result<Listing, ApiError> {
    filter
        .check()
        .map_err(|message| ApiError::invalid("state", message))?;
    let mut listing = cluster_queue::list(state)?;
    listing
        .items
        .retain(|located| filter.matches(&located.queued));
    Ok(listing)
}

pub fn located_json(located: &Located) -> Value {
    let mut value = views::queue_json(&located.queued);
    if let Value::Object(map) = &mut value {
        map.insert("node".to_string(), json!(located.node));
    }
    value
}

pub async fn list(
    State(state): State<Shared>,
    Query(filter): Query<QueueFilter>,
) -> ApiResult<Json<Vec<Value>>> {
    let listing = blocking(move || filtered(&state, &filter)).await?;
    Ok(Json(listing.items.iter().map(located_json).collect()))
}

/// Per node: messages, how many are listed, the snapshot's age,
/// reachability; and why other nodes are missing, if they are.
pub async fn nodes(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let listing = blocking(move || cluster_queue::list(&state)).await?;
    Ok(Json(json!({
        "nodes": listing.nodes,
        "warning": listing.warning,
    })))
}

pub async fn show(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let id = parse_id(&id)?;
    let located = blocking(move || cluster_queue::find(&state, &id)).await?;
    Ok(Json(located_json(&located)))
}

/// Where `id` is: this node, or the node to ask.
async fn locate(state: &Shared, id: &QueueId) -> Result<Located, ApiError> {
    let (state, id) = (state.clone(), id.clone());
    blocking(move || cluster_queue::find(&state, &id)).await
}

/// Record the request for the owner; `202` with it.
async fn ask_owner(
    state: &Shared,
    located: &Located,
    action: QueueAction,
) -> Result<Response, ApiError> {
    let (state2, node, id) = (
        state.clone(),
        located.node.clone(),
        located.queued.id.clone(),
    );
    let request: QueueRequest =
        blocking(move || cluster_queue::request(&state2, &node, &id, action)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "id": request.queue_id,
            "node": request.node,
            "request": request.id,
            "status": "waiting",
            "status_url": format!("/api/v1/queue/requests/{}", request.id),
        })),
    )
        .into_response())
}

pub async fn delete(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let id = parse_id(&id)?;
    let located = locate(&state, &id).await?;
    if !located.local {
        return ask_owner(&state, &located, QueueAction::Delete).await;
    }
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
    let located = locate(&state, &id).await?;
    if !located.local {
        return ask_owner(&state, &located, QueueAction::Retry).await;
    }
    state
        .queue
        .retry(id.clone())
        .await
        .map_err(ApiError::from_queue)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id.to_string(), "node": located.node, "scheduled": "now" })),
    )
        .into_response())
}

/// A retry/delete request made for another node: waiting, done or failed.
pub async fn request(
    State(state): State<Shared>,
    Path(request): Path<String>,
) -> ApiResult<Json<Value>> {
    let id: i64 = request.parse().map_err(|_| {
        ApiError::bad_request("request", format!("\"{request}\" is not a request number"))
    })?;
    Ok(Json(
        blocking(move || cluster_queue::find_request(&state, id)).await?,
    ))
}
