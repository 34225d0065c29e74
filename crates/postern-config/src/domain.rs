//! `[[domain]]` entries: name patterns, relay permission, static next hop.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::settings::OutboundMode;
use crate::ConfigError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainEntry {
    /// Exact name, or `*.corp.example` for subdomains only.
    pub name: String,
    /// Mail for this domain is accepted from any client.
    #[serde(default)]
    pub relay: bool,
    /// Static route instead of an MX lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop: Option<String>,
    /// Overrides `tls.outbound.mode` for this domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<OutboundMode>,
    /// `false` ignores the domain's MTA-STS policy (a broken partner).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub mta_sts: bool,
    /// `false`: ignore this domain's TLSA records (SPEC §10; an override
    /// for a partner whose DANE records are broken).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub dane: bool,
    /// `tls` is evaluated and its would-be verdict recorded on every
    /// attempt, but delivery follows the global mode (SPEC §10 item 7).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub monitor: bool,
}

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

impl DomainEntry {
    pub fn pattern(&self) -> DomainPattern<'_> {
        DomainPattern(&self.name)
    }

    /// The parsed next hop; `None` when the entry routes by MX.
    pub fn next_hop(&self) -> Option<NextHop> {
        self.next_hop
            .as_deref()
            .and_then(|h| NextHop::parse(h).ok())
    }

    pub(crate) fn validate(&self, index: usize) -> Result<(), ConfigError> {
        let key = |field: &str| format!("domain[{index}].{field}");
        let bare = self.name.strip_prefix("*.").unwrap_or(&self.name);
        if !is_domain_name(bare) {
            return Err(ConfigError::new(
                key("name"),
                format!(
                    "\"{}\" is not a domain name (use \"example.com\" or \"*.example.com\")",
                    self.name
                ),
            ));
        }
        if let Some(hop) = &self.next_hop {
            NextHop::parse(hop).map_err(|m| ConfigError::new(key("next_hop"), m))?;
        }
        if self.monitor && self.tls.is_none() {
            return Err(ConfigError::new(
                key("monitor"),
                "monitor = true evaluates the entry's tls, so the entry needs one (e.g. tls = \"verify\")",
            ));
        }
        Ok(())
    }
}

/// A domain name or a `*.` wildcard that matches subdomains at any depth.
#[derive(Debug, Clone, Copy)]
pub struct DomainPattern<'a>(&'a str);

impl DomainPattern<'_> {
    pub fn is_wildcard(&self) -> bool {
        self.0.starts_with("*.")
    }

    /// `domain` must already be lower case without a trailing dot.
    pub fn matches(&self, domain: &str) -> bool {
        match self.0.strip_prefix('*') {
            // "*.corp.example" keeps its dot, so "corp.example" itself never matches.
            Some(suffix) => {
                domain.len() > suffix.len()
                    && domain
                        .get(domain.len() - suffix.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
            None => self.0.trim_end_matches('.').eq_ignore_ascii_case(domain),
        }
    }
}

/// A static route, in the forms a Postfix administrator writes: `host`,
/// `host:port`, `[host]`, `[host]:port`, `[192.0.2.1]:25` or
/// `[2001:db8::1]:25`. Brackets around a name are Postfix's "no MX lookup";
/// Postern never looks up MX for a next hop, so both spellings of a name
/// mean the same: its A/AAAA records, verified by that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub host: NextHopHost,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHopHost {
    /// Looked up by A/AAAA (no MX lookup), verified by this name.
    Name(String),
    /// Used as is, verified against an IP subject-alternative name.
    Ip(IpAddr),
}

