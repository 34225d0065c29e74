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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_config::Settings;

use crate::classify::{Failure, FailureKind, HostRef};
use crate::client::ReportOnlyVerdict;
use crate::client::{
    AttemptError, AttemptRecord, Capabilities, Connection, Outgoing, RecipientOutcome,
    RecipientResult, Timeouts,
};
use crate::dane::{self, TlsaReport};
use crate::learning::LearnedLevels;
use crate::mta_sts::{MtaSts, StsStatus};
use crate::policy::{
    after_handshake, after_tls_failure, decide, requirement, Base, CertAuth, CertProblem,
    DaneInput, Fallback, Inputs, MtaStsPolicy, Plan, Requirement, TlsFailure, TlsPolicyFailure,
};
use crate::requiretls;
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
    mta_sts: Option<Arc<MtaSts>>,
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
            mta_sts: None,
            learned: None,
        }
    }

    /// Feed the learned levels into every requirement.
    pub fn with_learned(mut self, learned: std::sync::Arc<dyn LearnedLevels>) -> Self {
        self.learned = Some(learned);
        self
    }

    /// Look up recipient domains' MTA-STS policies with `mta_sts`.
    pub fn with_mta_sts(mut self, mta_sts: Arc<MtaSts>) -> Self {
        self.mta_sts = Some(mta_sts);
        self
    }

    /// The requirement for `host` of `domain` from the sources fed so far.
    fn requirement_for(
        base: &Base,
        target: &Target,
        sts: Option<&MtaStsPolicy>,
        dane: &DaneInput,
        learned: Option<(crate::policy::LearnedLevel, crate::policy::LearnMode)>,
    ) -> Requirement {
        requirement(&Self::inputs(base, target, sts, dane, learned))
    }

    /// The domain's sources for one host; whether its MX lookup was
    /// authenticated (REQUIRETLS routing) is the route's.
    fn inputs<'a>(
        base: &'a Base,
        target: &'a Target,
        sts: Option<&'a MtaStsPolicy>,
        dane: &'a DaneInput,
        learned: Option<(crate::policy::LearnedLevel, crate::policy::LearnMode)>,
    ) -> Inputs<'a> {
        Inputs {
            mta_sts: sts,
            dane,
            route: &target.dnssec,
            learned,
            ..Inputs::base_only(base, &target.host)
        }
    }

    /// What MTA-STS says for `domain`, when it is consulted: on globally
    /// and for the domain, and the domain routed by MX (a static next hop
    /// is the administrator's own route).
    pub async fn mta_sts_status(
        &self,
        settings: &Settings,
        tls: &ClientTls,
        base: &Base,
        domain: &str,
    ) -> Option<StsStatus> {
        let sts = self.mta_sts.as_ref()?;
        let off_for_domain = base
            .domain
            .as_ref()
            .is_some_and(|rule| !rule.mta_sts || rule.static_route);
        if !settings.tls.outbound.mta_sts || off_for_domain || domain.starts_with('[') {
            return None;
        }
        Some(sts.status(&self.resolver, tls, domain).await)
    }

    /// The requirement for `host` and this message: the sources of
    /// [`Self::requirement_for`] plus its REQUIRETLS and `TLS-Required: No`
    /// flags.
    fn message_requirement(
        base: &Base,
        target: &Target,
        sts: Option<&MtaStsPolicy>,
        dane: &DaneInput,
        learned: Option<(crate::policy::LearnedLevel, crate::policy::LearnMode)>,
        message: &Outgoing<'_>,
    ) -> Requirement {
        let mut inputs = Self::inputs(base, target, sts, dane, learned);
        inputs.requiretls = message.requiretls;
        inputs.tls_required_no = message.tls_required_no && !message.requiretls;
        requirement(&inputs)
    }

    /// The DANE input of each target (SPEC §10 item 2), or `Off` for all.
    async fn dane_for(
        &self,
        settings: &Settings,
        domain: &str,
        targets: &[Target],
        probe: bool,
    ) -> Vec<(DaneInput, Option<TlsaReport>)> {
        if !dane::applies(settings, &self.resolver, domain) {
            return targets.iter().map(|_| (DaneInput::Off, None)).collect();
        }
        dane::inputs(&self.resolver, targets, probe).await
    }

    /// The learned level of `domain` and what to do with it, when kept.
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
        let sts = self.mta_sts_status(settings, tls, &base, domain).await;
        let policy = sts.as_ref().and_then(StsStatus::policy);
        let dane = self.dane_for(settings, domain, &targets, false).await;
        let learned = self.learned_for(settings, domain);
        let mut last_failure = None;
        for (target, (dane, _)) in targets.iter().zip(&dane) {
            let requirement =
                Self::message_requirement(&base, target, policy.as_ref(), dane, learned, message);
            if let Some(refusal) = &requirement.refusal {
                // Recorded as one failed session, so that TLS-RPT reports
                // it and the deferral alerts (an MX outside an enforced
                // MTA-STS policy says something about the policy).
                // Only the MTA-STS lookup is attached: report-only
                // requirements need a session to judge, and there was none.
                if let Some(addr) = target.socket_addrs().next() {
                    let mut record =
                        AttemptRecord::refused(&target.host, addr, &requirement, refusal);
                    record.mta_sts = sts.clone();
                    attempts.push(record);
                }
                let host = HostRef::new(target.host.clone(), None);
                let failure = Failure::new(Some(host), FailureKind::TlsPolicy(refusal.clone()))
                    .under(requirement.label());
                last_failure = requiretls::report(last_failure, failure, message.requiretls);
                continue;
            }
            for addr in target.socket_addrs() {
                let key = PoolKey {
                    host: target.host.clone(),
                    addr,
                    requirement: requirement.clone(),
                    generation,
                };
                let first = attempts.len();
                let sent = self.send_to(key, tls, message, &mut attempts).await;
                annotate(&mut attempts[first..], &requirement, sts.as_ref());
                match sent {
                    Ok(outcomes) => return DomainReport { outcomes, attempts },
                    Err(failure) => {
                        last_failure = requiretls::report(last_failure, failure, message.requiretls)
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
    ) -> Result<Probe, RouteError> {
        let targets = resolve(domain, settings, &self.resolver, self.mx_port).await?;
        let base = Base::from_settings(settings, domain);
        let mta_sts = self.mta_sts_status(settings, tls, &base, domain).await;
        let policy = mta_sts.as_ref().and_then(StsStatus::policy);
        let dane = self.dane_for(settings, domain, &targets, true).await;
        let learned = self.learned_for(settings, domain);
        let mut hosts = Vec::with_capacity(targets.len());
        for (target, (dane, tlsa)) in targets.into_iter().zip(dane) {
            let requirement =
                Self::requirement_for(&base, &target, policy.as_ref(), &dane, learned);
            // DANE is checked in the handshake itself (the record keeps no
            // certificates to match afterwards): a DANE host is probed
            // with its real requirement, everything else opportunistically.
            let looking = match requirement.auth {
                CertAuth::Dane { .. } => requirement.clone(),
                _ => Requirement::at(
                    postern_config::OutboundMode::Opportunistic,
                    requirement.source,
                    &target.host,
                ),
            };
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
                dane,
                tlsa,
                addresses,
            });
        }
        Ok(Probe { mta_sts, hosts })
    }
}

