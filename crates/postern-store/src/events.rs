//! Message tracking: one row per event of a message's life (SPEC §2
//! `postern trace`, §6 per-attempt records, §9 TLS-RPT input).
//!
//! Events are appended, never changed. The `detail` column holds a JSON
//! object whose shape depends on the kind (TLS version, cipher, host, reply,
//! ...); the store does not interpret it.

use serde::{Deserialize, Serialize};

/// The kinds of tracking events the gateway records.
pub mod event_kind {
    pub const RECEIVED: &str = "received";
    pub const REJECTED: &str = "rejected";
    pub const QUEUED: &str = "queued";
    pub const DELIVERY_ATTEMPT: &str = "delivery_attempt";
    pub const DELIVERED: &str = "delivered";
    pub const DEFERRED: &str = "deferred";
    pub const BOUNCED: &str = "bounced";
}

/// One event of one message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TrackingEvent {
    pub queue_id: String,
    /// The Message-ID header value as received, when known.
    pub message_id: Option<String>,
    /// Unix seconds.
    pub at: i64,
    /// One of [`event_kind`].
    pub kind: String,
    pub detail: serde_json::Value,
}

/// The Message-ID as given and in its other form (with or without `<>`).
pub(crate) fn message_id_forms(id: &str) -> (String, String) {
    let id = id.trim();
    match id.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
        Some(bare) => (id.to_string(), bare.to_string()),
        None => (id.to_string(), format!("<{id}>")),
    }
}

/// A search over tracking events (the admin UI's message tracking and
/// dashboard). Every condition given must hold; results are newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// A queue id, a Message-ID (with or without `<>`), or any text found
    /// in the Message-ID or the event's detail (ASCII case-insensitive):
    /// a sender or recipient address, a client address, a host name.
    pub text: Option<String>,
    /// Only events at or after this time (unix seconds).
    pub since: Option<i64>,
    /// Only events at or before this time (unix seconds).
    pub until: Option<i64>,
    /// Only these kinds ([`event_kind`]); empty means every kind.
    pub kinds: Vec<String>,
    /// At most this many events.
    pub limit: usize,
}

/// `text` as a LIKE pattern matching it anywhere, with `\` as escape.
pub(crate) fn like_anywhere(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The detail with the recording node's name added as `"node"` (kept when
/// the event names one already): every node's events are in one table, and
/// `postern trace` shows where each happened.
pub(crate) fn with_node(detail: &serde_json::Value, node: &str) -> serde_json::Value {
    let mut detail = detail.clone();
    if let serde_json::Value::Object(map) = &mut detail {
        map.entry("node")
            .or_insert_with(|| serde_json::Value::String(node.to_string()));
    }
    detail
}

/// The node an (already stamped) detail names.
pub(crate) fn node_of(detail: &serde_json::Value) -> Option<&str> {
    detail.get("node").and_then(serde_json::Value::as_str)
}
