//! `postern-bench idle`: open N connections, say EHLO (and STARTTLS when
//! asked) on each, and hold them. Reports how many were established, the
//! MTA's memory before and after (RSS and PSS summed over its process
//! group) and so the memory per idle connection, and — after holding them
//! for `--hold` seconds — how many still answer a NOOP.
//!
//! One source address to one listener port gets at most the ephemeral
//! port range (`/proc/sys/net/ipv4/ip_local_port_range`, ~28,000 ports):
//! `--sources N` spreads the connections over 127.0.0.2 … 127.0.0.(N+1)
//! (bind before connect; all of 127.0.0.0/8 is loopback on Linux).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::client::{Client, Mode, Options};
use crate::procwatch::Watch;

#[derive(clap::Args, Debug)]
pub struct IdleArgs {
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "plain")]
    mode: Mode,
    #[arg(long, short = 'n', default_value_t = 1000)]
    connections: u32,
    /// Source addresses to connect from, round robin: 127.0.0.2,
    /// 127.0.0.3, … (IPv4 loopback targets only). 1 (the default): the
    /// kernel picks the source, as a plain connect does.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// Seconds to hold them before checking each with NOOP.
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
    /// How long to wait for each greeting (a server at its process limit
    /// never sends one).
    #[arg(long, default_value_t = 10.0)]
    greeting_timeout: f64,
    /// The MTA's process (its process group is summed too).
    #[arg(long)]
    watch_pid: Option<i32>,
    #[arg(long, default_value = "")]
    label: String,
}

/// The kernel's side, which the MTA's RSS does not include: slab memory
/// (socket structures, among everything else the kernel allocates) from
/// `/proc/meminfo`, and the pages TCP socket buffers hold from
/// `/proc/net/sockstat`. Machine-wide: both ends of every loopback
/// connection, and whatever else runs.
fn kernel_memory() -> serde_json::Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let sockstat = std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default();
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:")).map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        let get = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        json!({ "inuse": get("inuse"), "mem_pages": get("mem") })
    });
    json!({
        "slab_kib": field("Slab:"),
        "sunreclaim_kib": field("SUnreclaim:"),
        "tcp": tcp,
    })
}

fn memory(watch: Option<Watch>) -> serde_json::Value {
    match watch {
        None => serde_json::Value::Null,
        Some(w) => serde_json::to_value(w.memory(true)).unwrap_or_default(),
    }
}

pub async fn run(args: IdleArgs) -> Result<bool> {
    let tls = match args.mode {
        Mode::Plain => None,
        _ => Some(crate::tls::client_config(true)?),
    };
    let sources: Vec<Option<IpAddr>> = if args.sources <= 1 {
        vec![None]
    } else {
        if !args.target.ip().is_loopback() || !args.target.is_ipv4() {
            anyhow::bail!("--sources needs an IPv4 loopback --target");
        }
        (0..args.sources)
            .map(|k| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k.saturating_add(2)))))
            .collect()
    };
    let opts: Vec<Arc<Options>> = sources
        .iter()
        .map(|&source| {
            Arc::new(Options {
                target: args.target,
                source,
                mode: args.mode,
                helo: "idle.bench".into(),
                tls: tls.clone(),
                limit: Duration::from_secs(60),
                greeting_limit: Duration::from_secs_f64(args.greeting_timeout),
            })
        })
        .collect();
    let watch = args.watch_pid.map(Watch::new);
    let before = memory(watch);
    let kernel_before = kernel_memory();
    let start = Instant::now();
    let gate = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut tasks = Vec::new();
    for i in 0..args.connections {
        let gate = Arc::clone(&gate);
        let opts = Arc::clone(&opts[i as usize % opts.len()]);
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            Client::open(&opts).await.map_err(|e| format!("{e:#}"))
        }));
    }
    let mut clients = Vec::new();
    let mut failed = 0u32;
    let mut errors: Vec<String> = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) => {
                failed += 1;
                if errors.len() < 5 && !errors.contains(&e) {
                    errors.push(e);
                }
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(e.to_string());
                }
            }
        }
    }
    let open_secs = start.elapsed().as_secs_f64();
    let established = clients.len();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = memory(watch);
    let kernel_after = kernel_memory();
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    // Still held? One NOOP round trip each, a few hundred at a time.
    let gate = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut checks = Vec::new();
    for mut c in clients {
        let gate = Arc::clone(&gate);
        checks.push(tokio::spawn(async move {
            let ok = {
                let _permit = gate.acquire_owned().await;
                c.noop().await.is_ok()
            };
            (ok, c)
        }));
    }
    let mut held = 0u32;
    let mut clients = Vec::new();
    for t in checks {
        if let Ok((ok, c)) = t.await {
            if ok {
                held += 1;
            }
            clients.push(c);
        }
    }
    let per_conn = |field: &str| {
        let b = before[field].as_u64()?;
        let a = after[field].as_u64()?;
        (established > 0).then(|| (a as f64 - b as f64) / established as f64)
    };
    let out = json!({
        "label": args.label,
        "mode": args.mode,
        "requested": args.connections,
        "established": established,
        "failed": failed,
        "errors": errors,
        "sources": sources.iter().flatten().map(ToString::to_string).collect::<Vec<_>>(),
        "nofile_limit": crate::nofile_limit(),
        "held_after_secs": args.hold,
        "held": held,
        "open_secs": open_secs,
        "mta_before": before,
        "mta_after": after,
        "kernel_before": kernel_before,
        "kernel_after": kernel_after,
        // Machine-wide slab growth per connection (both ends' sockets).
        "kernel_slab_kib_per_connection": kernel_before["slab_kib"].as_u64().zip(kernel_after["slab_kib"].as_u64())
            .and_then(|(b, a)| (established > 0).then(|| (a as f64 - b as f64) / established as f64)),
        "rss_kib_per_connection": per_conn("rss_kib"),
        "pss_kib_per_connection": per_conn("pss_kib"),
    });
    println!("{out}");
    // Close them all, a few hundred at a time.
    let gate = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut closing = Vec::new();
    for c in clients {
        let gate = Arc::clone(&gate);
        closing.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await;
            c.quit().await;
        }));
    }
    for t in closing {
        let _ = t.await;
    }
    Ok(u64::from(held) == u64::from(args.connections))
}
