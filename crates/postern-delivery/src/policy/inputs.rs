//! What each policy source says, as plain data: the inputs of
//! [`super::requirement`]. Nothing here looks anything up; the lookups
//! (DNS, HTTPS, the store) fill these types, and an input a source has not
//! produced is its "nothing" value (`None`, `false`, [`DaneInput::Off`]).

use postern_config::{OutboundMode, Settings};
use serde::Serialize;

/// The administrator's own rules: the global mode and the `[[domain]]`
/// entry that matches the recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// `tls.outbound.mode`.
    pub global: OutboundMode,
    /// The matching `[[domain]]` entry, if any.
    pub domain: Option<DomainRule>,
}

impl Base {
    /// From the settings, for one recipient domain.
    pub fn from_settings(settings: &Settings, domain: &str) -> Base {
        let entry = settings.domain_entry(domain);
        Base {
            global: settings.tls.outbound.mode,
            domain: entry.map(|e| DomainRule {
                tls: e.tls,
                monitor: e.monitor,
                // Not yet in the settings: the SPEC §10 defaults.
                mta_sts: e.mta_sts,
                dane: e.dane,
                static_route: e.next_hop().is_some(),
            }),
        }
    }
}

/// One `[[domain]]` entry, as far as TLS policy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRule {
    /// The entry's `tls`, when set.
    pub tls: Option<OutboundMode>,
    /// `monitor = true`: evaluate and record `tls`, deliver by the global mode.
    pub monitor: bool,
    /// `mta_sts = false` ignores the domain's MTA-STS policy.
    pub mta_sts: bool,
    /// `dane = false` ignores its TLSA records.
    pub dane: bool,
    /// The entry has a static `next_hop` (no MX lookup).
    pub static_route: bool,
}

/// Whether a DNS answer was DNSSEC-authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Authenticity {
    /// Signed and validated (or the AD bit of a trusted validating resolver).
    Authenticated,
    /// Unsigned, or authenticity could not be established (SPEC §10: no
    /// DANE, delivery goes on).
    #[default]
    Unauthenticated,
}

/// What DNSSEC said about the route to one host (SPEC §10): the MX RRset
/// that named it and its address records. Found by the route lookup
/// ([`crate::route`]); DANE and REQUIRETLS both read it from there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RouteAuth {
    /// Not looked up: `dns.dnssec = "off"`, or a route not found by MX
    /// (a static `next_hop`, an address literal).
    #[default]
    NotLooked,
    Looked {
        mx: Authenticity,
        addresses: Authenticity,
    },
    /// The MX status query failed (timeout, SERVFAIL) although the route's
    /// own lookup worked: nothing is known. DANE reads it as
    /// unauthenticated (DNSSEC never stops mail by itself); REQUIRETLS,
    /// which needs the fact, defers.
    MxUnknown(String),
    /// An answer carried signatures that failed validation (bogus): where
    /// DNSSEC matters for the host, it is deferred.
    Bogus(String),
}

impl RouteAuth {
    /// The MX lookup authenticated this host (REQUIRETLS routing).
    pub fn mx_authenticated(&self) -> bool {
        matches!(
            self,
            RouteAuth::Looked {
                mx: Authenticity::Authenticated,
                ..
            }
        )
    }
}

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Hash)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Usable for SMTP (RFC 7672 §3.1): DANE-TA(2) or DANE-EE(3), selector
    /// 0 or 1, matching type 0, 1 or 2. Usages 0 and 1 (PKIX-TA/EE) are
    /// not used for SMTP.
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }
}

/// What DANE says about one MX host (SPEC §10 item 2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DaneInput {
    /// DANE is off (globally, for the domain, or `dns.dnssec = off`), or
    /// not looked up.
    #[default]
    Off,
    /// The TLSA lookup was made: the DNSSEC status of the MX RRset and of
    /// the host's addresses, and the TLSA records found (empty: none, by an
    /// authenticated denial or an unauthenticated answer).
    Looked {
        mx: Authenticity,
        addresses: Authenticity,
        tlsa: Authenticity,
        records: Vec<Tlsa>,
    },
    /// The TLSA lookup failed (SERVFAIL, timeout, bogus signatures): the
    /// host is deferred, never used without DANE.
    Failed(String),
}

