//! `postern run`: listeners, settings reload, graceful shutdown.

mod admin;
mod connection;
mod enqueue;
mod limits;
mod live;
pub(crate) mod spool_sync;

pub use live::LiveConfig;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ipnet::IpNet;
use postern_admin::Metrics;
use postern_spool::Spool;
use postern_store::Store;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::context::Context;
use crate::maillog::MailLog;
use crate::queue::{control, QueueRunner};
use crate::systemd::Notifier;
use limits::ConnectionLimits;
use live::Live;
pub use live::{build_client_tls, build_server_tls};
use postern_delivery::Resolver;

/// Messages being written to the spool at once; the rest wait their turn
/// in order (tokio's semaphore is fair). With 50 sessions storing at once,
/// letting all of them into the file system made the slowest wait behind
/// everybody's fsyncs: capped at 12, p99 DATA→250 fell by 30–40% at 50
/// connections with equal or better throughput (docs/performance.md).
pub const MAX_CONCURRENT_STORES: usize = 12;

/// Descriptors the gateway needs besides one per SMTP connection: the
/// spool's files, the store, the mail log, listeners, outbound deliveries
/// (up to 8 idle per destination plus those in flight), DNS, the admin UI.
const DESCRIPTOR_RESERVE: u64 = 1024;

/// Raise the soft open-files limit (RLIMIT_NOFILE) to the hard limit.
///
/// Every SMTP connection is one descriptor, and the soft limit a process
/// inherits is often 1,024 (systemd's default for services; the shell's
/// `ulimit -n`), while `mta.max_connections` may be up to 100,000. The
/// hard limit is what the administrator granted (`LimitNOFILE=` in
/// postern.service, `ulimit -Hn`); raising the soft limit up to it needs no
/// privilege. Past the limit, `accept` fails with "too many open files":
/// the accept loop backs off and the connection waits in the listen queue.
/// Logs the limit it got, and warns when the hard limit is below what
/// `max_connections` needs. (glibc's `setrlimit` is the `prlimit64` system
/// call, which postern.service's `SystemCallFilter=@system-service` allows.)
fn raise_open_files_limit(max_connections: u32) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(limits) => limits,
        Err(e) => {
            tracing::warn!("open-files limit: getrlimit failed: {e}");
            return;
        }
    };
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(e) => {
                tracing::warn!("open-files limit: raising {soft} to {hard} failed: {e}");
                soft
            }
        }
    } else {
        soft
    };
    tracing::info!("open-files limit: {soft} (hard limit {hard})");
    warn_if_open_files_short(soft, max_connections);
}

/// Warn when `max_connections` needs more descriptors than the soft limit
/// allows. At start, and again whenever a reload changes
/// `mta.max_connections`: a limit that was enough may no longer be.
fn warn_if_open_files_short(soft: u64, max_connections: u32) {
    let needed = u64::from(max_connections) + DESCRIPTOR_RESERVE;
    if soft < needed {
        tracing::warn!(
            "open-files limit {soft} is below the {needed} that mta.max_connections = \
             {max_connections} needs (one per connection + {DESCRIPTOR_RESERVE}); connections \
             beyond it wait in the listen queue: raise the hard limit (LimitNOFILE= in \
             postern.service, ulimit -Hn) or lower mta.max_connections"
        );
    }
}

/// After a reload that changed `mta.max_connections`: check it against the
/// open-files limit the process has now (raised to the hard limit at start).
pub(crate) fn check_open_files_after_reload(max_connections: u32) {
    use nix::sys::resource::{getrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => warn_if_open_files_short(soft, max_connections),
        Err(e) => tracing::warn!("open-files limit: getrlimit failed: {e}"),
    }
}

