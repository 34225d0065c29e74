//! `postern-bench`: the benchmark harness of Postern (docs/performance.md).
//!
//! * `sink` — an SMTP receiver on loopback that accepts everything (no
//!   disk), offers STARTTLS where asked, and counts messages by their token.
//! * `load` — the load generator: C connections × M messages of size S,
//!   plaintext / STARTTLS / implicit TLS, optionally a new connection per
//!   message; measures accepted msg/s and DATA→250 latency, then (with the
//!   sink) delivered msg/s and exactly-once delivery, and (with
//!   `--watch-pid`) the MTA's CPU time and peak memory.
//! * `idle` — N idle connections after EHLO: memory per connection, and
//!   whether they are all held.
//!
//! `scripts/bench.sh` runs the whole matrix against Postern and a private
//! Postfix instance side by side. Every command prints one JSON object.

mod client;
mod idle;
mod load;
mod procwatch;
mod sink;
mod tls;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "postern-bench",
    about = "Postern benchmark harness: SMTP sink and load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Runtime worker threads (default: one per CPU).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Receive and count messages (downstream of the MTA under test).
    Sink(sink::SinkArgs),
    /// Generate load against an MTA and measure it.
    Load(load::LoadArgs),
    /// Hold many idle connections; memory per connection.
    Idle(idle::IdleArgs),
}

/// Raise the soft open-files limit to the hard limit: 50,000 idle
/// connections need more than 50,000 descriptors, and the soft limit is
/// often 1,024 (the hard limit is what root, systemd or `ulimit -Hn`
/// granted). What it got is reported by [`nofile_limit`].
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The open-files limit (soft, hard) now.
pub fn nofile_limit() -> [u64; 2] {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or([0, 0], |(s, h)| [s, h])
}

/// Draw from aws-lc's random generator once in this thread: its first use
/// per thread seeds it (CPU jitter entropy, 10–40 ms of CPU per load
/// process, measured with perf), which a long-running sender pays once,
/// not inside the measured load.
fn seed_rng() {
    let mut bytes = [0u8; 16];
    let _ = tls::provider().secure_random.fill(&mut bytes);
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    raise_nofile();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().on_thread_start(seed_rng);
    seed_rng();
    if let Some(n) = cli.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("postern-bench: runtime: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Sink(args) => sink::run(args).await.map(|()| true),
            Command::Load(args) => load::run(args).await,
            Command::Idle(args) => idle::run(args).await,
        }
    });
    match result {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("postern-bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
