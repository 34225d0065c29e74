//! `postern dkim generate|list|delete` (SPEC §11): the DKIM keys that sign
//! mailed TLS reports. A key is named after the DNS name of its record,
//! `<selector>._domainkey.<domain>`; `generate` prints the TXT record to
//! publish there, and a key `tlsrpt.dkim_key` names cannot be deleted.

use anyhow::{anyhow, Result};
use clap::{Subcommand, ValueEnum};
use postern_store::DkimKeyRecord;
use postern_tls::{generate_dkim_key, DkimKeyType};

use crate::context::Context;

#[derive(Debug, Subcommand)]
pub enum DkimCommand {
    /// Make a key for DOMAIN and SELECTOR, store it, print its DNS TXT record.
    Generate {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        #[arg(long, value_enum, default_value = "rsa2048")]
        key: KeyArg,
    },
    /// Every key: name, domain, selector, key type, DNS record.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete a key by name (refused while tlsrpt.dkim_key names it).
    Delete { name: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyArg {
    Rsa2048,
    Ed25519,
}

impl From<KeyArg> for DkimKeyType {
    fn from(key: KeyArg) -> Self {
        match key {
            KeyArg::Rsa2048 => DkimKeyType::Rsa2048,
            KeyArg::Ed25519 => DkimKeyType::Ed25519,
        }
    }
}

pub fn run(ctx: &Context, command: DkimCommand) -> Result<()> {
    let store = ctx.store.as_ref();
    match command {
        DkimCommand::Generate {
            domain,
            selector,
            key,
        } => {
            let name = postern_config::dkim_key_name(&selector, &domain)
                .map_err(|e| anyhow!("--{}: {}; nothing was stored", e.key, e.message))?;
            if store.dkim_key(&name)?.is_some() {
                return Err(anyhow!(
                    "a DKIM key named \"{name}\" already exists; delete it first, or choose \
                     another --selector (nothing was changed)"
                ));
            }
            let pair = generate_dkim_key(key.into())?;
            let (selector, domain) = name
                .split_once("._domainkey.")
                .map(|(s, d)| (s.to_string(), d.to_string()))
                .unwrap_or((selector, domain));
            let record = DkimKeyRecord {
                name: name.clone(),
                domain,
                selector,
                key_type: pair.key_type.as_str().to_string(),
                private_key_pem: pair.private_key_pem,
                dns_record: pair.dns_record,
                created_at: time::OffsetDateTime::now_utc().unix_timestamp(),
            };
            store
                .add_dkim_key(&record)
                .map_err(|e| anyhow!("{e}; nothing was stored"))?;
            eprintln!(
                "DKIM key \"{name}\" ({}) stored; publish this TXT record, then set \
                 tlsrpt.dkim_key = \"{name}\" to sign TLS reports with it:",
                record.key_type
            );
            println!("{}", zone_line(&record));
        }
        DkimCommand::List { json } => {
            let keys = store.dkim_keys()?;
            if json {
                let list: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "name": k.name,
                            "domain": k.domain,
                            "selector": k.selector,
                            "key_type": k.key_type,
                            "record": k.dns_record,
                            "created_at": crate::commands::rfc3339(k.created_at),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for k in &keys {
                    println!(
                        "{}  domain={}  selector={}  key={}  record=\"{}\"",
                        k.name, k.domain, k.selector, k.key_type, k.dns_record
                    );
                }
            }
        }
        DkimCommand::Delete { name } => {
            store
                .delete_dkim_key(&name)
                .map_err(|e| anyhow!("{e}; nothing was deleted"))?;
            eprintln!("DKIM key \"{name}\" deleted (remove its TXT record from DNS too)");
        }
    }
    Ok(())
}

/// The record as a zone-file line; TXT strings are at most 255 bytes
/// (RFC 1035 §3.3.14), so a long RSA record is split into several.
fn zone_line(key: &DkimKeyRecord) -> String {
    let strings: Vec<String> = key
        .dns_record
        .as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect();
    format!("{}. IN TXT {}", key.name, strings.join(" "))
}
