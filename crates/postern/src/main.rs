//! `postern`: the Postern secure SMTP gateway.
//!
//! Layout: `cli.rs` (arguments), `context.rs` (config, store, Default
//! Cert), `commands.rs` (settings/cert/queue/trace/check), `gateway/`
//! (listeners, connections, reload, shutdown), `maillog.rs` (the mail log),
//! `tracker.rs` (tracking events, written in batches), `registry.rs`
//! (this node's row in the node registry), `journal.rs` (tracking events
//! kept on disk while the store is unreachable), `systemd.rs` (readiness
//! notification).

mod alerts;
mod cli;
mod commands;
mod context;
mod gateway;
mod journal;
mod learning;
mod maillog;
mod privilege;
mod queue;
mod registry;
mod sts_cache;
mod systemd;
mod tlsrpt;
mod tracker;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};
use context::Context;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    postern_tls::install_crypto_provider();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe_error(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping causes the message already quotes.
fn describe_error(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if !text.contains(&part) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&part);
        }
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    // Every command but `check` opens the store (creating it and the
    // Default Cert on first use); `check` only reads.
    let open = || Context::open(config);
    match cli.command {
        Command::Run => {
            let ctx = open()?;
            // Before any runtime thread exists: they all inherit it.
            privilege::forbid_new_privileges()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(gateway::run(ctx))
        }
        Command::Check => commands::check(config),
        Command::Settings(command) => commands::settings(&open()?, command),
        Command::Cert(command) => commands::cert(&open()?, command),
        Command::Queue(command) => commands::queue(&open()?, command),
        Command::Trace { id } => commands::trace(&open()?, &id),
        Command::Admin(command) => commands::admin::run(&open()?, command),
        Command::Cluster(command) => commands::cluster::run(&open()?, command),
        Command::Store(command) => commands::cluster::store(&open()?, command),
        Command::Dkim(command) => commands::dkim::run(&open()?, command),
        Command::Policy(command) => commands::policy::run(&open()?, command),
        Command::Tlsrpt(command) => commands::tlsrpt::run(&open()?, command),
        Command::Probe { domain } => {
            let ctx = open()?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(commands::probe(&ctx, &domain))
        }
    }
}
