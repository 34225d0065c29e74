//! Applying a [`Requirement`] to a connection: three small pure functions,
//! one per point where the client must decide.
//!
//! * [`decide`] after EHLO — plaintext, STARTTLS, or defer;
//! * [`after_handshake`] once TLS is up and EHLO was repeated over it — the
//!   certificate check and the post-TLS capabilities against the
//!   requirement;
//! * [`after_tls_failure`] when STARTTLS was refused or the handshake
//!   failed — go on in plaintext (only up to `opportunistic`), or defer.
//!
//! | level | STARTTLS not offered | handshake fails | certificate does not authenticate |
//! |---|---|---|---|
//! | `none` | plaintext | (not tried) | (not tried) |
//! | `opportunistic` | plaintext | plaintext (recorded) | deliver (recorded) |
//! | `require` | defer | defer | deliver (recorded) |
//! | `verify` | defer | defer | defer |
//!
//! A requirement that is not met never falls back to plaintext: it defers
//! with a [`TlsPolicyFailure`] that names what failed and carries its RFC
//! 8460 result type; [`crate::classify`] makes it temporary.

use std::fmt;

use postern_config::OutboundMode;
use serde::Serialize;

use super::requirement::Requirement;
use crate::client::Capabilities;

/// What to do after EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Deliver without TLS.
    Plaintext,
    /// Issue STARTTLS, with the verifier the requirement calls for.
    StartTls,
    /// Do not deliver to this host now.
    Defer(TlsPolicyFailure),
}

/// After a refused STARTTLS or a failed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// Go on in plaintext: on the same connection after a refusal, on a new
    /// one after a failed handshake. The attempt record says so.
    Plaintext,
    /// Do not deliver to this host now.
    Defer(TlsPolicyFailure),
}

/// How STARTTLS failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The server answered STARTTLS with this reply instead of `220`.
    Refused(String),
    /// The requirement's verifier rejected the certificate in the handshake.
    CertificateRejected(CertProblem),
    /// The handshake failed (alert, garbage, timeout, closed).
    Failed(String),
}

/// What is wrong with a certificate, by RFC 8460 category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum CertFault {
    /// No chain to a trusted root.
    NotTrusted,
    /// Issued by itself, not by a trusted CA.
    SelfSigned,
    /// Valid, but not for the host we connected to.
    HostMismatch,
    Expired,
    /// DANE: no TLSA record matches the certificate chain.
    TlsaMismatch,
    /// Malformed, revoked, not yet valid, wrong purpose, no certificate.
    Other,
}

/// A certificate that did not authenticate: the category and the words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Hash)]
pub struct CertProblem {
    pub fault: CertFault,
    /// e.g. `certificate does not match mx.partner.test (it names mx.other.test)`.
    pub detail: String,
}

impl fmt::Display for CertProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// RFC 8460 §4.3 result types, for attempt records and TLS-RPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
}

/// Why a TLS requirement was not met. Always a temporary failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Hash)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum TlsPolicyFailure {
    StartTlsNotOffered,
    /// STARTTLS answered with this reply.
    StartTlsRefused(String),
    HandshakeFailed(String),
    CertificateUnverified(CertProblem),
    /// REQUIRETLS was required and the server did not advertise it over TLS.
    RequireTlsNotOffered,
    /// The host is not in the enforced MTA-STS policy's `mx` list.
    MxNotInPolicy {
        host: String,
    },
    /// REQUIRETLS needs a route that DNSSEC or MTA-STS authenticated.
    RouteNotAuthenticated {
        host: String,
    },
    /// The TLSA lookup failed (SERVFAIL, timeout, bogus).
    DaneLookupFailed(String),
    /// REQUIRETLS: whether DNSSEC authenticated the route could not be
    /// established (a bogus answer, a failed status query).
    RouteStatusFailed(String),
}

impl TlsPolicyFailure {
    /// The RFC 8460 result type.
    pub fn result_type(&self) -> ResultType {
        match self {
            TlsPolicyFailure::StartTlsNotOffered | TlsPolicyFailure::StartTlsRefused(_) => {
                ResultType::StarttlsNotSupported
            }
            TlsPolicyFailure::CertificateUnverified(problem) => match problem.fault {
                CertFault::NotTrusted | CertFault::SelfSigned => ResultType::CertificateNotTrusted,
                CertFault::HostMismatch => ResultType::CertificateHostMismatch,
                CertFault::Expired => ResultType::CertificateExpired,
                CertFault::TlsaMismatch => ResultType::TlsaInvalid,
                CertFault::Other => ResultType::ValidationFailure,
            },
            TlsPolicyFailure::DaneLookupFailed(_) | TlsPolicyFailure::RouteStatusFailed(_) => {
                ResultType::DnssecInvalid
            }
            TlsPolicyFailure::HandshakeFailed(_)
            | TlsPolicyFailure::RequireTlsNotOffered
            | TlsPolicyFailure::MxNotInPolicy { .. }
            | TlsPolicyFailure::RouteNotAuthenticated { .. } => ResultType::ValidationFailure,
        }
    }
}

