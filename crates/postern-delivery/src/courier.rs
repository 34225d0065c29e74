//! The courier: one message's recipients for one domain — route, the
//! requirement per host, every MX in preference order and every address of
//! each (SPEC §6), connect and send, and idle connections kept for the next
//! message to the same host. `postern probe` walks the same route with the
//! same requirement ([`Courier::probe`]), so what it says is what delivery
//! would do.
//!
//! The queue runner in the binary decides *when*; this decides *how*.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use postern_config::Settings;

use crate::classify::{Failure, FailureKind, HostRef};
use crate::client::{
    AttemptError, AttemptRecord, Capabilities, Connection, Outgoing, RecipientOutcome,
    RecipientResult, Timeouts,
};
use crate::learning::LearnedLevels;
use crate::policy::{
    after_handshake, after_tls_failure, decide, requirement, Base, CertProblem, Fallback, Inputs,
    Plan, Requirement, TlsFailure, TlsPolicyFailure,
};
use crate::route::{resolve, Resolver, RouteError, Target};
use crate::tls_client::ClientTls;

/// How long an idle connection is kept for the next message to the same host.
const IDLE_REUSE: Duration = Duration::from_secs(5);
/// Idle connections kept per destination: as many as the runner sends in
/// parallel to one domain, so none churn.
const MAX_IDLE_PER_KEY: usize = 8;
/// A connection is not reused after this long, however busy (the peer's
/// configuration may have changed; Postfix's smtp_connection_reuse_time_limit).
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(300);

/// What one domain delivery did.
#[derive(Debug)]
pub struct DomainReport {
    pub outcomes: Vec<RecipientOutcome>,
    /// Every connection attempt, in order (for tracking and `postern trace`).
    pub attempts: Vec<AttemptRecord>,
}

/// Connections are reused only for the same host, address, requirement and
/// settings generation: a changed trust anchor or mode applies to the next
/// message at once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    addr: SocketAddr,
    requirement: Requirement,
    generation: i64,
}

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
    /// Learned per-domain levels (SPEC §10 item 4), when kept.
    learned: Option<std::sync::Arc<dyn LearnedLevels>>,
}

impl Courier {
    /// `helo` is our EHLO name, `mx_port` the port for MX hosts
    /// (`[delivery] mx_port`).
    pub fn new(resolver: Resolver, helo: String, mx_port: u16, timeouts: Timeouts) -> Self {
        Self {
            resolver,
            helo,
            mx_port,
            timeouts,
            idle: Mutex::new(HashMap::new()),
            learned: None,
        }
    }

    /// Feed the learned levels into every requirement.
    pub fn with_learned(mut self, learned: std::sync::Arc<dyn LearnedLevels>) -> Self {
        self.learned = Some(learned);
        self
    }

    /// The requirement for `host` of `domain` from the sources fed so far.
    fn requirement_for(
        base: &Base,
        host: &str,
        learned: Option<(crate::policy::LearnedLevel, crate::policy::LearnMode)>,
    ) -> Requirement {
        let mut inputs = Inputs::base_only(base, host);
        inputs.learned = learned;
        requirement(&inputs)
    }

    fn learned_for(
        &self,
        settings: &Settings,
        domain: &str,
    ) -> Option<(crate::policy::LearnedLevel, crate::policy::LearnMode)> {
        self.learned.as_ref()?.learned(settings, domain)
    }

