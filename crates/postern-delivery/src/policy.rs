//! Outbound TLS policy as two small pure functions (SPEC §4, §6; STYLE
//! practice 10).
//!
//! [`decide`] runs after EHLO, when we know whether the peer offers
//! STARTTLS; [`after_handshake`] runs after STARTTLS, when we know how the
//! handshake went and whether the certificate verified. The mode is
//! [`OutboundMode`], ordered from weakest to strictest:
//!
//! | mode | STARTTLS offered | not offered | handshake fails | certificate unverified |
//! |---|---|---|---|---|
//! | `none` | plaintext | plaintext | — | — |
//! | `opportunistic` | STARTTLS | plaintext | reconnect in plaintext, recorded | deliver over TLS |
//! | `require` | STARTTLS | defer | defer | deliver over TLS |
//! | `verify` | STARTTLS (verifying) | defer | defer | defer |
//!
//! `verify` means: the chain ends at a trusted root (`tls.outbound.trusted_ca`)
//! and the certificate names the host we connected to (the MX host name,
//! the `next_hop` host name, or — for an IP-literal next hop — an IP SAN).
//! A TLS requirement that cannot be met never falls back silently: it
//! defers with a [`TlsPolicyFailure`] naming what failed, and
//! [`crate::classify`] makes that temporary.
//!
//! Designed so later policy sources (MTA-STS, DANE, REQUIRETLS, a learned
//! per-domain level) become inputs that raise the mode before `decide`, not
//! new code paths through delivery.

use std::fmt;

use postern_config::OutboundMode;

/// What to do after EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Deliver without TLS.
    Plaintext,
    /// Issue STARTTLS.
    StartTls {
        /// What a failed STARTTLS or handshake leads to.
        on_failure: Fallback,
        /// Use the verifying configuration (chain and name).
        verify: bool,
    },
    /// Do not deliver to this host now.
    Defer(TlsPolicyFailure),
}

/// What a failed STARTTLS leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Deliver in plaintext (reconnecting if the handshake had started),
    /// and record that it happened.
    Plaintext,
    /// Defer the message.
    Defer,
}

/// How STARTTLS went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// TLS is up. `cert_verified` says whether the chain ends at a trusted
    /// root and names the host; `verify_error` says why not.
    Established {
        cert_verified: bool,
        verify_error: Option<String>,
    },
    /// The server answered STARTTLS with something other than `220`.
    Refused(String),
    /// The verifying configuration rejected the certificate during the
    /// handshake (the reason in words).
    CertificateRejected(String),
    /// The handshake failed (alert, garbage, timeout, closed).
    Failed(String),
}

/// What to do after STARTTLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Continue over TLS.
    Proceed,
    /// Continue in plaintext: on the same connection after a refused
    /// STARTTLS, on a new connection after a failed handshake. The attempt
    /// record says so.
    FallBackToPlaintext,
    /// Do not deliver to this host now.
    Defer(TlsPolicyFailure),
}

/// Why a TLS requirement was not met. Always a temporary failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsPolicyFailure {
    StartTlsNotOffered,
    /// STARTTLS answered with this reply.
    StartTlsRefused(String),
    HandshakeFailed(String),
    CertificateUnverified(String),
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
            TlsPolicyFailure::CertificateUnverified(reason) => {
                write!(f, "certificate verification failed: {reason}")
            }
        }
    }
}

/// The plan for a connection, given the mode and what the peer offered.
pub fn decide(mode: OutboundMode, offered_starttls: bool) -> Plan {
    match (mode, offered_starttls) {
        (OutboundMode::None, _) => Plan::Plaintext,
        (OutboundMode::Opportunistic, false) => Plan::Plaintext,
        (OutboundMode::Opportunistic, true) => Plan::StartTls {
            on_failure: Fallback::Plaintext,
            verify: false,
        },
        (OutboundMode::Require | OutboundMode::Verify, false) => {
            Plan::Defer(TlsPolicyFailure::StartTlsNotOffered)
        }
        (OutboundMode::Require, true) => Plan::StartTls {
            on_failure: Fallback::Defer,
            verify: false,
        },
        (OutboundMode::Verify, true) => Plan::StartTls {
            on_failure: Fallback::Defer,
            verify: true,
        },
    }
}

