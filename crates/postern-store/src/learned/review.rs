//! What an administrator does with learned levels (SPEC §10 item 4): see
//! them, forget one, or pin one as a `[[domain]]` rule. The CLI and the
//! admin API both call these, so they say and do the same.

use postern_config::{DomainEntry, OutboundMode, Settings};

use super::rule::{summarise, DomainEvidence, LearnRule};
use super::{normalise_name, TlsLevel};
use crate::{Store, StoreError};

/// Every domain with evidence, by name, with its learned level as of `now`.
pub fn list(store: &dyn Store, now: i64) -> Result<Vec<DomainEvidence>, StoreError> {
    let settings = store.settings()?;
    let rule = LearnRule::from_settings(&settings.tls.outbound);
    Ok(summarise(&store.learned().observations()?, now, &rule))
}

/// One domain's evidence, `None` when nothing was seen for it.
pub fn show(
    store: &dyn Store,
    domain: &str,
    now: i64,
) -> Result<Option<DomainEvidence>, StoreError> {
    let domain = normalise_name(domain);
    Ok(list(store, now)?.into_iter().find(|e| e.domain == domain))
}

/// Why a review action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no learned entry for {0}: no delivery to it has been recorded")]
    Unknown(String),
    #[error("nothing is learned for {domain} yet: {seen}; pin needs a learned level")]
    NotLearned { domain: String, seen: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Forget every observation of `domain`; returns how many rows went.
pub fn forget(store: &dyn Store, domain: &str) -> Result<usize, ReviewError> {
    let domain = normalise_name(domain);
    match store.learned().forget_domain(&domain)? {
        0 => Err(ReviewError::Unknown(domain)),
        n => Ok(n),
    }
}

/// The outbound mode a learned level stands for.
pub fn mode_for(level: TlsLevel) -> OutboundMode {
    match level {
        TlsLevel::Verified => OutboundMode::Verify,
        TlsLevel::Tls => OutboundMode::Require,
        TlsLevel::None => OutboundMode::Opportunistic,
    }
}

/// `settings` with `domain` pinned at `mode`: the exact `[[domain]]` entry
/// gets `tls = mode` unless it already asks for more, and stops being a
/// `monitor` rule; without one, a new entry is added (no relay, MX route).
pub fn pinned(settings: &Settings, domain: &str, mode: OutboundMode) -> Settings {
    let mut next = settings.clone();
    match next
        .domains
        .iter_mut()
        .find(|d| d.name.eq_ignore_ascii_case(domain))
    {
        Some(entry) => {
            entry.tls = Some(entry.tls.map_or(mode, |t| t.max(mode)));
            entry.monitor = false;
        }
        None => next.domains.push(DomainEntry {
            name: domain.to_string(),
            relay: false,
            next_hop: None,
            tls: Some(mode),
            monitor: false,
            mta_sts: true,
            dane: true,
        }),
    }
    next
}

/// Pin `domain`'s learned level as a `[[domain]]` rule, through the same
/// validated settings update as every other change. Returns the entry
/// written.
pub fn pin(store: &dyn Store, domain: &str, now: i64) -> Result<DomainEntry, ReviewError> {
    let domain = normalise_name(domain);
    let evidence =
        show(store, &domain, now)?.ok_or_else(|| ReviewError::Unknown(domain.clone()))?;
    let Some(learned) = evidence.learned else {
        let deliveries: i64 = evidence
            .hosts
            .iter()
            .filter(|h| h.level > TlsLevel::None)
            .map(|h| h.deliveries)
            .sum();
        return Err(ReviewError::NotLearned {
            domain,
            seen: format!("{deliveries} TLS deliveries recorded"),
        });
    };
    let mode = mode_for(learned.level);
    let saved = store.update_settings(&mut |current| Ok(pinned(current, &domain, mode)))?;
    saved
        .domains
        .into_iter()
        .find(|d| d.name.eq_ignore_ascii_case(&domain))
        .ok_or_else(|| ReviewError::Store(StoreError::Corrupt("pinned entry not saved".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_adds_or_raises_never_lowers() {
        let mut s = Settings::default();
        let added = pinned(&s, "partner.test", OutboundMode::Verify);
        assert_eq!(added.domains.len(), 1);
        assert_eq!(added.domains[0].tls, Some(OutboundMode::Verify));
        assert!(!added.domains[0].relay);
        s.domains.push(DomainEntry {
            name: "Partner.Test".into(),
            relay: true,
            next_hop: Some("[192.0.2.1]:25".into()),
            tls: Some(OutboundMode::Verify),
            monitor: true,
            mta_sts: true,
            dane: true,
        });
        let kept = pinned(&s, "partner.test", OutboundMode::Require);
        assert_eq!(kept.domains.len(), 1);
        assert_eq!(kept.domains[0].tls, Some(OutboundMode::Verify));
        assert!(!kept.domains[0].monitor);
        assert!(kept.domains[0].relay);
        assert!(kept.validate().is_ok());
    }
}