    /// Deliver `message` (whose recipients are all in `domain`).
    pub async fn deliver(
        &self,
        settings: &Settings,
        generation: i64,
        tls: &ClientTls,
        domain: &str,
        message: &Outgoing<'_>,
    ) -> DomainReport {
        let mut attempts = Vec::new();
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
        let base = Base::from_settings(settings, domain);
        let learned = self.learned_for(settings, domain);
        let mut last_failure = None;
        for target in &targets {
            let requirement = Self::requirement_for(&base, &target.host, learned);
            if let Some(refusal) = &requirement.refusal {
                let host = HostRef::new(target.host.clone(), None);
                last_failure = Some(
                    Failure::new(Some(host), FailureKind::TlsPolicy(refusal.clone()))
                        .under(requirement.label()),
                );
                continue;
            }
            for addr in target.socket_addrs() {
                let key = PoolKey {
                    host: target.host.clone(),
                    addr,
                    requirement: requirement.clone(),
                    generation,
                };
                match self.send_to(key, tls, message, &mut attempts).await {
                    Ok(outcomes) => return DomainReport { outcomes, attempts },
                    Err(failure) => last_failure = Some(failure),
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

    /// One address: an idle connection when there is one (a fresh one when
    /// the server closed it meanwhile), else a new one.
    async fn send_to(
        &self,
        key: PoolKey,
        tls: &ClientTls,
        message: &Outgoing<'_>,
        attempts: &mut Vec<AttemptRecord>,
    ) -> Result<Vec<RecipientOutcome>, Failure> {
        if let Some((mut connection, opened)) = self.take_idle(&key) {
            if let Ok(outcomes) = connection.send(message).await {
                attempts.push(connection.record().clone());
                self.keep_idle(key, connection, opened);
                return Ok(outcomes);
            }
            // A stale idle connection (the server timed it out): not an
            // attempt on the host, so not recorded; a fresh one follows.
        }
        let opened = Connection::open(
            &key.host,
            key.addr,
            tls,
            &key.requirement,
            &self.helo,
            &self.timeouts,
        )
        .await;
        let mut connection = match opened {
            Ok(connection) => connection,
            Err(error) => {
                attempts.push(error.record);
                return Err(error.failure);
            }
        };
        match connection.send(message).await {
            Ok(outcomes) => {
                attempts.push(connection.record().clone());
                self.keep_idle(key, connection, Instant::now());
                Ok(outcomes)
            }
            Err(error) => {
                attempts.push(error.record);
                Err(error.failure)
            }
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

    /// Close connections idle for too long (call periodically).
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

    /// `postern probe`: the same route and requirement as [`Courier::deliver`];
    /// each address is connected to opportunistically, so everything the
    /// peer offers is seen, and the real requirement is then applied to
    /// what was seen. No mail is sent.
    pub async fn probe(
        &self,
        settings: &Settings,
        tls: &ClientTls,
        domain: &str,
    ) -> Result<Vec<ProbedHost>, RouteError> {
        let targets = resolve(domain, settings, &self.resolver, self.mx_port).await?;
        let base = Base::from_settings(settings, domain);
        let learned = self.learned_for(settings, domain);
        let mut hosts = Vec::with_capacity(targets.len());
        for target in targets {
            let requirement = Self::requirement_for(&base, &target.host, learned);
            let looking = Requirement::at(
                postern_config::OutboundMode::Opportunistic,
                requirement.source,
                &target.host,
            );
            let mut addresses = Vec::new();
            for addr in target.socket_addrs() {
                let opened = Connection::open(
                    &target.host,
                    addr,
                    tls,
                    &looking,
                    &self.helo,
                    &self.timeouts,
                )
                .await;
                let probed = match opened {
                    Err(error) => ProbedAddress {
                        addr,
                        seen: Err(error),
                        verdict: Ok(()),
                    },
                    Ok(connection) => {
                        let record = connection.record().clone();
                        let verdict =
                            would_deliver(&requirement, &record, connection.capabilities());
                        connection.quit().await;
                        ProbedAddress {
                            addr,
                            seen: Ok(record),
                            verdict,
                        }
                    }
                };
                addresses.push(probed);
            }
            hosts.push(ProbedHost {
                target,
                requirement,
                addresses,
            });
        }
        Ok(hosts)
    }
}

/// One host as `postern probe` saw it.
#[derive(Debug)]
pub struct ProbedHost {
    pub target: Target,
    /// What delivery would require of it.
    pub requirement: Requirement,
    pub addresses: Vec<ProbedAddress>,
}

/// One address as `postern probe` saw it.
#[derive(Debug)]
pub struct ProbedAddress {
    pub addr: SocketAddr,
    /// What the opportunistic connection learnt, or why it failed.
    pub seen: Result<AttemptRecord, AttemptError>,
    /// Whether delivery under the real requirement would go ahead.
    pub verdict: Result<(), TlsPolicyFailure>,
}

/// The requirement applied to what an opportunistic connection saw: the
/// same three policy functions delivery uses, in the same order.
fn would_deliver(
    req: &Requirement,
    seen: &AttemptRecord,
    caps: &Capabilities,
) -> Result<(), TlsPolicyFailure> {
    let plaintext_caps = Capabilities {
        starttls: seen.starttls_offered,
        ..Capabilities::default()
    };
    match decide(req, &plaintext_caps) {
        Plan::Plaintext => Ok(()),
        Plan::Defer(failure) => Err(failure),
        Plan::StartTls if seen.is_tls() => {
            let certificate = match (seen.cert_verified, &seen.cert_problem) {
                (Some(true), _) => Ok(()),
                (_, Some(problem)) => Err(problem.clone()),
                (_, None) => Err(CertProblem {
                    fault: crate::policy::CertFault::Other,
                    detail: "no certificate seen".into(),
                }),
            };
            after_handshake(req, &certificate, caps)
        }
        Plan::StartTls => {
            let reason = seen
                .tls_error
                .clone()
                .unwrap_or_else(|| "TLS could not be established".into());
            match after_tls_failure(req, &TlsFailure::Failed(reason)) {
                Fallback::Plaintext => Ok(()),
                Fallback::Defer(failure) => Err(failure),
            }
        }
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