/// The verdict once STARTTLS was tried.
pub fn after_handshake(mode: OutboundMode, result: &HandshakeOutcome) -> Verdict {
    let falls_back = mode <= OutboundMode::Opportunistic;
    match result {
        HandshakeOutcome::Established {
            cert_verified: true,
            ..
        } => Verdict::Proceed,
        HandshakeOutcome::Established {
            cert_verified: false,
            verify_error,
        } => {
            if mode == OutboundMode::Verify {
                let reason = verify_error
                    .clone()
                    .unwrap_or_else(|| "certificate not verified".into());
                Verdict::Defer(TlsPolicyFailure::CertificateUnverified(reason))
            } else {
                Verdict::Proceed
            }
        }
        HandshakeOutcome::Refused(reply) => {
            if falls_back {
                Verdict::FallBackToPlaintext
            } else {
                Verdict::Defer(TlsPolicyFailure::StartTlsRefused(reply.clone()))
            }
        }
        HandshakeOutcome::CertificateRejected(reason) => match mode {
            OutboundMode::Verify => {
                Verdict::Defer(TlsPolicyFailure::CertificateUnverified(reason.clone()))
            }
            OutboundMode::Require => {
                Verdict::Defer(TlsPolicyFailure::HandshakeFailed(reason.clone()))
            }
            OutboundMode::None | OutboundMode::Opportunistic => Verdict::FallBackToPlaintext,
        },
        HandshakeOutcome::Failed(reason) => {
            if falls_back {
                Verdict::FallBackToPlaintext
            } else {
                Verdict::Defer(TlsPolicyFailure::HandshakeFailed(reason.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: [OutboundMode; 4] = [
        OutboundMode::None,
        OutboundMode::Opportunistic,
        OutboundMode::Require,
        OutboundMode::Verify,
    ];

    fn starttls(on_failure: Fallback, verify: bool) -> Plan {
        Plan::StartTls { on_failure, verify }
    }

    #[test]
    fn decide_table() {
        use OutboundMode::*;
        let not_offered = Plan::Defer(TlsPolicyFailure::StartTlsNotOffered);
        let rows = [
            (None, true, Plan::Plaintext),
            (None, false, Plan::Plaintext),
            (Opportunistic, true, starttls(Fallback::Plaintext, false)),
            (Opportunistic, false, Plan::Plaintext),
            (Require, true, starttls(Fallback::Defer, false)),
            (Require, false, not_offered.clone()),
            (Verify, true, starttls(Fallback::Defer, true)),
            (Verify, false, not_offered),
        ];
        for (mode, offered, plan) in rows {
            assert_eq!(decide(mode, offered), plan, "{mode:?} offered={offered}");
        }
    }

    #[test]
    fn after_handshake_table() {
        use OutboundMode::*;
        let verified = HandshakeOutcome::Established {
            cert_verified: true,
            verify_error: Option::None,
        };
        let unverified = HandshakeOutcome::Established {
            cert_verified: false,
            verify_error: Some("self-signed".into()),
        };
        let refused = HandshakeOutcome::Refused("454 4.7.0 TLS not available".into());
        let rejected = HandshakeOutcome::CertificateRejected("unknown issuer".into());
        let failed = HandshakeOutcome::Failed("bad record".into());
        let cert = |r: &str| Verdict::Defer(TlsPolicyFailure::CertificateUnverified(r.into()));
        let handshake = |r: &str| Verdict::Defer(TlsPolicyFailure::HandshakeFailed(r.into()));
        let refusal = Verdict::Defer(TlsPolicyFailure::StartTlsRefused(
            "454 4.7.0 TLS not available".into(),
        ));
        let rows = [
            (None, &verified, Verdict::Proceed),
            (None, &unverified, Verdict::Proceed),
            (None, &refused, Verdict::FallBackToPlaintext),
            (None, &rejected, Verdict::FallBackToPlaintext),
            (None, &failed, Verdict::FallBackToPlaintext),
            (Opportunistic, &verified, Verdict::Proceed),
            (Opportunistic, &unverified, Verdict::Proceed),
            (Opportunistic, &refused, Verdict::FallBackToPlaintext),
            (Opportunistic, &rejected, Verdict::FallBackToPlaintext),
            (Opportunistic, &failed, Verdict::FallBackToPlaintext),
            (Require, &verified, Verdict::Proceed),
            (Require, &unverified, Verdict::Proceed),
            (Require, &refused, refusal.clone()),
            (Require, &rejected, handshake("unknown issuer")),
            (Require, &failed, handshake("bad record")),
            (Verify, &verified, Verdict::Proceed),
            (Verify, &unverified, cert("self-signed")),
            (Verify, &refused, refusal),
            (Verify, &rejected, cert("unknown issuer")),
            (Verify, &failed, handshake("bad record")),
        ];
        for (mode, outcome, verdict) in rows {
            assert_eq!(
                after_handshake(mode, outcome),
                verdict,
                "{mode:?} {outcome:?}"
            );
        }
    }

    /// The invariant behind the tables: `require` and `verify` never end
    /// in plaintext, whatever happens.
    #[test]
    fn strict_modes_never_fall_back() {
        let outcomes = [
            HandshakeOutcome::Refused("454".into()),
            HandshakeOutcome::CertificateRejected("x".into()),
            HandshakeOutcome::Failed("x".into()),
            HandshakeOutcome::Established {
                cert_verified: false,
                verify_error: None,
            },
        ];
        for mode in MODES.into_iter().filter(|m| *m >= OutboundMode::Require) {
            assert_ne!(decide(mode, false), Plan::Plaintext);
            assert_ne!(decide(mode, true), Plan::Plaintext);
            for outcome in &outcomes {
                assert_ne!(after_handshake(mode, outcome), Verdict::FallBackToPlaintext);
            }
        }
    }
}
