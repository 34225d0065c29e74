//! The administrative commands: settings, certificates, queue, trace, check.
//! Each works on the same store and spool as the running gateway.

pub mod admin;
pub mod cluster;
mod probe_sts;
pub mod trace;

pub use trace::trace;
pub mod dkim;
pub mod policy;
pub mod tlsa;
pub mod tlsrpt;

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _, Result};
use postern_config::Settings;
use postern_spool::{QueueId, Spool};
use postern_store::{CertificateRecord, Store};
use postern_tls::{describe, generate_self_signed, validate_entry, KeyKind};

use crate::cli::{CertCommand, Format, GenerateArgs, ImportArgs, QueueCommand, SettingsCommand};
use crate::context::{unix_now, Context};

pub fn settings(ctx: &Context, command: SettingsCommand) -> Result<()> {
    let store = ctx.store.as_ref();
    match command {
        SettingsCommand::Show { format } | SettingsCommand::Export { format } => {
            print!("{}", render(&store.settings()?, format));
        }
        SettingsCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let settings = parse_settings_file(&file, &text)
                .map_err(|e| anyhow!("{}: {e}; nothing was changed", file.display()))?;
            // What the import does to the domain table, said after it.
            let before = store.settings().ok();
            store
                .put_settings(&settings)
                .map_err(|e| anyhow!("{e}; nothing was changed"))?;
            eprintln!("settings imported from {}", file.display());
            if let Some(before) = before {
                for warning in postern_config::DomainChanges::between(&before, &settings).warnings()
                {
                    eprintln!("warning: {warning}");
                }
            }
        }
        SettingsCommand::Set { key, value } => {
            // Read-modify-write in one locked transaction: no lost updates.
            store
                .update_settings(&mut |current| Ok(current.with(&key, &value)?))
                .map_err(|e| anyhow!("{e}; nothing was changed"))?;
            eprintln!("{key} = {value}");
        }
    }
    Ok(())
}

fn render(settings: &Settings, format: Format) -> String {
    match format {
        Format::Toml => settings.to_toml(),
        Format::Json => settings.to_json() + "\n",
    }
}

fn parse_settings_file(path: &Path, text: &str) -> Result<Settings, postern_config::ConfigError> {
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        || text.trim_start().starts_with('{');
    if is_json {
        Settings::from_json(text)
    } else {
        Settings::from_toml(text)
    }
}

pub fn cert(ctx: &Context, command: CertCommand) -> Result<()> {
    let store = ctx.store.as_ref();
    match command {
        CertCommand::List => {
            let settings = store.settings()?;
            let mut out = format!(
                "{:<24} {:<5} {:<14} {:<26} {}\n",
                "NAME", "KIND", "KEY", "NOT AFTER", "USED BY"
            );
            for record in store.certificates()? {
                let used = usage(&settings, &record.name).join(", ");
                let kind = if record.key_pem.is_some() {
                    "cert"
                } else {
                    "CA"
                };
                match describe(&record.chain_pem) {
                    Ok(info) => {
                        let key = if info.key_type.starts_with("RSA") {
                            format!("{} {}", info.key_type, info.key_bits)
                        } else {
                            info.key_type.clone()
                        };
                        let _ = writeln!(
                            out,
                            "{:<24} {:<5} {:<14} {:<26} {}",
                            record.name, kind, key, info.not_after, used
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, "{:<24} {:<5} unreadable: {e}", record.name, kind);
                    }
                }
            }
            print!("{out}");
        }
        CertCommand::Show { name } => {
            let record = find(store, &name)?;
            let info = describe(&record.chain_pem)?;
            let settings = store.settings()?;
            println!("name:                {}", record.name);
            println!(
                "kind:                {}",
                if record.key_pem.is_some() {
                    "certificate with private key"
                } else {
                    "CA / trust anchor (no key)"
                }
            );
            println!("subject:             {}", info.subject);
            println!("subject alt names:   {}", info.sans.join(", "));
            println!("issuer:              {}", info.issuer);
            println!("self-signed:         {}", info.self_signed);
            println!(
                "key:                 {} {} bits",
                info.key_type, info.key_bits
            );
            println!("signature algorithm: {}", info.signature_algorithm);
            println!("valid from:          {}", info.not_before);
            println!("valid until:         {}", info.not_after);
            println!("sha256 fingerprint:  {}", info.sha256_fingerprint);
            println!("chain length:        {}", info.chain_len);
            println!(
                "used by:             {}",
                usage(&settings, &record.name).join(", ")
            );
        }
        CertCommand::Export { name } => print!("{}", find(store, &name)?.chain_pem),
        CertCommand::Generate(args) => generate(ctx, args)?,
        CertCommand::Import(args) => import(store, args)?,
        CertCommand::Delete { name } => {
            store.delete_certificate(&name)?;
            eprintln!("deleted \"{name}\"");
        }
        CertCommand::Tlsa { name, port, host } => tlsa::tlsa(ctx, &name, port, host.as_deref())?,
    }
    Ok(())
}

