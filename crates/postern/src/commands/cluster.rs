//! `postern cluster status` (the node registry) and `postern store copy`
//! (from the embedded store into a cluster's PostgreSQL), SPEC §9.

use anyhow::{bail, Context as _, Result};
use postern_store::{NodeState, PgStore, SqliteStore};

use crate::cli::{ClusterCommand, StoreCommand};
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

pub fn store(ctx: &Context, command: StoreCommand) -> Result<()> {
    match command {
        StoreCommand::Copy { to } => copy(ctx, &to),
    }
}

fn copy(ctx: &Context, to: &str) -> Result<()> {
    if ctx.node.store != "sqlite" {
        bail!(
            "store copy copies this node's embedded store, but its store is {} already",
            ctx.store.location()
        );
    }
    if !postern_store::is_postgres_url(to) {
        bail!("--to: give a postgres:// or postgresql:// URL");
    }
    let path = ctx.node.store_path();
    let source = SqliteStore::open(&path, &ctx.node_name)
        .with_context(|| format!("opening the store {}", path.display()))?;
    let target = PgStore::open(to, &ctx.node_name).context("opening the target store")?;
    let report = postern_store::copy_installation(&source, &target, &ctx.node_name)
        .with_context(|| format!("copying into {}", postern_store::Store::location(&target)))?;
    println!(
        "copied {} into {} and verified it:",
        path.display(),
        postern_store::Store::location(&target)
    );
    let settings = if report.settings { "saved" } else { "defaults" };
    println!("  settings: {settings}, {} domain(s)", report.domains);
    println!(
        "  certificates: {} ({} with private key)",
        report.certificates, report.private_keys
    );
    let password = if report.admin_password {
        "yes"
    } else {
        "not set"
    };
    println!("  admin password: {password}");
    println!("  API tokens: {}", report.api_tokens);
    println!("  DKIM keys: {}", report.dkim_keys);
    println!("  tracking events: {}", report.events);
    println!("set store = \"<that URL>\" in postern.toml on every node to use it");
    Ok(())
}
