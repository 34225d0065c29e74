//! `GET /api/v1/cluster`: the node registry (SPEC §9), the same data as
//! `postern cluster status --json`, with each node's state judged against
//! the store's current settings version. The Cluster page shows the same.

use axum::extract::State;
use axum::Json;
use postern_store::{NodeStatus, Store, StoreError};
use serde::Serialize;

use super::blocking;
use crate::error::{ApiError, ApiResult};
use crate::views::rfc3339;
use crate::Shared;

/// One node as the page and the API show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub hostname: String,
    pub version: String,
    /// `synchronized`, `behind` or `unreachable` (not seen for 30 s).
    pub state: &'static str,
    pub started_at: String,
    pub last_seen: String,
    pub seen_seconds_ago: i64,
    pub applied_version: i64,
    pub current_version: i64,
    pub certificate_fingerprints: Vec<String>,
    pub queue_messages: i64,
    pub queue_deferred: i64,
}

/// The whole installation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterView {
    /// Where the store is (a URL without its password, or a file).
    pub store: String,
    /// The settings version every node should have applied.
    pub settings_version: i64,
    pub nodes: Vec<NodeView>,
}

fn node_view(node: &NodeStatus, current: i64) -> NodeView {
    NodeView {
        name: node.name.clone(),
        hostname: node.hostname.clone(),
        version: node.version.clone(),
        state: node.state(current).as_str(),
        started_at: rfc3339(node.started_at),
        last_seen: rfc3339(node.last_seen),
        seen_seconds_ago: node.seen_ago,
        applied_version: node.applied_generation,
        current_version: current,
        certificate_fingerprints: node.fingerprints.clone(),
        queue_messages: node.queue_messages,
        queue_deferred: node.queue_deferred,
    }
}

/// Read the registry and the current version. Blocking.
pub fn read(store: &dyn Store) -> Result<ClusterView, StoreError> {
    let current = store.generation()?;
    let nodes = store.nodes()?;
    Ok(ClusterView {
        store: store.location(),
        settings_version: current,
        nodes: nodes.iter().map(|n| node_view(n, current)).collect(),
    })
}

/// Off the async threads.
pub async fn load(state: &Shared) -> Result<ClusterView, ApiError> {
    let store = state.store.clone();
    blocking(move || read(store.as_ref()).map_err(ApiError::from_store)).await
}

pub async fn show(State(state): State<Shared>) -> ApiResult<Json<ClusterView>> {
    Ok(Json(load(&state).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(seen_ago: i64, applied: i64) -> NodeStatus {
        NodeStatus {
            name: "gw1".into(),
            hostname: "mx1.example".into(),
            version: "0.1.0".into(),
            started_at: 1_700_000_000,
            last_seen: 1_700_000_100,
            seen_ago,
            applied_generation: applied,
            fingerprints: vec!["AB:CD".into()],
            queue_messages: 3,
            queue_deferred: 1,
        }
    }

    #[test]
    fn read_gives_the_registry_with_the_current_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("store.db");
        let store = postern_store::SqliteStore::open(&path, "gw1").expect("store");
        let current = store.generation().expect("generation");
        store.register_node(&status(0, current)).expect("register");
        let view = read(&store).expect("read");
        assert_eq!(view.store, path.display().to_string());
        assert_eq!(view.settings_version, current);
        assert_eq!(view.nodes.len(), 1);
        assert_eq!(view.nodes[0].state, "synchronized");
        assert_eq!(view.nodes[0].queue_messages, 3);
        // A change the node has not applied yet: behind.
        store
            .set_admin_password_hash("$argon2id$x")
            .expect("credentials");
        assert_eq!(read(&store).expect("read").nodes[0].state, "synchronized");
        store
            .add_certificate(&postern_store::CertificateRecord {
                name: "Some CA".into(),
                chain_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                key_pem: None,
                created_at: 0,
            })
            .expect("add");
        assert_eq!(read(&store).expect("read").nodes[0].state, "behind");
    }

    #[test]
    fn states_follow_the_registry() {
        assert_eq!(node_view(&status(2, 7), 7).state, "synchronized");
        assert_eq!(node_view(&status(2, 6), 7).state, "behind");
        assert_eq!(node_view(&status(30, 7), 7).state, "unreachable");
        let view = node_view(&status(2, 7), 7);
        assert_eq!(view.last_seen, "2023-11-14T22:15:00Z");
        assert_eq!(view.certificate_fingerprints, ["AB:CD"]);
    }
}