fn find(store: &dyn Store, name: &str) -> Result<CertificateRecord> {
    store
        .certificate(name)?
        .ok_or_else(|| anyhow!("no certificate named \"{name}\" (see `postern cert list`)"))
}

/// The setting keys that use this certificate.
fn usage(settings: &Settings, name: &str) -> Vec<&'static str> {
    settings.certificate_usage(name)
}

fn generate(ctx: &Context, args: GenerateArgs) -> Result<()> {
    let kind: KeyKind = args.key.parse().map_err(|e| anyhow!("--key: {e}"))?;
    let cn = args.cn.unwrap_or_else(|| ctx.hostname.clone());
    let sans = if args.san.is_empty() {
        vec![cn.clone()]
    } else {
        args.san
    };
    let generated = generate_self_signed(kind, &cn, &sans)?;
    let info = describe(&generated.chain_pem)?;
    ctx.store.add_certificate(&CertificateRecord {
        name: args.name.clone(),
        chain_pem: generated.chain_pem,
        key_pem: Some(generated.key_pem),
        created_at: unix_now(),
    })?;
    eprintln!(
        "generated \"{}\": {} {} bits, {}, {}",
        args.name, info.key_type, info.key_bits, info.signature_algorithm, info.sha256_fingerprint
    );
    Ok(())
}

fn import(store: &dyn Store, args: ImportArgs) -> Result<()> {
    let chain = std::fs::read_to_string(&args.cert)
        .with_context(|| format!("reading {}", args.cert.display()))?;
    let key = match &args.key {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        None => None,
    };
    let info =
        validate_entry(&chain, key.as_deref()).map_err(|e| anyhow!("{e}; nothing was imported"))?;
    store.add_certificate(&CertificateRecord {
        name: args.name.clone(),
        chain_pem: chain,
        key_pem: key,
        created_at: unix_now(),
    })?;
    let kind = if args.key.is_some() {
        "certificate"
    } else {
        "CA certificate (trust anchor)"
    };
    eprintln!(
        "imported {kind} \"{}\": {} ({})",
        args.name, info.subject, info.sha256_fingerprint
    );
    Ok(())
}

pub fn queue(ctx: &Context, command: QueueCommand) -> Result<()> {
    let dir = ctx.node.spool_dir();
    if let QueueCommand::Retry { id } = &command {
        let line = format!("retry {}", id.as_deref().unwrap_or(""));
        return queue_change(ctx, line.trim(), |spool| {
            let ids = match id {
                Some(id) => vec![id.parse::<QueueId>().map_err(|e| anyhow!("{e}"))?],
                None => spool.list()?,
            };
            for id in &ids {
                let mut states = spool.load_envelope(id)?.recipients;
                for r in states
                    .iter_mut()
                    .filter(|r| r.state == postern_spool::DeliveryState::Deferred)
                {
                    r.next_attempt = None;
                }
                spool.update_state(id, &states)?;
            }
            Ok(format!("{} message(s) due at the next start", ids.len()))
        });
    }
    if let QueueCommand::Delete { id } = &command {
        let parsed: QueueId = id.parse().map_err(|e| anyhow!("{e}"))?;
        return queue_change(ctx, &format!("delete {id}"), |spool| {
            spool.remove(&parsed)?;
            Ok(format!("{parsed} deleted"))
        });
    }
    if !dir.join("queue").is_dir() {
        // Never run yet: the queue is empty, not an error.
        return match command {
            QueueCommand::List { json: true } => {
                println!("[]");
                Ok(())
            }
            QueueCommand::List { json: false } => {
                println!("0 message(s) queued");
                Ok(())
            }
            QueueCommand::Show { id } => Err(anyhow!("no queued message {id}")),
            QueueCommand::Retry { .. } | QueueCommand::Delete { .. } => Ok(()),
        };
    }
    // Read-only: works beside a running gateway, which holds the spool lock.
    let spool = Spool::open_read_only(&dir)?;
    match command {
        QueueCommand::List { json } => {
            let mut items = Vec::new();
            for id in spool.list()? {
                match spool.load_envelope(&id) {
                    Ok(queued) => items.push(queued),
                    // A message delivered (removed) between list and load.
                    Err(e) => tracing::debug!("skipping {id}: {e}"),
                }
            }
            if json {
                let list: Vec<_> = items.iter().map(queue_json).collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for q in &items {
                    let rcpts: Vec<String> = q
                        .recipients
                        .iter()
                        .map(|r| format!("{} ({:?})", r.address, r.state).to_lowercase())
                        .collect();
                    println!(
                        "{}  {:>9}  {}  <{}>  {}",
                        q.id,
                        q.size,
                        rfc3339(q.envelope.received_at),
                        q.envelope.sender,
                        rcpts.join(", ")
                    );
                }
                println!("{} message(s) queued", items.len());
            }
        }
        QueueCommand::Show { id } => {
            let id: QueueId = id.parse().map_err(|e| anyhow!("{e}"))?;
            let queued = spool.load_envelope(&id)?;
            println!("{}", serde_json::to_string_pretty(&queue_json(&queued))?);
        }
        QueueCommand::Retry { .. } | QueueCommand::Delete { .. } => {}
    }
    Ok(())
}

