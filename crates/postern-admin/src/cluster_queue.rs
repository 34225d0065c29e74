//! Every node's queue (SPEC §9): this node's read live through
//! [`QueueControl`](crate::QueueControl), the other nodes' from the
//! snapshots they publish to the store; and retry/delete for a message on
//! another node, asked of its owner through the store (only the owner
//! writes its spool). All functions here block (call them through
//! [`crate::api::blocking`]).

use axum::http::StatusCode;
use postern_spool::{QueueId, QueuedEnvelope};
use postern_store::{NodeStatus, QueueAction, QueueRequest, UNREACHABLE_AFTER_SECS};

use crate::error::ApiError;
use crate::queue::{from_snapshot_entry, QueueError};
use crate::Shared;

/// A queued message and the node whose spool holds it.
#[derive(Clone, Debug)]
pub struct Located {
    pub node: String,
    /// On this node (read live); otherwise from the owner's snapshot.
    pub local: bool,
    pub queued: QueuedEnvelope,
}

/// What the listing says about one node's queue.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeQueue {
    pub node: String,
    pub local: bool,
    /// Messages in its spool.
    pub messages: i64,
    /// How many of them the listing has (a snapshot holds the oldest
    /// [`postern_store::SNAPSHOT_MAX_ENTRIES`]).
    pub listed: usize,
    /// Seconds since the node published its snapshot (0 for this node).
    pub age: i64,
    /// Not seen for [`UNREACHABLE_AFTER_SECS`]: its snapshot may be stale
    /// and it cannot take requests.
    pub unreachable: bool,
}

/// Every node's queue.
pub struct Listing {
    pub items: Vec<Located>,
    pub nodes: Vec<NodeQueue>,
    /// Why other nodes' queues are missing (store unreachable), if so.
    pub warning: Option<String>,
}

fn own_name(state: &Shared) -> &str {
    &state.options.node_name
}

fn unreachable(nodes: &[NodeStatus], name: &str) -> Option<i64> {
    match nodes.iter().find(|n| n.name == name) {
        Some(node) if node.seen_ago < UNREACHABLE_AFTER_SECS => None,
        Some(node) => Some(node.seen_ago),
        None => Some(i64::MAX),
    }
}

/// The other nodes' published queues, or why they cannot be read.
fn remote(state: &Shared) -> Result<(Vec<Located>, Vec<NodeQueue>), String> {
    let snapshots = state.store.queue_snapshots().map_err(|e| e.to_string())?;
    let nodes = state.store.nodes().map_err(|e| e.to_string())?;
    let mut items = Vec::new();
    let mut summaries = Vec::new();
    for snapshot in snapshots.into_iter().filter(|s| s.node != own_name(state)) {
        let before = items.len();
        items.extend(
            snapshot
                .entries
                .iter()
                .filter_map(from_snapshot_entry)
                .map(|queued| Located {
                    node: snapshot.node.clone(),
                    local: false,
                    queued,
                }),
        );
        summaries.push(NodeQueue {
            unreachable: unreachable(&nodes, &snapshot.node).is_some(),
            node: snapshot.node,
            local: false,
            messages: snapshot.messages,
            listed: items.len() - before,
            age: snapshot.age,
        });
    }
    Ok((items, summaries))
}

/// This node's queue and every other node's, oldest first.
pub fn list(state: &Shared) -> Result<Listing, ApiError> {
    let own = state.queue.list().map_err(ApiError::from_queue)?;
    let mut nodes = vec![NodeQueue {
        node: own_name(state).to_string(),
        local: true,
        messages: i64::try_from(own.len()).unwrap_or(i64::MAX),
        listed: own.len(),
        age: 0,
        unreachable: false,
    }];
    let mut items: Vec<Located> = own
        .into_iter()
        .map(|queued| Located {
            node: own_name(state).to_string(),
            local: true,
            queued,
        })
        .collect();
    let warning = match remote(state) {
        Ok((others, summaries)) => {
            items.extend(others);
            nodes.extend(summaries);
            None
        }
        Err(why) => Some(format!("the other nodes' queues are not shown: {why}")),
    };
    items.sort_by(|a, b| {
        (a.queued.envelope.received_at, a.queued.id.as_str())
            .cmp(&(b.queued.envelope.received_at, b.queued.id.as_str()))
    });
    Ok(Listing {
        items,
        nodes,
        warning,
    })
}

/// The message `id` on whichever node holds it: this node first, then the
/// other nodes' snapshots.
pub fn find(state: &Shared, id: &QueueId) -> Result<Located, ApiError> {
    match state.queue.get(id) {
        Ok(queued) => {
            return Ok(Located {
                node: own_name(state).to_string(),
                local: true,
                queued,
            })
        }
        Err(QueueError::NotFound) => {}
        Err(e) => return Err(ApiError::from_queue(e)),
    }
    let (items, _) = remote(state).map_err(|why| {
        ApiError::not_found(format!(
            "no such queued message on this node, and the other nodes' queues cannot be read: {why}"
        ))
    })?;
    items
        .into_iter()
        .find(|located| located.queued.id == *id)
        .ok_or_else(|| ApiError::not_found("no such queued message on any node"))
}

/// Ask `node` to carry out `action` on its message `id`. Refused, and not
/// recorded, when the node is unreachable: nothing would carry it out.
pub fn request(
    state: &Shared,
    node: &str,
    id: &QueueId,
    action: QueueAction,
) -> Result<QueueRequest, ApiError> {
    let nodes = state.store.nodes().map_err(ApiError::from_store)?;
    if let Some(seen_ago) = unreachable(&nodes, node) {
        let since = if seen_ago == i64::MAX {
            "never seen in the node registry".to_string()
        } else {
            format!("not seen for {seen_ago} s")
        };
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "node \"{node}\" is unreachable ({since}): the {} of {id} was not requested; \
                 it can be when the node is back",
                action.as_str()
            ),
        )
        .field("node");
        error.retry_after = Some(5);
        return Err(error);
    }
    let request = state
        .store
        .request_queue_action(node, id.as_str(), action)
        .map_err(ApiError::from_store)?;
    tracing::info!(
        "queued message {id} on node {node}: {} requested (request {}) through the admin UI/API",
        action.as_str(),
        request.id
    );
    Ok(request)
}

/// One request as the API shows it; `unreachable` tells that its node is
/// not seen any more while the request waits.
pub fn request_json(request: &QueueRequest, owner_unreachable: bool) -> serde_json::Value {
    let (status, result) = match &request.outcome {
        None => ("waiting", None),
        Some(Ok(text)) => ("done", Some(text.as_str())),
        Some(Err(text)) => ("failed", Some(text.as_str())),
    };
    serde_json::json!({
        "request": request.id,
        "node": request.node,
        "id": request.queue_id,
        "action": request.action.as_str(),
        "requested_by": request.requested_by,
        "requested_at": crate::views::rfc3339(request.requested_at),
        "done_at": request.done_at.map(crate::views::rfc3339),
        "status": status,
        "result": result,
        "node_unreachable": owner_unreachable && request.outcome.is_none(),
    })
}

/// A request by id, with whether its node is unreachable now.
pub fn find_request(state: &Shared, request_id: i64) -> Result<serde_json::Value, ApiError> {
    let request = state
        .store
        .queue_request(request_id)
        .map_err(ApiError::from_store)?
        .ok_or_else(|| ApiError::not_found(format!("no queue request {request_id}")))?;
    let nodes = state.store.nodes().map_err(ApiError::from_store)?;
    let gone = unreachable(&nodes, &request.node).is_some();
    Ok(request_json(&request, gone))
}
