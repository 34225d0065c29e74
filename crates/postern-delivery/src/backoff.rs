//! Retry timing: exponential backoff between `mta.min_backoff` and
//! `mta.max_backoff`, and the queue lifetime (`mta.queue_lifetime`, SPEC §4).
//!
//! Times are unix seconds, as the spool stores them
//! (`RecipientState::next_attempt`, `Envelope::received_at`), so the runner
//! can pass them through unchanged; `now` is always a parameter, which keeps
//! tests deterministic.

use std::time::Duration;

/// When to try again after `attempts` failed attempts (counting the one
/// that just failed): `min`, `2·min`, `4·min`, … capped at `max`.
///
/// `attempts` of 0 is treated like 1. A `max` below `min` caps at `max`.
///
/// `now` is the clock in whole seconds, rounded down: the true time can be
/// up to a second later, so the result is one second more than `now +
/// delay`; otherwise a failure at x.999 s with a 1 s backoff was retried
/// 1 ms later. The delay is never shorter than the backoff, at most a
/// second longer.
pub fn next_attempt(attempts: u32, min: Duration, max: Duration, now: i64) -> i64 {
    now.saturating_add(secs(backoff_delay(attempts, min, max)))
        .saturating_add(1)
}

/// The delay alone (see [`next_attempt`]).
pub fn backoff_delay(attempts: u32, min: Duration, max: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(32);
    let factor = 1u32 << doublings.min(31);
    let delay = min.checked_mul(factor).unwrap_or(max);
    // One more doubling than `u32` shifts can express is beyond any cap.
    let delay = if doublings > 31 { max } else { delay };
    delay.min(max)
}

/// Whether a message received at `received_at` has outlived `lifetime`:
/// it then bounces instead of being retried.
pub fn expired(received_at: i64, lifetime: Duration, now: i64) -> bool {
    now >= received_at.saturating_add(secs(lifetime))
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(300);
    const MAX: Duration = Duration::from_secs(3600);

    #[test]
    fn doubles_up_to_the_cap() {
        let now = 1_000_000;
        let rows = [
            (0, 300),
            (1, 300),
            (2, 600),
            (3, 1200),
            (4, 2400),
            (5, 3600),
            (6, 3600),
            (40, 3600),
            (u32::MAX, 3600),
        ];
        for (attempts, delay) in rows {
            assert_eq!(
                next_attempt(attempts, MIN, MAX, now),
                now + delay + 1,
                "attempts={attempts}"
            );
        }
    }

    #[test]
    fn odd_bounds() {
        // max below min: max wins.
        assert_eq!(
            backoff_delay(1, Duration::from_secs(60), Duration::from_secs(30)),
            Duration::from_secs(30)
        );
        // Huge min does not overflow.
        let huge = Duration::from_secs(u64::MAX / 2);
        assert_eq!(backoff_delay(10, huge, Duration::MAX), Duration::MAX);
        assert_eq!(next_attempt(3, huge, Duration::MAX, 5), i64::MAX);
    }

    #[test]
    fn expiry() {
        let lifetime = Duration::from_secs(5 * 86_400);
        let received = 1_700_000_000;
        assert!(!expired(received, lifetime, received));
        assert!(!expired(received, lifetime, received + 5 * 86_400 - 1));
        assert!(expired(received, lifetime, received + 5 * 86_400));
        assert!(!expired(received, Duration::MAX, received + 1));
    }
}