/// A queue change goes through the running gateway (it holds the spool
/// lock); with no gateway running, it is made on the spool directly.
fn queue_change(
    ctx: &Context,
    request: &str,
    offline: impl FnOnce(&Spool) -> Result<String>,
) -> Result<()> {
    let text = match crate::queue::control::request(&ctx.node.data_dir, request) {
        Some(answer) => answer.map_err(|e| anyhow!("{e}"))?,
        None => {
            let spool = Spool::open(&ctx.node.spool_dir())
                .context("the gateway's control socket does not answer and the spool is busy")?;
            offline(&spool)?
        }
    };
    println!("{text}");
    Ok(())
}

fn queue_json(q: &postern_spool::QueuedEnvelope) -> serde_json::Value {
    serde_json::json!({
        "id": q.id.to_string(),
        "message_id": q.envelope.message_id,
        "sender": q.envelope.sender,
        "size": q.size,
        "received_at": rfc3339(q.envelope.received_at),
        "client": q.envelope.client_addr,
        "tls": q.envelope.tls,
        "requiretls": q.envelope.requiretls,
        "tls_required_no": q.envelope.tls_required_no,
        "recipients": q.recipients.iter().map(|r| serde_json::json!({
            "address": r.address,
            "state": r.state,
            "attempts": r.attempts,
            "next_attempt": r.next_attempt.map(rfc3339),
            "last_error": r.last_error,
        })).collect::<Vec<_>>(),
    })
}

pub(crate) fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `postern check`: validate the config file and the stored settings
/// without changing anything. The store is opened read-only; when it does
/// not exist yet, check says what `postern run` would create instead of
/// creating it (and its Default Cert).
pub fn check(config: Option<&Path>) -> Result<()> {
    let node = crate::context::load_node(config)?;
    let hostname = crate::context::host_name(&node)?;
    crate::privilege::check_user(&node).map_err(|e| anyhow!("user: {e:#}"))?;
    let data_dir = &node.data_dir;
    if data_dir.exists() && !data_dir.is_dir() {
        bail!("data_dir: {} is not a directory", data_dir.display());
    }
    println!("{}", crate::gateway::spool_sync::for_node(&node)?.1);
    if node.store != "sqlite" {
        // Opening a cluster store migrates its schema and may create the
        // installation's Default Cert: not what `check` may do.
        Settings::default().validate()?;
        println!(
            "ok: config is valid; the cluster store is not opened by check \
             (`postern cluster status` shows whether every node reaches it)"
        );
        return Ok(());
    }
    let store_path = node.store_path();
    if !store_path.exists() {
        Settings::default().validate()?;
        println!(
            "ok: config is valid; the store {} does not exist yet: `postern run` creates it \
             with the default settings and a self-signed Default Cert for {hostname}",
            store_path.display()
        );
        return Ok(());
    }
    let store = postern_store::SqliteStore::open_read_only(&store_path, &hostname)
        .with_context(|| format!("opening the store {} read-only", store_path.display()))?;
    let settings = store.settings()?;
    settings.validate()?;
    crate::gateway::build_server_tls(&settings, &store)?;
    println!(
        "ok: config and settings are valid (data in {})",
        data_dir.display()
    );
    Ok(())
}

