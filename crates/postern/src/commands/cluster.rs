//! `postern cluster status`: the node registry (SPEC §9).

use anyhow::Result;
use postern_store::NodeState;

use crate::cli::ClusterCommand;
use crate::context::Context;

pub fn run(ctx: &Context, command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Status { json } => status(ctx, json),
    }
}

fn status(ctx: &Context, json: bool) -> Result<()> {
    let current = ctx.store.generation()?;
    let nodes = ctx.store.nodes()?;
    if json {
        let list: Vec<serde_json::Value> = nodes
            .iter()
            .map(|node| {
                serde_json::json!({
                    "name": node.name,
                    "hostname": node.hostname,
                    "version": node.version,
                    "state": node.state(current).as_str(),
                    "started_at": crate::commands::rfc3339(node.started_at),
                    "last_seen": crate::commands::rfc3339(node.last_seen),
                    "seen_seconds_ago": node.seen_ago,
                    "applied_version": node.applied_generation,
                    "current_version": current,
                    "certificate_fingerprints": node.fingerprints,
                    "queue_messages": node.queue_messages,
                    "queue_deferred": node.queue_deferred,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "store: {}   settings version: {current}",
        ctx.store.location()
    );
    if nodes.is_empty() {
        println!("no node has registered yet (a node registers when `postern run` starts)");
        return Ok(());
    }
    for node in &nodes {
        let state = node.state(current);
        let detail = match state {
            NodeState::Unreachable => format!("not seen for {} s", node.seen_ago),
            NodeState::Behind => {
                format!("applied version {} of {current}", node.applied_generation)
            }
            NodeState::Synchronized => format!("seen {} s ago", node.seen_ago),
        };
        println!(
            "{:<20} {:<13} {}  host {}  version {}  started {}  queue {} message(s), {} deferred",
            node.name,
            state.as_str(),
            detail,
            node.hostname,
            node.version,
            crate::commands::rfc3339(node.started_at),
            node.queue_messages,
            node.queue_deferred
        );
        for fingerprint in &node.fingerprints {
            println!("{:<20} presents SHA-256 {fingerprint}", "");
        }
    }
    Ok(())
}
