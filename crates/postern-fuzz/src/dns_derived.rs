//! `dns_derived`: names that come from DNS answers and `[[domain]]`
//! entries and decide where mail goes: static next hops
//! ([`NextHop::parse`]), domain patterns ([`DomainPattern::matches`] and
//! the precedence of [`Settings::domain_entry`]), and the TLS server name
//! built from an MX host name ([`server_name`]).
//!
//! Input: one byte choosing the check, then the text (for patterns,
//! `pattern NUL domain`).
//!
//! Invariants: nothing panics; an accepted next hop prints in a form that
//! parses back to itself; a wildcard `*.x` matches only proper subdomains of
//! `x`, an exact name only itself (ASCII case-insensitive); the exact entry
//! wins over wildcards and the longest wildcard over shorter ones; an MX
//! host name that rustls accepts as a DNS name has no characters a
//! certificate name cannot have.

use postern_config::{DomainEntry, NextHop, NextHopHost, OutboundMode, Settings};
use postern_delivery::tls_client::server_name;
use rustls_pki_types::ServerName;

use crate::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let check = input.byte();
    let text = String::from_utf8_lossy(input.rest()).into_owned();
    match check % 3 {
        0 => next_hop(&text),
        1 => pattern(&text),
        _ => mx_host(&text),
    }
}

fn next_hop(text: &str) {
    let Ok(hop) = NextHop::parse(text) else {
        return;
    };
    assert_ne!(hop.port, 0);
    let shown = hop.to_string();
    assert_eq!(
        NextHop::parse(&shown).as_ref(),
        Ok(&hop),
        "{text:?} -> {shown:?}"
    );
    if let NextHopHost::Name(name) = &hop.host {
        assert_eq!(name, &name.to_ascii_lowercase());
        let _ = server_name(name);
    }
}

fn pattern(text: &str) {
    let (pattern, domain) = text.split_once('\0').unwrap_or((text, "example.test"));
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let own = entry(pattern, OutboundMode::Verify);
    let matched = own.pattern().matches(&domain);
    if let Some(suffix) = pattern.strip_prefix('*') {
        if matched {
            assert!(domain.len() > suffix.len());
            let tail = &domain.as_bytes()[domain.len() - suffix.len()..];
            assert!(tail.eq_ignore_ascii_case(suffix.as_bytes()));
        }
        if suffix.starts_with('.') {
            assert!(
                !own.pattern().matches(suffix.trim_start_matches('.')),
                "a wildcard matches its own parent domain"
            );
        }
    } else if matched {
        assert!(pattern.trim_end_matches('.').eq_ignore_ascii_case(&domain));
    }

    // Precedence: an exact entry, then the longest wildcard, then the global mode.
    let mut settings = Settings::default();
    settings.tls.outbound.mode = OutboundMode::None;
    settings.domains = vec![entry(pattern, OutboundMode::Require)];
    let chosen = settings.domain_entry(&domain).map(|e| e.name.clone());
    assert_eq!(chosen.is_some(), matched);
    settings.domains = vec![
        entry(&format!("*.{domain}"), OutboundMode::Opportunistic),
        entry(pattern, OutboundMode::Require),
        entry(&domain, OutboundMode::Verify),
    ];
    if !domain.is_empty() && !domain.starts_with('*') {
        let first_exact = matched && !entry(pattern, OutboundMode::None).pattern().is_wildcard();
        let expected = if first_exact {
            OutboundMode::Require
        } else {
            OutboundMode::Verify
        };
        assert_eq!(settings.outbound_mode(&domain), expected);
    }
}

fn mx_host(text: &str) {
    let host = text.trim();
    let Ok(name) = server_name(host) else {
        return;
    };
    if let ServerName::DnsName(dns) = &name {
        let dns = dns.as_ref();
        assert!(
            dns.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
            "server name {dns:?}"
        );
    }
}

fn entry(name: &str, tls: OutboundMode) -> DomainEntry {
    DomainEntry {
        name: name.to_string(),
        relay: false,
        next_hop: None,
        tls: Some(tls),
        mta_sts: true,
        dane: true,
        monitor: false,
    }
}
