//! `postern policy list|show DOMAIN|forget DOMAIN|pin DOMAIN`: review the
//! learned outbound TLS levels (SPEC §10 item 4). The rules are in
//! `postern_store::learned::review`, shared with the admin API.

use anyhow::{anyhow, Result};
use clap::Subcommand;
use postern_store::learned::{review, DomainEvidence};

use crate::commands::rfc3339;
use crate::context::{unix_now, Context};

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Every recipient domain with recorded deliveries and its learned level.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One domain: learned level, deliveries per MX host and level, downgrades.
    Show {
        domain: String,
        #[arg(long)]
        json: bool,
    },
    /// Forget what was learned for a domain (it is learned afresh).
    Forget { domain: String },
    /// Write the learned level as a `[[domain]]` rule (`tls = ...`).
    Pin { domain: String },
}

pub fn run(ctx: &Context, command: PolicyCommand) -> Result<()> {
    let store = ctx.store.as_ref();
    let now = unix_now();
    match command {
        PolicyCommand::List { json } => {
            let all = review::list(store, now)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no delivery has been recorded yet: nothing learned");
            } else {
                println!(
                    "{:<32} {:<9} {:>10}  {:<20} {:<20} expires",
                    "domain", "learned", "deliveries", "first seen", "last seen"
                );
                for entry in &all {
                    println!("{}", list_line(entry));
                }
            }
        }
        PolicyCommand::Show { domain, json } => {
            let entry = review::show(store, &domain, now)?
                .ok_or_else(|| anyhow!("{}", review::ReviewError::Unknown(domain.clone())))?;
            let verdicts = store.learned().recent_verdicts(&entry.domain, 20)?;
            if json {
                let mut value = serde_json::to_value(&entry)?;
                value["verdicts"] = serde_json::to_value(&verdicts)?;
                println!("{}", serde_json::to_string_pretty(&value)?);
                return Ok(());
            }
            print!("{}", show_text(&entry));
            if !verdicts.is_empty() {
                println!("recent report-only verdicts:");
                for v in &verdicts {
                    println!(
                        "  {}  {}  {}  {}{}",
                        rfc3339(v.at),
                        v.host,
                        v.requirement,
                        if v.would_fail {
                            "would fail"
                        } else {
                            "would pass"
                        },
                        if v.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", v.reason)
                        }
                    );
                }
            }
        }
        PolicyCommand::Forget { domain } => {
            let rows = review::forget(store, &domain).map_err(|e| anyhow!("{e}"))?;
            eprintln!(
                "forgot what was learned for {domain} ({rows} row(s) of evidence); running \
                 gateways apply it within 2 seconds"
            );
        }
        PolicyCommand::Pin { domain } => {
            let entry = review::pin(store, &domain, now)
                .map_err(|e| anyhow!("{e}; nothing was changed"))?;
            let tls = entry
                .tls
                .and_then(|t| serde_json::to_value(t).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            eprintln!(
                "pinned {}: [[domain]] name = \"{}\" tls = \"{tls}\"",
                domain, entry.name
            );
        }
    }
    Ok(())
}

fn list_line(entry: &DomainEvidence) -> String {
    match &entry.learned {
        Some(l) => format!(
            "{:<32} {:<9} {:>10}  {:<20} {:<20} {}",
            entry.domain,
            l.level.as_str(),
            l.deliveries,
            rfc3339(l.first_seen),
            rfc3339(l.last_seen),
            rfc3339(l.expires_at)
        ),
        None => {
            let deliveries: i64 = entry.hosts.iter().map(|h| h.deliveries).sum();
            let first = entry.hosts.iter().map(|h| h.first_seen).min().unwrap_or(0);
            let last = entry.hosts.iter().map(|h| h.last_seen).max().unwrap_or(0);
            format!(
                "{:<32} {:<9} {:>10}  {:<20} {:<20} -",
                entry.domain,
                "(none)",
                deliveries,
                rfc3339(first),
                rfc3339(last)
            )
        }
    }
}

fn show_text(entry: &DomainEvidence) -> String {
    let mut out = format!("domain: {}\n", entry.domain);
    match &entry.learned {
        Some(l) => out.push_str(&format!(
            "learned: {} ({} deliveries from {} to {}; forgotten at {} unless confirmed)\n",
            l.level.as_str(),
            l.deliveries,
            rfc3339(l.first_seen),
            rfc3339(l.last_seen),
            rfc3339(l.expires_at)
        )),
        None => out.push_str(
            "learned: nothing yet (too few deliveries, too short a span, or only plaintext)\n",
        ),
    }
    out.push_str("evidence (MX host, level, deliveries, first seen, last seen):\n");
    for h in &entry.hosts {
        out.push_str(&format!(
            "  {:<32} {:<9} {:>8}  {}  {}\n",
            h.host,
            h.level.as_str(),
            h.deliveries,
            rfc3339(h.first_seen),
            rfc3339(h.last_seen)
        ));
    }
    out
}