impl NextHop {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "\"{text}\" is not a next hop; expected \"host\", \"host:port\", \"[host]:port\" or \"[ip]:port\""
            )
        };
        let (host, port, bracketed) = match text.strip_prefix('[') {
            Some(rest) => {
                let (host, after) = rest.split_once(']').ok_or_else(bad)?;
                let port = match after {
                    "" => 25,
                    _ => parse_port(after.strip_prefix(':').ok_or_else(bad)?).ok_or_else(bad)?,
                };
                (host, port, true)
            }
            None => match text.rsplit_once(':') {
                Some((host, port)) => (host, parse_port(port).ok_or_else(bad)?, false),
                None => (text, 25, false),
            },
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            if !bracketed {
                return Err(format!(
                    "{}: write IP addresses in brackets, e.g. \"[{host}]:{port}\"",
                    bad()
                ));
            }
            return Ok(Self {
                host: NextHopHost::Ip(ip),
                port,
            });
        }
        if !is_domain_name(host) {
            return Err(bad());
        }
        Ok(Self {
            host: NextHopHost::Name(host.trim_end_matches('.').to_ascii_lowercase()),
            port,
        })
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            NextHopHost::Name(name) => write!(f, "{name}:{}", self.port),
            NextHopHost::Ip(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

fn parse_port(text: &str) -> Option<u16> {
    text.parse().ok().filter(|p| *p != 0)
}

/// LDH labels (and underscores, seen in the wild), 1..=63 bytes each, 253 in all.
pub(crate) fn is_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hop_forms() {
        // (written, Ok(shown) or Err(part of the message))
        let rows: [(&str, Result<&str, &str>); 22] = [
            ("relay.corp.example", Ok("relay.corp.example:25")),
            ("Relay.corp.example:2525", Ok("relay.corp.example:2525")),
            ("[mx.partner.test]:2525", Ok("mx.partner.test:2525")),
            ("[MX.Partner.test]", Ok("mx.partner.test:25")),
            ("[mx.partner.test.]:26", Ok("mx.partner.test:26")),
            (" [relay]:587 ", Ok("relay:587")),
            ("[10.0.0.5]:25", Ok("[10.0.0.5]:25")),
            ("[10.0.0.5]", Ok("[10.0.0.5]:25")),
            ("[2001:db8::1]:587", Ok("[2001:db8::1]:587")),
            ("", Err("is not a next hop")),
            ("10.0.0.5:25", Err("write IP addresses in brackets")),
            ("2001:db8::1", Err("is not a next hop")),
            ("[10.0.0.5:25", Err("is not a next hop")),
            ("[mx.partner.test:2525", Err("is not a next hop")),
            ("[mx.partner.test]2525", Err("is not a next hop")),
            ("[mx.partner.test]:", Err("is not a next hop")),
            ("[]:25", Err("is not a next hop")),
            ("[[mx.partner.test]]:25", Err("is not a next hop")),
            ("host:0", Err("is not a next hop")),
            ("host:99999", Err("is not a next hop")),
            ("a b", Err("is not a next hop")),
            ("[10.0.0.5]x", Err("is not a next hop")),
        ];
        for (text, want) in rows {
            match (NextHop::parse(text), want) {
                (Ok(hop), Ok(shown)) => {
                    assert_eq!(hop.to_string(), shown, "{text:?}");
                    assert_eq!(NextHop::parse(&hop.to_string()), Ok(hop), "{text:?}");
                }
                (Err(message), Err(part)) => {
                    assert!(message.contains(part), "{text:?}: {message}");
                }
                (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn bracketed_name_is_a_name_not_an_ip() {
        let hop = NextHop::parse("[mx.partner.test]:2525").expect("bracketed name");
        assert_eq!(hop.host, NextHopHost::Name("mx.partner.test".into()));
        assert_eq!(hop.port, 2525);
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let p = DomainPattern("*.corp.example");
        assert!(p.matches("a.corp.example"));
        assert!(p.matches("b.a.corp.example"));
        assert!(!p.matches("corp.example"));
        assert!(!p.matches("xcorp.example"));
        let exact = DomainPattern("corp.example");
        assert!(exact.matches("corp.example"));
        assert!(!exact.matches("a.corp.example"));
    }
}
