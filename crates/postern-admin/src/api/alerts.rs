//! `/api/v1/alerts`: the alerts kept in the store (SPEC §12).

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::Shared;

/// `/api/v1/alerts`: the newest alerts of every node (SPEC §12).
pub async fn alerts(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let store = state.store.clone();
    let list = blocking(move || {
        store
            .alerts()
            .recent_alerts(500)
            .map_err(ApiError::from_store)
    })
    .await?;
    Ok(Json(json!({ "alerts": list })))
}
