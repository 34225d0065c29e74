//! The learning rule (SPEC §10 item 4), a pure function of the evidence,
//! the clock and the settings: the best level delivered with at least
//! `learn_min_deliveries` times over at least `learn_min_span`, counting
//! only hosts confirmed within `learn_expiry`. A verified delivery also
//! counts as a TLS one, so a domain that mixes both learns at least `tls`.

use postern_config::OutboundTls;
use serde::Serialize;

use super::{TlsLevel, TlsObservation};

/// The thresholds, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnRule {
    pub min_deliveries: i64,
    pub min_span: i64,
    pub expiry: i64,
}

impl LearnRule {
    pub fn from_settings(outbound: &OutboundTls) -> LearnRule {
        let secs = |d: postern_config::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        LearnRule {
            min_deliveries: i64::from(outbound.learn_min_deliveries),
            min_span: secs(outbound.learn_min_span),
            expiry: secs(outbound.learn_expiry),
        }
    }
}

/// A learned level and the evidence that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Learned {
    /// `tls` or `verified`.
    pub level: TlsLevel,
    /// Deliveries at this level or better, on hosts still confirmed.
    pub deliveries: i64,
    pub first_seen: i64,
    pub last_seen: i64,
    /// Forgotten at this time unless confirmed again.
    pub expires_at: i64,
}

/// The learned level of one domain from its observations (rows of other
/// domains are ignored), or `None`.
pub fn learn(observations: &[&TlsObservation], now: i64, rule: &LearnRule) -> Option<Learned> {
    [TlsLevel::Verified, TlsLevel::Tls]
        .into_iter()
        .find_map(|level| at_least(observations, level, now, rule))
}

fn at_least(
    observations: &[&TlsObservation],
    level: TlsLevel,
    now: i64,
    rule: &LearnRule,
) -> Option<Learned> {
    let fresh: Vec<&&TlsObservation> = observations
        .iter()
        .filter(|o| o.level >= level && now.saturating_sub(o.last_seen) < rule.expiry)
        .collect();
    let deliveries: i64 = fresh.iter().map(|o| o.deliveries).sum();
    let first_seen = fresh.iter().map(|o| o.first_seen).min()?;
    let last_seen = fresh.iter().map(|o| o.last_seen).max()?;
    (deliveries >= rule.min_deliveries && last_seen - first_seen >= rule.min_span).then(|| {
        Learned {
            level,
            deliveries,
            first_seen,
            last_seen,
            expires_at: last_seen.saturating_add(rule.expiry),
        }
    })
}

/// One domain for review: what is learned, and every row of evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DomainEvidence {
    pub domain: String,
    /// `None` while the evidence does not (or no longer) suffice.
    pub learned: Option<Learned>,
    /// Per MX host and level: deliveries, first and last seen.
    pub hosts: Vec<TlsObservation>,
}

