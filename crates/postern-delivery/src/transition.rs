//! What an attempt's result does to one recipient (SPEC §6): delivered,
//! deferred until the next backoff time, or bounced — at once for a
//! permanent failure, or because the queue lifetime is over. A pure
//! function of the result, the recipient's attempt count, the message's
//! arrival time, `now`, the retry settings and whether the message came
//! with REQUIRETLS (then a definitive TLS policy failure of every host
//! bounces at once with `5.7.30`, RFC 8689 §5); the queue runner applies
//! it and writes the state.

use std::time::Duration;

use crate::backoff::{expired, next_attempt};
use crate::client::RecipientResult;
use crate::dsn::FailedRecipient;
use crate::requiretls;

/// `mta.queue_lifetime`, `mta.min_backoff`, `mta.max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub queue_lifetime: Duration,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// The recipient's new state after one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Accepted; the reply to the final dot.
    Delivered { reply: String },
    /// Temporary failure: try again at `next_attempt` (unix seconds).
    Deferred {
        next_attempt: i64,
        last_error: String,
    },
    /// Permanent failure, or the queue lifetime is over: a DSN entry.
    Bounced {
        last_error: String,
        dsn: FailedRecipient,
    },
}

/// One recipient's transition. `attempts` counts this attempt too;
/// `requiretls` is the message's REQUIRETLS flag.
pub fn transition(
    recipient: &str,
    result: &RecipientResult,
    attempts: u32,
    received_at: i64,
    now: i64,
    retry: &RetryPolicy,
    requiretls: bool,
) -> Transition {
    let failure = match result {
        RecipientResult::Delivered { reply } => {
            return Transition::Delivered {
                reply: reply.clone(),
            }
        }
        RecipientResult::Failed(failure) => failure,
    };
    let last_error = failure.last_error();
    let unmet_requiretls = requiretls && requiretls::is_definitive(failure);
    let permanent = failure.is_permanent() || unmet_requiretls;
    if !permanent && !expired(received_at, retry.queue_lifetime, now) {
        return Transition::Deferred {
            next_attempt: next_attempt(attempts, retry.min_backoff, retry.max_backoff, now),
            last_error,
        };
    }
    let (status, diagnostic) = if unmet_requiretls {
        (requiretls::STATUS.to_string(), failure.diagnostic_code())
    } else if permanent {
        (failure.status(), failure.diagnostic_code())
    } else {
        (
            // RFC 3463: 4.4.7, delivery time expired.
            "4.4.7".to_string(),
            format!("X-Postern; queue lifetime expired; last error: {last_error}"),
        )
    };
    Transition::Bounced {
        dsn: FailedRecipient {
            recipient: recipient.to_string(),
            status,
            diagnostic,
            remote_mta: failure.host.as_ref().map(|h| h.name.clone()),
        },
        last_error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{Failure, FailureKind, HostRef, Stage};
    use crate::policy::TlsPolicyFailure;
    use postern_proto::{EnhancedCode, Reply};

    const HOUR: u64 = 3600;
    const DAY: i64 = 86_400;

    fn retry() -> RetryPolicy {
        RetryPolicy {
            queue_lifetime: Duration::from_secs(5 * 24 * HOUR),
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(4 * HOUR),
        }
    }

    fn failed(code: u16, enhanced: (u8, u16, u16)) -> RecipientResult {
        RecipientResult::Failed(Failure::new(
            Some(HostRef::new("mx.partner.test", "192.0.2.2".parse().ok())),
            FailureKind::Reply {
                stage: Stage::RcptTo,
                reply: Reply {
                    code,
                    enhanced: Some(EnhancedCode(enhanced.0, enhanced.1, enhanced.2)),
                    lines: vec!["no".into()],
                },
            },
        ))
    }

    /// The clock is injected: the same result deferred on day 1, bounced
    /// once the lifetime is over; a 5xx bounces on day 1.
    #[test]
    fn transitions_by_result_and_clock() {
        let received = 1_000_000;
        let t = |result: &RecipientResult, attempts, now| {
            transition(
                "bob@partner.test",
                result,
                attempts,
                received,
                now,
                &retry(),
                false,
            )
        };
        let delivered = RecipientResult::Delivered {
            reply: "250 ok".into(),
        };
        assert_eq!(
            t(&delivered, 1, received + 10),
            Transition::Delivered {
                reply: "250 ok".into()
            }
        );
        let soft = failed(451, (4, 3, 2));
        match t(&soft, 1, received + 10) {
            Transition::Deferred {
                next_attempt,
                last_error,
            } => {
                assert_eq!(next_attempt, received + 10 + 300 + 1); // +1: `now` is rounded down
                assert!(
                    last_error.starts_with("mx.partner.test[192.0.2.2]: 451"),
                    "{last_error}"
                );
            }
            other => panic!("{other:?}"),
        }
        // Later attempts back off further, up to the cap.
        match t(&soft, 20, received + DAY) {
            Transition::Deferred { next_attempt, .. } => {
                assert_eq!(next_attempt, received + DAY + 4 * 3600 + 1)
            }
            other => panic!("{other:?}"),
        }
        // The lifetime is over: a temporary failure bounces with 4.4.7.
        match t(&soft, 30, received + 5 * DAY) {
            Transition::Bounced { dsn, .. } => {
                assert_eq!(dsn.status, "4.4.7");
                assert!(dsn.diagnostic.contains("queue lifetime expired"), "{dsn:?}");
                assert_eq!(dsn.remote_mta.as_deref(), Some("mx.partner.test"));
            }
            other => panic!("{other:?}"),
        }
        // A permanent failure bounces at once with its own status.
        match t(&failed(550, (5, 1, 1)), 1, received + 10) {
            Transition::Bounced { dsn, .. } => {
                assert_eq!(dsn.status, "5.1.1");
                assert_eq!(dsn.diagnostic, "smtp; 550 5.1.1 no");
            }
            other => panic!("{other:?}"),
        }
    }

    fn policy_failed(policy: TlsPolicyFailure) -> RecipientResult {
        RecipientResult::Failed(
            Failure::new(
                Some(HostRef::new("mx.partner.test", "192.0.2.2".parse().ok())),
                FailureKind::TlsPolicy(policy),
            )
            .under("REQUIRETLS".into()),
        )
    }

    /// What a REQUIRETLS message's failures do (SPEC §10 item 5): a
    /// definitive policy failure bounces at once with 5.7.30, transient
    /// trouble defers as usual, and the same failures of a message without
    /// REQUIRETLS only defer.
    #[test]
    fn requiretls_rows() {
        use crate::policy::{CertFault, CertProblem};
        let received = 1_000_000;
        let now = received + 10;
        let cert = |fault| {
            policy_failed(TlsPolicyFailure::CertificateUnverified(CertProblem {
                fault,
                detail: "certificate is self-signed".into(),
            }))
        };
        let timeout = RecipientResult::Failed(Failure::new(
            Some(HostRef::new("mx.partner.test", "192.0.2.2".parse().ok())),
            FailureKind::Timeout(Stage::Connect),
        ));
        #[rustfmt::skip]
        let rows: Vec<(&str, RecipientResult, bool, Option<&str>)> = vec![
            // (name, result, requiretls, bounce status or None for deferred)
            ("no REQUIRETLS offered", policy_failed(TlsPolicyFailure::RequireTlsNotOffered), true, Some("5.7.30")),
            ("self-signed", cert(CertFault::SelfSigned), true, Some("5.7.30")),
            ("unauthenticated MX", policy_failed(TlsPolicyFailure::RouteNotAuthenticated { host: "mx.partner.test".into() }), true, Some("5.7.30")),
            ("no STARTTLS", policy_failed(TlsPolicyFailure::StartTlsNotOffered), true, Some("5.7.30")),
            ("expired certificate waits", cert(CertFault::Expired), true, None),
            ("handshake cut short", policy_failed(TlsPolicyFailure::HandshakeFailed("reset".into())), true, None),
            ("STARTTLS 454", policy_failed(TlsPolicyFailure::StartTlsRefused("454 4.7.0 later".into())), true, None),
            ("receiver down", timeout.clone(), true, None),
            ("4xx", failed(451, (4, 3, 2)), true, None),
            ("5xx keeps its own status", failed(550, (5, 1, 1)), true, Some("5.1.1")),
            ("no REQUIRETLS flag: defer", policy_failed(TlsPolicyFailure::RequireTlsNotOffered), false, None),
            ("no REQUIRETLS flag: self-signed defers", cert(CertFault::SelfSigned), false, None),
        ];
        for (name, result, requiretls, want) in rows {
            let got = transition(
                "bob@partner.test",
                &result,
                1,
                received,
                now,
                &retry(),
                requiretls,
            );
            match (got, want) {
                (Transition::Deferred { next_attempt, .. }, None) => {
                    assert_eq!(next_attempt, now + 300 + 1, "{name}")
                }
                (Transition::Bounced { dsn, last_error }, Some(status)) => {
                    assert_eq!(dsn.status, status, "{name}");
                    assert!(
                        last_error.starts_with("mx.partner.test[192.0.2.2]: "),
                        "{name}: {last_error}"
                    );
                    if status == "5.7.30" {
                        assert!(dsn.diagnostic.starts_with("X-Postern; "), "{name}: {dsn:?}");
                        assert!(last_error.contains("REQUIRETLS: "), "{name}: {last_error}");
                    }
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        // Transient trouble until the lifetime ends: 4.4.7, as for any message.
        match transition(
            "bob@partner.test",
            &timeout,
            30,
            received,
            received + 5 * DAY,
            &retry(),
            true,
        ) {
            Transition::Bounced { dsn, .. } => assert_eq!(dsn.status, "4.4.7"),
            other => panic!("{other:?}"),
        }
    }
}
