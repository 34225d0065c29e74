//! What an attempt's result does to one recipient (SPEC §6): delivered,
//! deferred until the next backoff time, or bounced — at once for a
//! permanent failure, or because the queue lifetime is over. A pure
//! function of the result, the recipient's attempt count, the message's
//! arrival time, `now` and the retry settings; the queue runner applies it
//! and writes the state.

use std::time::Duration;

use crate::backoff::{expired, next_attempt};
use crate::client::RecipientResult;
use crate::dsn::FailedRecipient;

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

/// One recipient's transition. `attempts` counts this attempt too.
pub fn transition(
    recipient: &str,
    result: &RecipientResult,
    attempts: u32,
    received_at: i64,
    now: i64,
    retry: &RetryPolicy,
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
    let permanent = failure.is_permanent();
    if !permanent && !expired(received_at, retry.queue_lifetime, now) {
        return Transition::Deferred {
            next_attempt: next_attempt(attempts, retry.min_backoff, retry.max_backoff, now),
            last_error,
        };
    }
    let (status, diagnostic) = if permanent {
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
                assert_eq!(next_attempt, received + 10 + 300);
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
                assert_eq!(next_attempt, received + DAY + 4 * 3600)
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
}