impl fmt::Display for TlsPolicyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsPolicyFailure::StartTlsNotOffered => {
                f.write_str("TLS required but STARTTLS not offered")
            }
            TlsPolicyFailure::StartTlsRefused(reply) => {
                write!(f, "TLS required but STARTTLS refused: {reply}")
            }
            TlsPolicyFailure::HandshakeFailed(reason) => {
                write!(f, "TLS required but the handshake failed: {reason}")
            }
            TlsPolicyFailure::CertificateUnverified(problem) => {
                write!(f, "certificate verification failed: {problem}")
            }
            TlsPolicyFailure::RequireTlsNotOffered => {
                f.write_str("REQUIRETLS required but not offered by the server")
            }
            TlsPolicyFailure::MxNotInPolicy { host } => {
                write!(f, "{host} is not an MX host of the MTA-STS policy")
            }
            TlsPolicyFailure::RouteNotAuthenticated { host } => write!(
                f,
                "{host} is not an authenticated route (neither DNSSEC nor MTA-STS enforce)"
            ),
            TlsPolicyFailure::DaneLookupFailed(reason) => {
                write!(f, "TLSA lookup failed: {reason}")
            }
            TlsPolicyFailure::RouteStatusFailed(reason) => {
                write!(
                    f,
                    "cannot tell whether the route is authenticated: {reason}"
                )
            }
        }
    }
}

/// The plan for a connection, given the requirement and the EHLO reply.
pub fn decide(req: &Requirement, caps: &Capabilities) -> Plan {
    match (req.level, caps.starttls) {
        (OutboundMode::None, _) | (OutboundMode::Opportunistic, false) => Plan::Plaintext,
        (OutboundMode::Require | OutboundMode::Verify, false) => {
            Plan::Defer(TlsPolicyFailure::StartTlsNotOffered)
        }
        (_, true) => Plan::StartTls,
    }
}

/// TLS is up: `certificate` is whether the certificate authenticated as
/// the requirement asks (checked afterwards when the handshake did not
/// demand it), `caps` the EHLO reply over TLS.
pub fn after_handshake(
    req: &Requirement,
    certificate: &Result<(), CertProblem>,
    caps: &Capabilities,
) -> Result<(), TlsPolicyFailure> {
    if let (OutboundMode::Verify, Err(problem)) = (req.level, certificate) {
        return Err(TlsPolicyFailure::CertificateUnverified(problem.clone()));
    }
    if req.requiretls && !caps.requiretls {
        return Err(TlsPolicyFailure::RequireTlsNotOffered);
    }
    Ok(())
}