/// `postern probe DOMAIN`: what delivery to this domain would see and do —
/// the courier's own route and requirement, connecting without sending mail.
pub async fn probe(ctx: &Context, domain: &str) -> Result<()> {
    use postern_delivery::{CertFault, Courier, Resolver, Timeouts};
    use std::time::Duration;

    let settings = ctx.store.settings()?;
    let client_tls = crate::gateway::build_client_tls(&settings, ctx.store.as_ref())?;
    let resolver = Resolver::for_node(&ctx.node.dns)?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(10),
        greeting: Duration::from_secs(20),
        command: Duration::from_secs(20),
        ..Timeouts::default()
    };
    let learned = std::sync::Arc::new(crate::learning::StoredLevels::load(ctx.store.as_ref())?);
    let courier = Courier::new(
        resolver,
        ctx.hostname.clone(),
        ctx.node.delivery.mx_port,
        timeouts,
    )
    .with_mta_sts(crate::sts_cache::mta_sts(
        &ctx.store,
        ctx.node.delivery.https_port,
    ))
    .with_learned(learned.clone());
    let mode = settings.outbound_mode(domain);
    println!("domain:        {domain}");
    println!(
        "outbound mode: {}",
        serde_json::to_value(mode)?.as_str().unwrap_or_default()
    );
    println!(
        "learned level: {} (tls.outbound.learn = {})",
        learned
            .level(&settings, domain)
            .map_or("none", postern_store::TlsLevel::as_str),
        settings.tls.outbound.learn.as_str()
    );
    let probe = courier
        .probe(&settings, &client_tls, domain)
        .await
        .map_err(|e| anyhow!("{e}"))?;
    probe_sts::print(probe.mta_sts.as_ref());
    for host in &probe.hosts {
        let target = &host.target;
        println!(
            "\nhost {} (preference {}, port {})",
            target.host, target.preference, target.port
        );
        println!(
            "  requirement:     {} (set by {})",
            host.requirement.label(),
            host.requirement.source
        );
        if let Some(refusal) = &host.requirement.refusal {
            println!("  not used:        {refusal}");
        }
        probe_sts::print_report_only(&host.requirement);
        crate::commands::tlsa::print_probe_dane(host);
        for probed in &host.addresses {
            let r = match &probed.seen {
                Err(e) => {
                    println!("  {}: {}", probed.addr, e.failure);
                    continue;
                }
                Ok(record) => record,
            };
            println!("  {}: {}", probed.addr, r.reply);
            println!("    STARTTLS offered:  {}", r.starttls_offered);
            println!(
                "    TLS:               {} {}",
                r.tls_version.as_deref().unwrap_or("none"),
                r.cipher.as_deref().unwrap_or("")
            );
            if let Some(error) = &r.tls_error {
                println!("    TLS failure:       {error}");
            }
            for (depth, cert) in r.cert_chain.iter().enumerate() {
                println!("    chain[{depth}]:          {cert}");
            }
            let certificate = match (r.cert_verified, &r.cert_problem) {
                (Some(true), _) => "verified".to_string(),
                (_, Some(problem)) => match problem.fault {
                    CertFault::SelfSigned => "not verified: certificate is self-signed".into(),
                    CertFault::HostMismatch if !r.cert_names.is_empty() => format!(
                        "not verified: name mismatch: certificate is for {} (not {})",
                        r.cert_names.join(", "),
                        target.host
                    ),
                    _ => format!("not verified: {}", problem.detail),
                },
                (Some(false), None) => "not verified".to_string(),
                (None, _) => "not verified: no certificate seen".to_string(),
            };
            println!("    certificate:       {certificate}");
            let outcome = match &probed.verdict {
                Err(failure) => format!("defer: {failure}"),
                Ok(()) if !r.is_tls() => "deliver in plaintext".to_string(),
                Ok(()) if r.cert_verified == Some(true) => "deliver over verified TLS".to_string(),
                Ok(()) => "deliver over TLS".to_string(),
            };
            println!("    with this mode:    {outcome}");
        }
    }
    Ok(())
}
