//! `node-unreachable` and `node-behind` (SPEC §9): every node watches the
//! registry of a cluster store and alerts about the *other* nodes — one
//! not seen for 30 s (`postern cluster status` says *unreachable*), one
//! whose applied settings generation has lagged the store's, unchanged,
//! for [`BEHIND_GRACE`] (a change takes up to 2 s to apply everywhere, so
//! a moment behind is normal; stuck behind is not).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_store::{AlertKind, NodeState, NodeStatus, Store};

use super::Alerts;
use crate::context::unix_now;

/// How often the registry is read.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How long a node may stay behind on one generation before it alerts.
pub const BEHIND_GRACE: Duration = Duration::from_secs(30);

/// What the watcher remembers between reads: since when each node has
/// been behind, on which applied generation.
#[derive(Default)]
pub struct Watch {
    behind_since: HashMap<String, (i64, Instant)>,
}

/// An alert the registry calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAlert {
    pub kind: AlertKind,
    pub node: String,
    pub hostname: String,
    pub detail: String,
}

impl Watch {
    /// The alerts `nodes` call for at `at`, given the store's generation.
    pub fn look(
        &mut self,
        me: &str,
        nodes: &[NodeStatus],
        generation: i64,
        at: Instant,
    ) -> Vec<NodeAlert> {
        let mut out = Vec::new();
        let mut still_behind = HashMap::new();
        for node in nodes.iter().filter(|n| n.name != me) {
            match node.state(generation) {
                NodeState::Unreachable => out.push(NodeAlert {
                    kind: AlertKind::NodeUnreachable,
                    node: node.name.clone(),
                    hostname: node.hostname.clone(),
                    detail: format!(
                        "node {} ({}) not seen for {} s",
                        node.name, node.hostname, node.seen_ago
                    ),
                }),
                NodeState::Behind => {
                    let since = match self.behind_since.get(&node.name) {
                        Some((applied, since)) if *applied == node.applied_generation => *since,
                        _ => at,
                    };
                    still_behind.insert(node.name.clone(), (node.applied_generation, since));
                    let lag = at.saturating_duration_since(since);
                    if lag >= BEHIND_GRACE {
                        out.push(NodeAlert {
                            kind: AlertKind::NodeBehind,
                            node: node.name.clone(),
                            hostname: node.hostname.clone(),
                            detail: format!(
                                "node {} ({}) applied settings generation {}, the store is at \
                                 {generation}, for {} s",
                                node.name,
                                node.hostname,
                                node.applied_generation,
                                lag.as_secs()
                            ),
                        });
                    }
                }
                NodeState::Synchronized => {}
            }
        }
        self.behind_since = still_behind;
        out
    }
}

/// Read the registry every [`CHECK_EVERY`], for ever (cluster stores only).
pub async fn watch_loop(alerts: Alerts, store: Arc<dyn Store>, me: String) {
    let watch = Arc::new(std::sync::Mutex::new(Watch::default()));
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    loop {
        ticker.tick().await;
        let (alerts, store, me, watch) = (
            alerts.clone(),
            Arc::clone(&store),
            me.clone(),
            Arc::clone(&watch),
        );
        let _ = tokio::task::spawn_blocking(move || {
            let (Ok(nodes), Ok(generation)) = (store.nodes(), store.generation()) else {
                // The store's own state changes are logged by the store.
                return;
            };
            let found = watch.lock().unwrap_or_else(|p| p.into_inner()).look(
                &me,
                &nodes,
                generation,
                Instant::now(),
            );
            for a in found {
                alerts.raise(a.kind, &a.node, &a.hostname, &a.detail, unix_now());
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, seen_ago: i64, applied: i64) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            hostname: format!("{name}.example"),
            version: "0".into(),
            started_at: 0,
            last_seen: 0,
            seen_ago,
            applied_generation: applied,
            fingerprints: Vec::new(),
            queue_messages: 0,
            queue_deferred: 0,
        }
    }

    #[test]
    fn unreachable_now_behind_after_the_grace() {
        let mut w = Watch::default();
        let t0 = Instant::now();
        let nodes = [
            node("gw1", 500, 1),
            node("gw2", 2, 4),
            node("gw3", 40, 5),
            node("gw4", 1, 5),
        ];
        let kinds = |v: Vec<NodeAlert>| -> Vec<(AlertKind, String)> {
            v.into_iter().map(|a| (a.kind, a.node)).collect()
        };
        // gw1 is this node: never about itself.
        assert_eq!(
            kinds(w.look("gw1", &nodes, 5, t0)),
            vec![(AlertKind::NodeUnreachable, "gw3".into())]
        );
        assert_eq!(
            kinds(w.look("gw1", &nodes, 5, t0 + Duration::from_secs(29))),
            vec![(AlertKind::NodeUnreachable, "gw3".into())]
        );
        let late = w.look("gw1", &nodes, 5, t0 + Duration::from_secs(31));
        assert_eq!(
            kinds(late.clone()),
            vec![
                (AlertKind::NodeBehind, "gw2".into()),
                (AlertKind::NodeUnreachable, "gw3".into())
            ]
        );
        assert!(
            late[0].detail.contains("generation 4, the store is at 5"),
            "{late:?}"
        );
        // gw2 applies 5, then the store moves to 6: the clock starts again.
        let moved = [node("gw2", 2, 5)];
        assert!(w
            .look("gw1", &moved, 6, t0 + Duration::from_secs(40))
            .is_empty());
        assert!(w
            .look("gw1", &moved, 6, t0 + Duration::from_secs(60))
            .is_empty());
        assert_eq!(
            w.look("gw1", &moved, 6, t0 + Duration::from_secs(71)).len(),
            1
        );
    }
}