/// Every domain of `observations` (ordered by domain), with its learned level.
pub fn summarise(
    observations: &[TlsObservation],
    now: i64,
    rule: &LearnRule,
) -> Vec<DomainEvidence> {
    let mut by_domain: std::collections::BTreeMap<&str, Vec<&TlsObservation>> =
        std::collections::BTreeMap::new();
    for o in observations {
        by_domain.entry(&o.domain).or_default().push(o);
    }
    by_domain
        .into_iter()
        .map(|(domain, rows)| DomainEvidence {
            domain: domain.to_string(),
            learned: learn(&rows, now, rule),
            hosts: rows.into_iter().cloned().collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    fn rule() -> LearnRule {
        LearnRule {
            min_deliveries: 3,
            min_span: DAY,
            expiry: 90 * DAY,
        }
    }

    fn obs(host: &str, level: TlsLevel, n: i64, first: i64, last: i64) -> TlsObservation {
        TlsObservation {
            domain: "partner.test".into(),
            host: host.into(),
            level,
            deliveries: n,
            first_seen: first,
            last_seen: last,
        }
    }

    fn level(rows: &[TlsObservation], now: i64) -> Option<TlsLevel> {
        let refs: Vec<&TlsObservation> = rows.iter().collect();
        learn(&refs, now, &rule()).map(|l| l.level)
    }

    #[test]
    fn learning_table() {
        use TlsLevel::{None as Plain, Tls, Verified};
        let t0 = 1_000_000_000;
        #[rustfmt::skip]
        let rows: Vec<(&str, Vec<TlsObservation>, i64, Option<TlsLevel>)> = vec![
            ("nothing seen", vec![], t0, None),
            ("enough, over a day", vec![obs("mx1", Verified, 3, t0, t0 + DAY)], t0 + DAY, Some(Verified)),
            ("too few", vec![obs("mx1", Verified, 2, t0, t0 + DAY)], t0 + DAY, None),
            ("too short a span", vec![obs("mx1", Verified, 30, t0, t0 + DAY - 1)], t0 + DAY, None),
            ("plaintext never learned", vec![obs("mx1", Plain, 30, t0, t0 + 2 * DAY)], t0 + 2 * DAY, None),
            ("tls", vec![obs("mx1", Tls, 3, t0, t0 + DAY)], t0 + DAY, Some(Tls)),
            ("verified counts as tls", vec![obs("mx1", Verified, 2, t0, t0 + DAY), obs("mx2", Tls, 1, t0, t0)], t0 + DAY, Some(Tls)),
            ("hosts add up", vec![obs("mx1", Verified, 2, t0, t0), obs("mx2", Verified, 1, t0 + DAY, t0 + DAY)], t0 + DAY, Some(Verified)),
            ("a downgrade does not unlearn", vec![obs("mx1", Verified, 3, t0, t0 + DAY), obs("mx1", Plain, 9, t0 + DAY, t0 + 2 * DAY)], t0 + 2 * DAY, Some(Verified)),
            ("just before expiry", vec![obs("mx1", Verified, 3, t0, t0 + DAY)], t0 + DAY + 90 * DAY - 1, Some(Verified)),
            ("expired", vec![obs("mx1", Verified, 3, t0, t0 + DAY)], t0 + DAY + 90 * DAY, None),
            ("an expired host no longer counts", vec![obs("mx1", Verified, 2, t0, t0), obs("mx2", Verified, 1, t0 + 91 * DAY, t0 + 91 * DAY)], t0 + 91 * DAY, None),
            ("verified expired, tls still confirmed", vec![obs("mx1", Verified, 3, t0, t0 + DAY), obs("mx2", Tls, 3, t0 + 80 * DAY, t0 + 95 * DAY)], t0 + 95 * DAY, Some(Tls)),
        ];
        for (name, rows, now, want) in rows {
            assert_eq!(level(&rows, now), want, "{name}");
        }
    }

    #[test]
    fn evidence_and_expiry_time() {
        let t0 = 1_000_000_000;
        let rows = vec![
            obs("mx1", TlsLevel::Verified, 2, t0, t0 + 10),
            obs("mx2", TlsLevel::Verified, 2, t0 + 5, t0 + DAY),
        ];
        let summary = summarise(&rows, t0 + DAY, &rule());
        assert_eq!(summary.len(), 1);
        let learned = summary[0].learned.clone().expect("learned");
        assert_eq!(learned.deliveries, 4);
        assert_eq!(learned.first_seen, t0);
        assert_eq!(learned.expires_at, t0 + DAY + 90 * DAY);
        assert_eq!(summary[0].hosts.len(), 2);
    }

    #[test]
    fn a_zero_span_learns_from_the_count_alone() {
        let t0 = 1_000_000_000;
        let rows = [obs("mx1", TlsLevel::Tls, 3, t0, t0)];
        let refs: Vec<&TlsObservation> = rows.iter().collect();
        let zero = LearnRule {
            min_span: 0,
            ..rule()
        };
        assert!(learn(&refs, t0, &zero).is_some());
    }
}