/// `mode` of an MTA-STS policy (RFC 8461 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Hash)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsMode {
    Enforce,
    Testing,
    None,
}

/// A valid, unexpired MTA-STS policy of the recipient domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MtaStsPolicy {
    /// The `id` of the `_mta-sts` TXT record it was fetched for.
    pub id: String,
    pub mode: MtaStsMode,
    /// `mx` patterns: `mx.example.net` or `*.example.net`.
    pub mx: Vec<String>,
}

impl MtaStsPolicy {
    /// RFC 8461 §4.1: a pattern matches the host exactly, or `*.` matches
    /// exactly one more leftmost label. Case-insensitive; trailing dots
    /// ignored.
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|pattern| {
            let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
            match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => host == pattern,
            }
        })
    }
}

/// The learned level of a recipient domain (SPEC §10 item 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LearnedLevel {
    /// Delivered over TLS, certificate not authenticated: `require`.
    Tls,
    /// Delivered with an authenticated certificate: `verify`.
    Verified,
}

/// `tls.outbound.learn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LearnMode {
    /// A downgrade is delivered, recorded and alerted.
    Monitor,
    /// The learned level raises the requirement.
    Enforce,
}

/// Everything the requirement for one message, domain and MX host depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inputs<'a> {
    pub base: &'a Base,
    /// The MX host (or next hop) the requirement is for.
    pub host: &'a str,
    /// The domain's MTA-STS policy, when `mta_sts` is on and one is known.
    pub mta_sts: Option<&'a MtaStsPolicy>,
    pub dane: &'a DaneInput,
    /// What DNSSEC said about the route to the host (REQUIRETLS routing).
    pub route: &'a RouteAuth,
    /// The learned level and what to do with it, when one is known.
    pub learned: Option<(LearnedLevel, LearnMode)>,
    /// The message arrived with `MAIL FROM:<..> REQUIRETLS`.
    pub requiretls: bool,
    /// The message carries `TLS-Required: No`.
    pub tls_required_no: bool,
}

impl<'a> Inputs<'a> {
    /// Only the administrator's rules: what delivery has today, before any
    /// lookup feeds the other sources.
    pub fn base_only(base: &'a Base, host: &'a str) -> Inputs<'a> {
        const NO_DANE: &DaneInput = &DaneInput::Off;
        const NOT_LOOKED: &RouteAuth = &RouteAuth::NotLooked;
        Inputs {
            base,
            host,
            mta_sts: None,
            dane: NO_DANE,
            route: NOT_LOOKED,
            learned: None,
            requiretls: false,
            tls_required_no: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mta_sts_patterns() {
        let policy = MtaStsPolicy {
            id: "1".into(),
            mode: MtaStsMode::Enforce,
            mx: vec!["mx1.partner.test".into(), "*.mx.partner.test".into()],
        };
        for (host, matches) in [
            ("mx1.partner.test", true),
            ("MX1.Partner.Test.", true),
            ("a.mx.partner.test", true),
            ("mx.partner.test", false),
            ("a.b.mx.partner.test", false),
            ("mx2.partner.test", false),
            (".mx.partner.test", false),
        ] {
            assert_eq!(policy.matches(host), matches, "{host}");
        }
    }

    #[test]
    fn usable_tlsa() {
        let tlsa = |usage, selector, matching| Tlsa {
            usage,
            selector,
            matching,
            data: vec![0; 32],
        };
        assert!(tlsa(3, 1, 1).is_usable());
        assert!(tlsa(2, 0, 2).is_usable());
        assert!(tlsa(3, 0, 0).is_usable());
        assert!(!tlsa(1, 1, 1).is_usable());
        assert!(!tlsa(0, 0, 1).is_usable());
        assert!(!tlsa(3, 2, 1).is_usable());
        assert!(!tlsa(3, 1, 3).is_usable());
    }
}
