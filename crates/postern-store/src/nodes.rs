//! The node registry (SPEC §9): every node of an installation records what
//! it runs and what it has applied, so any node can tell which are
//! synchronized, behind, or gone.

use serde::{Deserialize, Serialize};

/// A node not seen for this long is unreachable (SPEC §9: 30 s).
pub const UNREACHABLE_AFTER_SECS: i64 = 30;

/// One row of the node registry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `node_name` of the node config; unique per installation.
    pub name: String,
    /// The host name it greets with.
    pub hostname: String,
    /// Postern version.
    pub version: String,
    /// Unix seconds.
    pub started_at: i64,
    /// Unix seconds, by the store's clock (set by the store on write).
    pub last_seen: i64,
    /// Seconds since `last_seen`, by the store's clock (set by the store on
    /// read), so nodes with skewed clocks still agree.
    pub seen_ago: i64,
    /// The store generation whose settings and certificates it applied.
    pub applied_generation: i64,
    /// SHA-256 fingerprints (hex) of the certificates its listeners present.
    pub fingerprints: Vec<String>,
    /// Messages in its spool.
    pub queue_messages: i64,
    /// Deferred recipients in its spool.
    pub queue_deferred: i64,
}

/// What `postern cluster status` says about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Seen recently, applied the current generation.
    Synchronized,
    /// Seen recently, applied an older generation.
    Behind,
    /// Not seen for [`UNREACHABLE_AFTER_SECS`].
    Unreachable,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Synchronized => "synchronized",
            NodeState::Behind => "behind",
            NodeState::Unreachable => "unreachable",
        }
    }
}

impl NodeStatus {
    /// The node's state, given the store's current generation.
    pub fn state(&self, current_generation: i64) -> NodeState {
        if self.seen_ago >= UNREACHABLE_AFTER_SECS {
            NodeState::Unreachable
        } else if self.applied_generation == current_generation {
            NodeState::Synchronized
        } else {
            NodeState::Behind
        }
    }
}