/// Everything the connections share.
pub struct Shared {
    pub hostname: String,
    pub trusted_networks: Arc<Vec<IpNet>>,
    pub live: Arc<LiveConfig>,
    pub spool: Arc<Spool>,
    pub maillog: Arc<MailLog>,
    /// Writes tracking events (one thread, batched).
    pub tracker: Arc<crate::tracker::Tracker>,
    /// Told about every newly queued message.
    pub runner: Arc<QueueRunner>,
    pub limits: Arc<ConnectionLimits>,
    /// Spool writes in flight at once (see [`MAX_CONCURRENT_STORES`]).
    pub store_slots: tokio::sync::Semaphore,
    /// Counters for `/metrics` (admin listener).
    pub metrics: Arc<Metrics>,
    /// Becomes `true` when the gateway shuts down.
    pub shutdown: watch::Receiver<bool>,
}

pub async fn run(ctx: Context) -> Result<()> {
    let node = &ctx.node;
    let spool_dir = node.spool_dir();
    let (sync_mode, line) = spool_sync::for_node(node)?;
    tracing::info!("{line}");
    let spool = tokio::task::spawn_blocking(move || -> Result<Spool> {
        let spool = Spool::open_with(&spool_dir, sync_mode)
            .with_context(|| format!("opening spool {}", spool_dir.display()))?;
        let report = spool.recover()?;
        for (file, reason) in &report.quarantined {
            tracing::warn!("damaged spool file {file} moved to corrupt/: {reason}");
        }
        tracing::info!(
            "spool: {} queued message(s), {} recycled file(s) in free/",
            report.ok.len(),
            spool.free_files()
        );
        if spool.free_files_skipped() > 0 {
            tracing::warn!(
                "spool: {} name(s) in free/ share a file with a queued message (a rename torn by a crash); left unused",
                spool.free_files_skipped()
            );
        }
        Ok(spool)
    })
    .await??;
    let maillog = Arc::new(MailLog::open(&node.mail_log_path())?);
    let live = Live::load(ctx.store.as_ref()).context("loading settings and certificates")?;
    raise_open_files_limit(live.settings.mta.max_connections);
    let live = Arc::new(LiveConfig::new(live));
    let spool = Arc::new(spool);
    let resolver = Resolver::for_node(&node.dns).context("[dns]")?;
    let tracker = Arc::new(
        crate::tracker::Tracker::start(
            Arc::clone(&ctx.store),
            crate::journal::path_in(&node.data_dir),
        )
        .context("starting the tracking-event writer")?,
    );
    let metrics = Arc::new(Metrics::new());
    let (alerts, unsent_alerts) =
        crate::alerts::Alerts::new(Arc::clone(&maillog), Arc::clone(&metrics));
    let learning = Arc::new(crate::learning::Learning::new(
        Arc::clone(&ctx.store),
        Arc::clone(&maillog),
        alerts.clone(),
    ));
    let alert_resolver = resolver.clone();
    let courier = postern_delivery::Courier::new(
        resolver,
        ctx.hostname.clone(),
        node.delivery.mx_port,
        postern_delivery::Timeouts::default(),
    )
    .with_mta_sts(crate::sts_cache::mta_sts(
        &ctx.store,
        node.delivery.https_port,
    ))
    .with_learned(Arc::clone(&learning) as Arc<dyn postern_delivery::LearnedLevels>);
    let runner = Arc::new(
        QueueRunner::new(
            Arc::clone(&spool),
            Arc::clone(&tracker),
            Arc::clone(&live),
            Arc::clone(&maillog),
            courier,
            ctx.hostname.clone(),
            Arc::clone(&metrics),
        )
        .with_learning(Arc::clone(&learning))
        .with_alerts(Arc::new(crate::alerts::delivery::DeliveryAlerts::new(
            alerts.clone(),
        ))),
    );
    let (stop, shutdown) = watch::channel(false);
    let shared = Arc::new(Shared {
        hostname: ctx.hostname.clone(),
        trusted_networks: Arc::new(node.smtp.trusted_networks.clone()),
        live,
        spool,
        maillog,
        tracker,
        runner: Arc::clone(&runner),
        limits: Arc::new(ConnectionLimits::default()),
        store_slots: tokio::sync::Semaphore::new(MAX_CONCURRENT_STORES),
        metrics,
        shutdown,
    });

    let mut signals = StopSignals::install()?;
    // SIGHUP reloads; caught from here on, so it never ends the gateway.
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let systemd = Arc::new(Notifier::from_env());
    let mut bound = Vec::new();
    for (addrs, implicit_tls) in [
        (&node.smtp.listen, false),
        (&node.smtp.listen_implicit_tls, true),
    ] {
        for addr in addrs {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let kind = if implicit_tls {
                "SMTP, implicit TLS"
            } else {
                "SMTP, STARTTLS"
            };
            tracing::info!(
                "listening on {} ({kind})",
                listener.local_addr().unwrap_or(*addr)
            );
            bound.push((listener, implicit_tls));
        }
    }
    let admin_server = admin::prepare(&ctx, &shared, &node.admin.listen.to_string()).await?;
    let admin_listener = TcpListener::bind(node.admin.listen)
        .await
        .with_context(|| format!("binding {} (admin.listen)", node.admin.listen))?;
    // Every listener is bound: stop being root before reading a byte.
    crate::privilege::drop_privileges(node)?;
    let accept_loops: Vec<_> = bound
        .into_iter()
        .map(|(listener, implicit_tls)| {
            tokio::spawn(accept_loop(Arc::clone(&shared), listener, implicit_tls))
        })
        .collect();
    let admin = admin::serve(admin_server, admin_listener);
    let store: Arc<dyn Store> = ctx.store.clone();
    let reloader = tokio::spawn(live::reload_loop(
        Arc::clone(&shared.live),
        store,
        hangup,
        Arc::clone(&systemd),
    ));
    let learner = tokio::spawn(Arc::clone(&learning).run(Arc::clone(&shared.live)));
    let delivery = if node.delivery.paused {
        tracing::warn!("delivery is paused ([delivery] paused = true): mail stays queued");
        tokio::spawn(async {})
    } else {
        tokio::spawn(Arc::clone(&runner).run())
    };
    let control = tokio::spawn(control::serve(
        control::socket_path(&node.data_dir),
        Arc::clone(&runner),
    ));
    let heartbeat = tokio::spawn(crate::registry::heartbeat_loop(
        crate::registry::Identity {
            name: ctx.node_name.clone(),
            hostname: ctx.hostname.clone(),
            started_at: crate::context::unix_now(),
        },
        Arc::clone(&ctx.store),
        Arc::clone(&shared.live),
        Arc::clone(&shared.spool),
    ));
    // A cluster node shows its queue to the others and takes their
    // retry/delete requests; an embedded store has no other node.
    let cluster = matches!(
        crate::context::store_location(node),
        postern_store::StoreLocation::Postgres(_)
    );
    let queue_tasks = if cluster {
        vec![
            tokio::spawn(crate::queue::publish::publish_loop(
                ctx.node_name.clone(),
                Arc::clone(&ctx.store),
                Arc::clone(&shared.spool),
                Arc::clone(&runner),
            )),
            tokio::spawn(crate::queue::requests::serve(
                ctx.node_name.clone(),
                Arc::clone(&ctx.store),
                Arc::clone(&runner),
            )),
        ]
    } else {
        Vec::new()
    };
    let tlsrpt_tasks = crate::tlsrpt::daily::start(
        Arc::new(crate::tlsrpt::Reporter {
            store: Arc::clone(&ctx.store),
            resolver: Resolver::for_node(&node.dns).context("[dns]")?,
            hostname: ctx.hostname.clone(),
            node_name: ctx.node_name.clone(),
            https_port: node.delivery.https_port,
        }),
        Arc::clone(&shared.live),
        crate::tlsrpt::LocalQueue {
            spool: Arc::clone(&shared.spool),
            runner: Some(Arc::clone(&runner)),
        },
        &node.data_dir,
    );
    let mut alert_tasks = vec![
        tokio::spawn(
            crate::alerts::destinations::Destinations {
                store: Arc::clone(&ctx.store),
                live: Arc::clone(&shared.live),
                resolver: alert_resolver,
                spool: Arc::clone(&shared.spool),
                runner: Arc::clone(&runner),
                maillog: Arc::clone(&shared.maillog),
                node: ctx.node_name.clone(),
                hostname: ctx.hostname.clone(),
            }
            .run(unsent_alerts),
        ),
        tokio::spawn(crate::alerts::certificates::check_loop(
            alerts.clone(),
            Arc::clone(&ctx.store),
            ctx.node_name.clone(),
        )),
    ];
    if cluster {
        alert_tasks.push(tokio::spawn(crate::alerts::nodes::watch_loop(
            alerts.clone(),
            Arc::clone(&ctx.store),
            ctx.node_name.clone(),
        )));
    }
    let pruner = tokio::spawn(crate::tracker::prune_loop(
        Arc::clone(&ctx.store),
        Arc::clone(&shared.live),
    ));
    tracing::info!(
        "Postern {} running as {}",
        env!("CARGO_PKG_VERSION"),
        ctx.hostname
    );
    systemd.ready("Accepting mail");

    signals.wait().await;
    systemd.stopping();
    tracing::info!(
        "shutting down: no new connections; sessions get {} to finish",
        node.smtp.shutdown_grace
    );
    let _ = stop.send(true);
    for handle in &accept_loops {
        handle.abort();
    }
    reloader.abort();
    heartbeat.abort();
    for task in &queue_tasks {
        task.abort();
    }
    pruner.abort();
    for task in &tlsrpt_tasks {
        task.abort();
    }
    let _ = std::fs::remove_file(crate::tlsrpt::daily::socket_path(&node.data_dir));
    for task in &alert_tasks {
        task.abort();
    }
    // Delivery attempts in flight are abandoned: their recipients stay
    // queued and are tried again at the next start.
    delivery.abort();
    control.abort();
    admin.abort();
    let _ = std::fs::remove_file(control::socket_path(&node.data_dir));
    let deadline = Instant::now() + node.smtp.shutdown_grace.to_std();
    while shared.limits.active() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = shared.limits.active();
    if left > 0 {
        // Unacknowledged mail is the client's to retry; acknowledged mail is on disk.
        tracing::warn!("{left} session(s) still open at the end of the grace period; closing them");
    }
    // Tracking events of the last messages: written before we go.
    let tracker = Arc::clone(&shared.tracker);
    let _ = tokio::task::spawn_blocking(move || tracker.flush(Duration::from_secs(5))).await;
    learner.abort();
    learning.finish().await;
    tracing::info!("stopped");
    Ok(())
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, implicit_tls: bool) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off, don't spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Replies are small and latency matters (SPEC §7: delayed-ACK stalls).
        let _ = tcp.set_nodelay(true);
        let live = shared.live.get();
        let mta = &live.settings.mta;
        let ip = peer.ip().to_canonical();
        let request = limits::Request {
            ip,
            max_total: mta.max_connections,
            max_per_client: mta.max_connections_per_client,
            trusted: shared.trusted_networks.iter().any(|n| n.contains(&ip)),
            per_client_exempt: mta.limit_exempt_networks.iter().any(|n| n.contains(&ip)),
        };
        match shared.limits.try_acquire(request) {
            Ok(slot) => {
                tokio::spawn(connection::serve(
                    Arc::clone(&shared),
                    tcp,
                    peer,
                    implicit_tls,
                    slot,
                ));
            }
            Err(reason) => {
                shared.metrics.connection_refused();
                shared.maillog.write(
                    "refused",
                    &[("client", &peer.to_string()), ("reason", reason)],
                );
                tokio::spawn(refuse(tcp, peer, implicit_tls));
            }
        }
    }
}

/// Over a connection limit: say so (in plaintext only) and close.
async fn refuse(mut tcp: TcpStream, _peer: SocketAddr, implicit_tls: bool) {
    if !implicit_tls {
        let reply = b"421 4.7.0 Too many connections, try again later\r\n";
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.write_all(reply)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.shutdown()).await;
}

/// SIGTERM and SIGINT, caught from the moment this is created: created
/// before any listener answers, so a stop right after the first `220` is
/// a graceful one, never the default action (instant death).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