/// STARTTLS was refused or the handshake failed.
pub fn after_tls_failure(req: &Requirement, failure: &TlsFailure) -> Fallback {
    if req.level <= OutboundMode::Opportunistic {
        return Fallback::Plaintext;
    }
    Fallback::Defer(match failure {
        TlsFailure::Refused(reply) => TlsPolicyFailure::StartTlsRefused(reply.clone()),
        TlsFailure::CertificateRejected(problem) if req.level == OutboundMode::Verify => {
            TlsPolicyFailure::CertificateUnverified(problem.clone())
        }
        // `require` accepts any certificate; a rejection can only come from
        // a verifier it did not ask for. Still no plaintext.
        TlsFailure::CertificateRejected(problem) => {
            TlsPolicyFailure::HandshakeFailed(problem.detail.clone())
        }
        TlsFailure::Failed(reason) => TlsPolicyFailure::HandshakeFailed(reason.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::super::requirement::Source;
    use super::*;
    use OutboundMode::*;

    const MODES: [OutboundMode; 4] = [None, Opportunistic, Require, Verify];

    fn req(level: OutboundMode) -> Requirement {
        Requirement::at(level, Source::Global, "mx.partner.test")
    }

    fn caps(starttls: bool, requiretls: bool) -> Capabilities {
        Capabilities {
            esmtp: true,
            starttls,
            requiretls,
            ..Capabilities::default()
        }
    }

    fn problem(fault: CertFault) -> CertProblem {
        CertProblem {
            fault,
            detail: "self-signed".into(),
        }
    }

    #[test]
    fn decide_table() {
        let not_offered = Plan::Defer(TlsPolicyFailure::StartTlsNotOffered);
        let rows = [
            (None, true, Plan::Plaintext),
            (None, false, Plan::Plaintext),
            (Opportunistic, true, Plan::StartTls),
            (Opportunistic, false, Plan::Plaintext),
            (Require, true, Plan::StartTls),
            (Require, false, not_offered.clone()),
            (Verify, true, Plan::StartTls),
            (Verify, false, not_offered),
        ];
        for (level, offered, plan) in rows {
            assert_eq!(
                decide(&req(level), &caps(offered, false)),
                plan,
                "{level:?} offered={offered}"
            );
        }
    }

    #[test]
    fn after_handshake_table() {
        let ok: Result<(), CertProblem> = Ok(());
        let bad = Err(problem(CertFault::SelfSigned));
        let unverified = Err(TlsPolicyFailure::CertificateUnverified(problem(
            CertFault::SelfSigned,
        )));
        let plain = caps(true, false);
        let rows = [
            (None, &ok, Ok(())),
            (None, &bad, Ok(())),
            (Opportunistic, &ok, Ok(())),
            (Opportunistic, &bad, Ok(())),
            (Require, &ok, Ok(())),
            (Require, &bad, Ok(())),
            (Verify, &ok, Ok(())),
            (Verify, &bad, unverified),
        ];
        for (level, cert, verdict) in rows {
            assert_eq!(
                after_handshake(&req(level), cert, &plain),
                verdict,
                "{level:?} {cert:?}"
            );
        }
        // REQUIRETLS: the peer must advertise it over TLS.
        let mut strict = req(Verify);
        strict.requiretls = true;
        assert_eq!(
            after_handshake(&strict, &ok, &plain),
            Err(TlsPolicyFailure::RequireTlsNotOffered)
        );
        assert_eq!(after_handshake(&strict, &ok, &caps(true, true)), Ok(()));
        assert_eq!(
            after_handshake(&strict, &bad, &caps(true, true)),
            Err(TlsPolicyFailure::CertificateUnverified(problem(
                CertFault::SelfSigned
            )))
        );
    }

    #[test]
    fn after_tls_failure_table() {
        let refused = TlsFailure::Refused("454 4.7.0 TLS not available".into());
        let rejected = TlsFailure::CertificateRejected(problem(CertFault::NotTrusted));
        let failed = TlsFailure::Failed("bad record".into());
        let refusal = Fallback::Defer(TlsPolicyFailure::StartTlsRefused(
            "454 4.7.0 TLS not available".into(),
        ));
        let handshake = |r: &str| Fallback::Defer(TlsPolicyFailure::HandshakeFailed(r.into()));
        let cert = Fallback::Defer(TlsPolicyFailure::CertificateUnverified(problem(
            CertFault::NotTrusted,
        )));
        let rows = [
            (None, &refused, Fallback::Plaintext),
            (None, &rejected, Fallback::Plaintext),
            (None, &failed, Fallback::Plaintext),
            (Opportunistic, &refused, Fallback::Plaintext),
            (Opportunistic, &rejected, Fallback::Plaintext),
            (Opportunistic, &failed, Fallback::Plaintext),
            (Require, &refused, refusal.clone()),
            (Require, &rejected, handshake("self-signed")),
            (Require, &failed, handshake("bad record")),
            (Verify, &refused, refusal),
            (Verify, &rejected, cert),
            (Verify, &failed, handshake("bad record")),
        ];
        for (level, failure, fallback) in rows {
            assert_eq!(
                after_tls_failure(&req(level), failure),
                fallback,
                "{level:?} {failure:?}"
            );
        }
    }

    /// The invariant behind the tables: `require` and `verify` never end
    /// in plaintext, whatever happens.
    #[test]
    fn strict_levels_never_fall_back() {
        let failures = [
            TlsFailure::Refused("454".into()),
            TlsFailure::CertificateRejected(problem(CertFault::Other)),
            TlsFailure::Failed("x".into()),
        ];
        for level in MODES.into_iter().filter(|m| *m >= Require) {
            let r = req(level);
            assert_ne!(decide(&r, &caps(false, false)), Plan::Plaintext);
            assert_ne!(decide(&r, &caps(true, false)), Plan::Plaintext);
            for failure in &failures {
                assert_ne!(after_tls_failure(&r, failure), Fallback::Plaintext);
            }
        }
    }

    #[test]
    fn result_types() {
        let cert = |fault| TlsPolicyFailure::CertificateUnverified(problem(fault));
        let rows = [
            (
                TlsPolicyFailure::StartTlsNotOffered,
                "starttls-not-supported",
            ),
            (
                TlsPolicyFailure::StartTlsRefused("454".into()),
                "starttls-not-supported",
            ),
            (cert(CertFault::HostMismatch), "certificate-host-mismatch"),
            (cert(CertFault::Expired), "certificate-expired"),
            (cert(CertFault::SelfSigned), "certificate-not-trusted"),
            (cert(CertFault::NotTrusted), "certificate-not-trusted"),
            (cert(CertFault::Other), "validation-failure"),
            (cert(CertFault::TlsaMismatch), "tlsa-invalid"),
            (
                TlsPolicyFailure::HandshakeFailed("x".into()),
                "validation-failure",
            ),
            (
                TlsPolicyFailure::DaneLookupFailed("bogus".into()),
                "dnssec-invalid",
            ),
        ];
        for (failure, name) in rows {
            let json = serde_json::to_value(failure.result_type()).expect("json");
            assert_eq!(json, name, "{failure:?}");
        }
    }
}
