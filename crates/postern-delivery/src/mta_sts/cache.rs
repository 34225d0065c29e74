//! The caching rules of RFC 8461 §5.1, as one pure function of what is
//! cached, what the TXT record says and the time:
//!
//! | cached policy | TXT record | step |
//! |---|---|---|
//! | none or expired | announces an id | fetch; on failure no policy |
//! | none or expired | none, invalid, lookup failed | no policy |
//! | unexpired | the cached id, > ¼ of `max_age` left | use the cached policy |
//! | unexpired | the cached id, ≤ ¼ of `max_age` left | refetch; on failure keep the cached one |
//! | unexpired | another id | refetch; on failure keep the cached one |
//! | unexpired | none, invalid, lookup failed | use the cached policy (§5.1: a removed record does not remove a policy) |

use serde::Serialize;

use crate::policy::{MtaStsMode, MtaStsPolicy};

use super::parse::ParsedPolicy;

/// A policy as cached in the store (shared by a cluster) and in memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CachedPolicy {
    pub domain: String,
    /// The TXT `id` it was fetched for.
    pub id: String,
    pub mode: MtaStsMode,
    pub max_age: u64,
    pub mx: Vec<String>,
    /// The policy file as fetched.
    #[serde(skip)]
    pub text: String,
    /// Unix seconds.
    pub fetched_at: i64,
    /// `fetched_at + max_age`.
    pub expires_at: i64,
}

impl CachedPolicy {
    pub fn new(domain: &str, id: &str, parsed: ParsedPolicy, text: String, now: i64) -> Self {
        let max_age = i64::try_from(parsed.max_age).unwrap_or(i64::MAX);
        CachedPolicy {
            domain: domain.to_string(),
            id: id.to_string(),
            mode: parsed.mode,
            max_age: parsed.max_age,
            mx: parsed.mx,
            text,
            fetched_at: now,
            expires_at: now.saturating_add(max_age),
        }
    }

    pub fn is_valid_at(&self, now: i64) -> bool {
        now < self.expires_at
    }

    /// Less than a quarter of `max_age` is left: fetch a fresh one now, so
    /// the policy never lapses while the domain keeps publishing it.
    fn needs_refresh_at(&self, now: i64) -> bool {
        let quarter = i64::try_from(self.max_age / 4).unwrap_or(i64::MAX);
        self.expires_at.saturating_sub(now) <= quarter
    }

    /// The input of the requirement function.
    pub fn policy(&self) -> MtaStsPolicy {
        MtaStsPolicy {
            id: self.id.clone(),
            mode: self.mode,
            mx: self.mx.clone(),
        }
    }
}

/// What the `_mta-sts` TXT lookup gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Txt {
    Id(String),
    /// No record, an invalid one, several, or a failed lookup.
    Nothing,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Use this cached policy.
    Use(CachedPolicy),
    /// Fetch the policy for `id`; if that fails, use `fallback` (an
    /// unexpired cached policy) or none.
    Fetch {
        id: String,
        fallback: Option<CachedPolicy>,
    },
    /// The domain has no MTA-STS policy now.
    NoPolicy,
}

/// The caching rules (see the module documentation).
pub fn step(cached: Option<&CachedPolicy>, txt: &Txt, now: i64) -> Step {
    let valid = cached.filter(|c| c.is_valid_at(now)).cloned();
    match (valid, txt) {
        (None, Txt::Id(id)) => Step::Fetch {
            id: id.clone(),
            fallback: None,
        },
        (None, Txt::Nothing) => Step::NoPolicy,
        (Some(cached), Txt::Id(id)) if *id != cached.id || cached.needs_refresh_at(now) => {
            Step::Fetch {
                id: id.clone(),
                fallback: Some(cached),
            }
        }
        (Some(cached), _) => Step::Use(cached),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000;

    fn cached(id: &str, max_age: u64, fetched_at: i64) -> CachedPolicy {
        CachedPolicy::new(
            "partner.test",
            id,
            ParsedPolicy {
                mode: MtaStsMode::Enforce,
                max_age,
                mx: vec!["mx.partner.test".into()],
            },
            String::new(),
            fetched_at,
        )
    }

    fn id(text: &str) -> Txt {
        Txt::Id(text.into())
    }

    fn fetch(id: &str, fallback: Option<&CachedPolicy>) -> Step {
        Step::Fetch {
            id: id.into(),
            fallback: fallback.cloned(),
        }
    }

    #[test]
    fn caching_rules_with_a_clock() {
        let fresh = cached("a", 86_400, T0);
        // (cached, txt, now, want)
        let rows = [
            (None, id("a"), T0, fetch("a", None)),
            (None, Txt::Nothing, T0, Step::NoPolicy),
            (Some(&fresh), id("a"), T0 + 1, Step::Use(fresh.clone())),
            // Three quarters of max_age gone: refresh, keep it if that fails.
            (Some(&fresh), id("a"), T0 + 64_799, Step::Use(fresh.clone())),
            (Some(&fresh), id("a"), T0 + 64_800, fetch("a", Some(&fresh))),
            (Some(&fresh), id("b"), T0 + 1, fetch("b", Some(&fresh))),
            // The TXT record is gone or unreadable: the cached policy holds.
            (
                Some(&fresh),
                Txt::Nothing,
                T0 + 86_399,
                Step::Use(fresh.clone()),
            ),
            // Expired: as if nothing were cached.
            (Some(&fresh), Txt::Nothing, T0 + 86_400, Step::NoPolicy),
            (Some(&fresh), id("a"), T0 + 86_400, fetch("a", None)),
            (Some(&fresh), id("b"), T0 + 90_000, fetch("b", None)),
        ];
        for (number, (cache, txt, now, want)) in rows.into_iter().enumerate() {
            assert_eq!(step(cache, &txt, now), want, "row {number}");
        }
    }

    #[test]
    fn max_age_zero_is_never_valid() {
        let zero = cached("a", 0, T0);
        assert!(!zero.is_valid_at(T0));
        assert_eq!(step(Some(&zero), &id("a"), T0), fetch("a", None));
    }

    #[test]
    fn expiry_is_fetched_at_plus_max_age() {
        let policy = cached("a", 600, T0);
        assert_eq!(policy.expires_at, T0 + 600);
        assert!(policy.is_valid_at(T0 + 599));
        assert!(!policy.is_valid_at(T0 + 600));
    }
}
