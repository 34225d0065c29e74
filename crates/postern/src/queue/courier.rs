//! Delivering one message's recipients for one domain: route, connect per
//! the outbound TLS policy, send, and keep idle connections for reuse.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_config::{OutboundMode, Settings};
use postern_delivery::{
    requirement, resolve, AttemptRecord, Base, ClientTls, Connection, Failure, FailureKind,
    HostRef, Inputs, Outgoing, RecipientOutcome, RecipientResult, Resolver, Timeouts,
};

/// How long an idle connection is kept for the next message to the same host.
const IDLE_REUSE: Duration = Duration::from_secs(5);
/// Idle connections kept per destination: as many as the runner sends in
/// parallel to one domain (`MAX_PER_DOMAIN`), so none churn.
const MAX_IDLE_PER_KEY: usize = 8;
/// A connection is not reused after this long, however busy (the peer's
/// configuration may have changed; Postfix's smtp_connection_reuse_time_limit).
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// What one domain delivery did.
pub struct DomainReport {
    pub outcomes: Vec<RecipientOutcome>,
    /// Every connection attempt, in order (for tracking and `postern trace`).
    pub attempts: Vec<AttemptRecord>,
}

/// Connections are reused only under the same settings generation: a
/// changed trust anchor or mode must apply to the next message at once.
type PoolKey = (String, SocketAddr, OutboundMode, i64);

struct Idle {
    connection: Connection,
    opened: Instant,
    since: Instant,
}

pub struct Courier {
    resolver: Resolver,
    helo: String,
    mx_port: u16,
    timeouts: Timeouts,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
}

impl Courier {
    pub fn new(resolver: Resolver, helo: String, mx_port: u16) -> Self {
        Self {
            resolver,
            helo,
            mx_port,
            timeouts: Timeouts::default(),
            idle: Mutex::new(HashMap::new()),
        }
    }

    pub async fn deliver(
        &self,
        settings: &Settings,
        generation: i64,
        tls: &ClientTls,
        domain: &str,
        message: &Outgoing<'_>,
    ) -> DomainReport {
        let mut attempts = Vec::new();
        let base = Base::from_settings(settings, domain);
        let targets = match resolve(domain, settings, &self.resolver, self.mx_port).await {
            Ok(targets) => targets,
            Err(route) => {
                // The route error names the domain itself.
                let failure = Failure::new(None, FailureKind::Route(route));
                return DomainReport {
                    outcomes: all_failed(message.recipients, &failure),
                    attempts,
                };
            }
        };
        let mut last_failure = None;
        // Every MX in preference order, every address of each (SPEC §6).
        for target in &targets {
            let requirement = requirement(&Inputs::base_only(&base, &target.host));
            let mode = requirement.level;
            for addr in target.socket_addrs() {
                let key = (target.host.clone(), addr, mode, generation);
                let pooled = self.take_idle(&key);
                let reused = pooled.is_some();
                let (mut connection, opened) = match pooled {
                    Some(pooled) => pooled,
                    None => match Connection::open(
                        &target.host,
                        addr,
                        tls,
                        &requirement,
                        &self.helo,
                        &self.timeouts,
                    )
                    .await
                    {
                        Ok(connection) => (connection, Instant::now()),
                        Err(error) => {
                            attempts.push(error.record);
                            last_failure = Some(error.failure);
                            continue;
                        }
                    },
                };
                match connection.send(message).await {
                    Ok(outcomes) => {
                        attempts.push(connection.record().clone());
                        self.keep_idle(key, connection, opened);
                        return DomainReport { outcomes, attempts };
                    }
                    Err(error) if reused => {
                        // The server may have closed an idle connection; a
                        // fresh one to the same address is tried next.
                        tracing::debug!(
                            "reused connection to {} failed: {}",
                            target.host,
                            error.failure
                        );
                        match Connection::open(
                            &target.host,
                            addr,
                            tls,
                            &requirement,
                            &self.helo,
                            &self.timeouts,
                        )
                        .await
                        {
                            Ok(mut fresh) => match fresh.send(message).await {
                                Ok(outcomes) => {
                                    attempts.push(fresh.record().clone());
                                    self.keep_idle(key, fresh, Instant::now());
                                    return DomainReport { outcomes, attempts };
                                }
                                Err(error) => {
                                    attempts.push(error.record);
                                    last_failure = Some(error.failure);
                                }
                            },
                            Err(error) => {
                                attempts.push(error.record);
                                last_failure = Some(error.failure);
                            }
                        }
                    }
                    Err(error) => {
                        attempts.push(error.record);
                        last_failure = Some(error.failure);
                    }
                }
            }
        }
        let failure = last_failure.unwrap_or_else(|| {
            Failure::new(
                Some(HostRef::new(domain, None)),
                FailureKind::Local("no delivery target".into()),
            )
        });
        DomainReport {
            outcomes: all_failed(message.recipients, &failure),
            attempts,
        }
    }

    fn take_idle(&self, key: &PoolKey) -> Option<(Connection, Instant)> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < IDLE_REUSE
                && entry.opened.elapsed() < MAX_CONNECTION_AGE
                && entry.connection.is_usable()
            {
                return Some((entry.connection, entry.opened));
            }
            tokio::spawn(entry.connection.quit());
        }
        None
    }

    fn keep_idle(&self, key: PoolKey, connection: Connection, opened: Instant) {
        if !connection.is_usable() || opened.elapsed() >= MAX_CONNECTION_AGE {
            tokio::spawn(connection.quit());
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let list = idle.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            tokio::spawn(connection.quit());
            return;
        }
        list.push(Idle {
            connection,
            opened,
            since: Instant::now(),
        });
    }

    /// Close connections idle for too long (called periodically).
    pub fn reap_idle(&self) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        for list in idle.values_mut() {
            let (stale, fresh): (Vec<_>, Vec<_>) = list
                .drain(..)
                .partition(|entry| entry.since.elapsed() >= IDLE_REUSE);
            *list = fresh;
            for entry in stale {
                tokio::spawn(entry.connection.quit());
            }
        }
        idle.retain(|_, list| !list.is_empty());
    }
}

fn all_failed(recipients: &[String], failure: &Failure) -> Vec<RecipientOutcome> {
    recipients
        .iter()
        .map(|recipient| RecipientOutcome {
            recipient: recipient.clone(),
            result: RecipientResult::Failed(failure.clone()),
        })
        .collect()
}
