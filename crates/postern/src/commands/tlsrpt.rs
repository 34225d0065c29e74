//! `postern tlsrpt preview|send [--date YYYY-MM-DD] [--domain D]` (SPEC
//! §11): the reports of a UTC day (default: the previous one, what the
//! daily run sends; today gives the part so far). `preview` prints them as
//! JSON (a JSON array of RFC 8460 reports on stdout; where each would go,
//! or why not, on stderr). `send` sends them as the daily run would: through the
//! running gateway when there is one (it holds the queue), otherwise from
//! here, queueing report mails into the spool for the gateway's next start.

use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use clap::Subcommand;
use postern_delivery::Resolver;
use postern_spool::Spool;

use crate::context::{unix_now, Context};
use crate::tlsrpt::send::{self, Period};
use crate::tlsrpt::{daily, LocalQueue, Reporter};

#[derive(Debug, Subcommand)]
pub enum TlsRptCommand {
    /// Print the reports (JSON) that would be sent.
    Preview {
        /// The UTC day, YYYY-MM-DD; default: the previous day.
        #[arg(long)]
        date: Option<String>,
        /// Only this recipient domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// Send the reports now, as the daily run would.
    Send {
        #[arg(long)]
        date: Option<String>,
        #[arg(long)]
        domain: Option<String>,
    },
}

pub fn run(ctx: &Context, command: TlsRptCommand) -> Result<()> {
    let (date, domain) = match &command {
        TlsRptCommand::Preview { date, domain } | TlsRptCommand::Send { date, domain } => {
            (date.clone(), domain.clone())
        }
    };
    let period = Period::of(date.as_deref(), unix_now()).map_err(|e| anyhow!("--date: {e}"))?;
    if let Some(domain) = &domain {
        if !is_domain(domain.trim_end_matches('.')) {
            return Err(anyhow!("--domain: {domain:?} is not a domain name"));
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match command {
        TlsRptCommand::Preview { .. } => runtime.block_on(preview(ctx, &period, domain.as_deref())),
        TlsRptCommand::Send { .. } => {
            if let Some(answer) = daily::request(&ctx.node.data_dir, &period.day, domain.as_deref())
            {
                let lines = answer.map_err(|e| anyhow!("the running gateway: {e}"))?;
                print_lines(&lines);
                return Ok(());
            }
            runtime.block_on(send_here(ctx, &period, domain.as_deref()))
        }
    }
}

fn reporter(ctx: &Context) -> Result<Reporter> {
    Ok(Reporter {
        store: Arc::clone(&ctx.store),
        resolver: Resolver::for_node(&ctx.node.dns).context("[dns]")?,
        hostname: ctx.hostname.clone(),
        node_name: ctx.node_name.clone(),
        https_port: ctx.node.delivery.https_port,
    })
}

async fn preview(ctx: &Context, period: &Period, domain: Option<&str>) -> Result<()> {
    let settings = ctx.store.settings()?;
    let reporter = reporter(ctx)?;
    let planned = send::plan(&reporter, &settings, period, domain).await?;
    let mut reports = Vec::new();
    for p in planned {
        match &p.destinations {
            Ok(rua) => {
                let to: Vec<String> = rua.iter().map(|d| d.uri()).collect();
                eprintln!("{} {}: to {}", p.domain, period.day, to.join(", "));
            }
            Err(why) => eprintln!("{} {}: would not be sent: {why}", p.domain, period.day),
        }
        // Every domain asked for by name is shown; otherwise only what
        // would be sent.
        if p.destinations.is_ok() || domain.is_some() {
            reports.push(p.report);
        }
    }
    println!("{}", serde_json::to_string_pretty(&reports)?);
    Ok(())
}

async fn send_here(ctx: &Context, period: &Period, domain: Option<&str>) -> Result<()> {
    let settings = ctx.store.settings()?;
    let tls = crate::gateway::build_client_tls(&settings, ctx.store.as_ref())?;
    let spool_dir = ctx.node.spool_dir();
    let spool = Spool::open(&spool_dir).with_context(|| {
        format!(
            "opening spool {} (no gateway answered on {})",
            spool_dir.display(),
            daily::socket_path(&ctx.node.data_dir).display()
        )
    })?;
    let queue = LocalQueue {
        spool: Arc::new(spool),
        runner: None,
    };
    let reporter = reporter(ctx)?;
    let lines = send::send(&reporter, &settings, &tls, &queue, period, domain)
        .await?
        .lines;
    print_lines(&lines);
    if lines.iter().any(|l| l.contains("queued as")) {
        eprintln!("no gateway is running: queued report mails go out when it starts");
    }
    Ok(())
}

/// Letters, digits and `-` in dot-separated labels of 1 to 63, 253 in all.
fn is_domain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn print_lines(lines: &[String]) {
    if lines.is_empty() {
        println!("no report: no delivery attempts recorded for that day");
    }
    for line in lines {
        println!("{line}");
    }
}