/// What `postern probe` found for a domain.
#[derive(Debug)]
pub struct Probe {
    /// The MTA-STS TXT record and policy, when MTA-STS is consulted.
    pub mta_sts: Option<StsStatus>,
    pub hosts: Vec<ProbedHost>,
}

/// Record with each attempt what MTA-STS said and which report-only
/// requirements (MTA-STS `testing`, `monitor` rules) it would have failed.
fn annotate(records: &mut [AttemptRecord], requirement: &Requirement, sts: Option<&StsStatus>) {
    for record in records {
        record.mta_sts = sts.cloned();
        let caps = Capabilities {
            starttls: record.starttls_offered,
            ..Capabilities::default()
        };
        record.would_fail = requirement
            .report_only
            .iter()
            .filter_map(|strict| {
                let verdict = match &strict.refusal {
                    Some(refusal) => Err(refusal.clone()),
                    None => would_deliver(strict, record, &caps),
                };
                verdict
                    .err()
                    .map(|failure| ReportOnlyVerdict::new(strict, &failure))
            })
            .collect();
    }
}

/// One host as `postern probe` saw it.
#[derive(Debug)]
pub struct ProbedHost {
    pub target: Target,
    /// What delivery would require of it.
    pub requirement: Requirement,
    /// What DANE said about it (`Off` when DANE does not apply).
    pub dane: DaneInput,
    /// The TLSA records at `_<port>._tcp.<host>` with their DNSSEC status,
    /// when they were looked up.
    pub tlsa: Option<TlsaReport>,
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
pub fn would_deliver(
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
