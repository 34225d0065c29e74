//! REQUIRETLS outcomes (RFC 8689 §4.2, §5; SPEC §10 item 5): which
//! failures of a REQUIRETLS message are *definitive* — the peer or the DNS
//! stated a fact that rules the host out — and which are only transient.
//!
//! A REQUIRETLS message bounces at once (`5.7.30`) only when every MX host
//! failed definitively; any transient failure (timeout, refused connection,
//! 4xx, a handshake cut short, SERVFAIL, a failed TLSA lookup) keeps it in
//! the queue as usual, so a host that is down for a minute does not turn
//! into a bounce — where Postfix's `enforce` bounces on the first failed
//! session whatever its cause. See docs/tls-policy.md, "REQUIRETLS".

use crate::classify::{Failure, FailureKind};
use crate::policy::{CertFault, TlsPolicyFailure};

/// RFC 8689 §5: `5.7.30 REQUIRETLS support required`.
pub const STATUS: &str = "5.7.30";

/// Whether `failure` rules this host out for a REQUIRETLS message for good.
pub fn is_definitive(failure: &Failure) -> bool {
    let FailureKind::TlsPolicy(policy) = &failure.kind else {
        return false;
    };
    match policy {
        // What the server said about itself over a working connection.
        TlsPolicyFailure::StartTlsNotOffered | TlsPolicyFailure::RequireTlsNotOffered => true,
        // `454 TLS not available due to temporary reason` is transient.
        TlsPolicyFailure::StartTlsRefused(reply) => reply.starts_with('5'),
        TlsPolicyFailure::CertificateUnverified(problem) => match problem.fault {
            CertFault::NotTrusted | CertFault::SelfSigned | CertFault::HostMismatch => true,
            // An expired certificate, or one renewed before its TLSA
            // record was, is the classic mistake fixed within hours: the
            // message waits for the fix instead of bouncing.
            CertFault::Expired | CertFault::TlsaMismatch | CertFault::Other => false,
        },
        // The DNS answered, without the authentication REQUIRETLS needs;
        // or the enforced MTA-STS policy does not list the host.
        TlsPolicyFailure::RouteNotAuthenticated { .. } | TlsPolicyFailure::MxNotInPolicy { .. } => {
            true
        }
        // A bogus or unanswered DNSSEC status is trouble, not a fact.
        TlsPolicyFailure::HandshakeFailed(_)
        | TlsPolicyFailure::DaneLookupFailed(_)
        | TlsPolicyFailure::RouteStatusFailed(_) => false,
    }
}

/// Of the failures so far (`kept`) and a new one, the one the delivery
/// reports when no host is left. For REQUIRETLS mail a transient failure
/// wins over definitive ones, so that the message bounces only when every
/// host failed definitively; otherwise the last failure is reported, as
/// for any message.
pub fn report(kept: Option<Failure>, new: Failure, requiretls: bool) -> Option<Failure> {
    match kept {
        Some(kept) if requiretls && !is_definitive(&kept) && is_definitive(&new) => Some(kept),
        _ => Some(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{HostRef, Stage};
    use crate::policy::CertProblem;

    fn policy(p: TlsPolicyFailure) -> Failure {
        Failure::new(
            Some(HostRef::new("mx.partner.test", None)),
            FailureKind::TlsPolicy(p),
        )
    }

    fn cert(fault: CertFault) -> Failure {
        policy(TlsPolicyFailure::CertificateUnverified(CertProblem {
            fault,
            detail: "x".into(),
        }))
    }

    #[test]
    fn definitive_or_transient() {
        #[rustfmt::skip]
        let rows: Vec<(&str, Failure, bool)> = vec![
            ("no REQUIRETLS", policy(TlsPolicyFailure::RequireTlsNotOffered), true),
            ("no STARTTLS", policy(TlsPolicyFailure::StartTlsNotOffered), true),
            ("STARTTLS 554", policy(TlsPolicyFailure::StartTlsRefused("554 5.7.0 no".into())), true),
            ("STARTTLS 454", policy(TlsPolicyFailure::StartTlsRefused("454 4.7.0 later".into())), false),
            ("self-signed", cert(CertFault::SelfSigned), true),
            ("untrusted", cert(CertFault::NotTrusted), true),
            ("wrong name", cert(CertFault::HostMismatch), true),
            ("expired", cert(CertFault::Expired), false),
            ("other cert", cert(CertFault::Other), false),
            ("unauthenticated MX", policy(TlsPolicyFailure::RouteNotAuthenticated { host: "h".into() }), true),
            ("not in STS", policy(TlsPolicyFailure::MxNotInPolicy { host: "h".into() }), true),
            ("handshake", policy(TlsPolicyFailure::HandshakeFailed("reset".into())), false),
            ("TLSA servfail", policy(TlsPolicyFailure::DaneLookupFailed("SERVFAIL".into())), false),
            ("MX status bogus", policy(TlsPolicyFailure::RouteStatusFailed("bogus".into())), false),
            ("timeout", Failure::new(None, FailureKind::Timeout(Stage::Connect)), false),
            ("refused", Failure::new(None, FailureKind::Connect("refused".into())), false),
        ];
        for (name, failure, want) in rows {
            assert_eq!(is_definitive(&failure), want, "{name}");
        }
    }

    #[test]
    fn transient_failure_is_reported_for_requiretls_mail() {
        let down = Failure::new(None, FailureKind::Connect("refused".into()));
        let no_rtls = policy(TlsPolicyFailure::RequireTlsNotOffered);
        // MX 1 down, MX 2 without REQUIRETLS: the message must wait.
        let kept = report(report(None, down.clone(), true), no_rtls.clone(), true);
        assert_eq!(kept, Some(down.clone()));
        // The other order too.
        let kept = report(report(None, no_rtls.clone(), true), down.clone(), true);
        assert_eq!(kept, Some(down.clone()));
        // Without REQUIRETLS the last failure is reported, as before.
        let kept = report(report(None, down, false), no_rtls.clone(), false);
        assert_eq!(kept, Some(no_rtls));
    }
}
