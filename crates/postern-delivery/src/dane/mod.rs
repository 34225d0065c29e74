//! DANE for SMTP (RFC 7672, SPEC §10 item 2): what the DNS says about each
//! MX host, as the [`DaneInput`] of the requirement function, and the
//! verifier that applies the resulting requirement in the handshake.
//!
//! Layout: `dnssec` (answers with their DNSSEC status, per `[dns]
//! dnssec`), `verify` (DANE-EE and DANE-TA as a rustls verifier), and here
//! the lookup that joins them: for a domain routed by MX, the MX RRset's
//! status, each host's address status and its TLSA records at
//! `_<port>._tcp.<host>`.
//!
//! An MX or address answer only counts as authenticated when it also
//! contains what the route uses (the route's own lookups come from the
//! plain resolver): a spoofed plain answer never borrows the authenticity
//! of the real one. The TLSA lookup is made only where MX and addresses
//! are authenticated (RFC 7672 §2.2): elsewhere DANE cannot apply, and an
//! unsigned zone's broken TLSA name must not stop its mail.

pub mod dnssec;
pub mod verify;

use std::net::IpAddr;

use hickory_resolver::proto::rr::{RData, RecordType};
use postern_config::Settings;
use serde::Serialize;

use crate::policy::{Authenticity, DaneInput, Tlsa};
use crate::route::{Resolver, Target};
use dnssec::{Answer, QueryFailure, SecureDns};

/// What `postern probe` shows for one host: the TLSA name, the records and
/// their DNSSEC status, beside the input the requirement was formed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsaReport {
    /// `_25._tcp.mx.example.net`.
    pub name: String,
    /// Authenticated, unauthenticated, or the lookup failure.
    pub status: Result<Authenticity, String>,
    pub records: Vec<Tlsa>,
}

/// The TLSA owner name for `host` and `port` (RFC 6698 §3).
pub fn tlsa_name(host: &str, port: u16) -> String {
    format!("_{port}._tcp.{}", host.trim_end_matches('.'))
}

/// Whether DANE is looked up for `domain` at all: `tls.outbound.dane`, the
/// domain's `dane` switch, a resolver with DNSSEC, and a route by MX (a
/// static `next_hop` or an address literal has no MX to authenticate).
pub fn applies(settings: &Settings, resolver: &Resolver, domain: &str) -> bool {
    let entry = settings.domain_entry(domain);
    settings.tls.outbound.dane
        && resolver.secure().is_some()
        && entry.is_none_or(|e| e.dane && e.next_hop.is_none())
        && !domain.starts_with('[')
}

/// The DANE input for every target of `domain` (same order). With
/// `probe`, the TLSA records are looked up for every host, also where
/// they cannot apply, and reported.
pub async fn inputs(
    resolver: &Resolver,
    domain: &str,
    targets: &[Target],
    probe: bool,
) -> Vec<(DaneInput, Option<TlsaReport>)> {
    let Some(dns) = resolver.secure() else {
        return targets.iter().map(|_| (DaneInput::Off, None)).collect();
    };
    let mx = dns.query(domain, RecordType::MX).await;
    let mut out = Vec::with_capacity(targets.len());
    for target in targets {
        out.push(for_target(dns, domain, &mx, target, probe).await);
    }
    out
}

async fn for_target(
    dns: &SecureDns,
    domain: &str,
    mx: &Result<Answer, QueryFailure>,
    target: &Target,
    probe: bool,
) -> (DaneInput, Option<TlsaReport>) {
    let mx_status = match mx {
        Err(QueryFailure::Bogus(detail)) => {
            return (DaneInput::Failed(format!("MX of {domain}: {detail}")), None)
        }
        // The route's own MX lookup worked; a failing status query only
        // means DNSSEC cannot say anything (never a reason to stop mail).
        Err(QueryFailure::Failed(_)) => Authenticity::Unauthenticated,
        Ok(answer) => mx_authenticity(answer, domain, &target.host),
    };
    let addresses = match address_authenticity(dns, target).await {
        Ok(status) => status,
        Err(detail) => return (DaneInput::Failed(detail), None),
    };
    let name = tlsa_name(&target.host, target.port);
    let authenticated =
        mx_status == Authenticity::Authenticated && addresses == Authenticity::Authenticated;
    if !authenticated && !probe {
        let input = DaneInput::Looked {
            mx: mx_status,
            addresses,
            tlsa: Authenticity::Unauthenticated,
            records: Vec::new(),
        };
        return (input, None);
    }
    match dns.query(&name, RecordType::TLSA).await {
        Ok(answer) => {
            let records = tlsa_records(&answer.records);
            let report = TlsaReport {
                name,
                status: Ok(answer.authenticity),
                records: records.clone(),
            };
            let input = DaneInput::Looked {
                mx: mx_status,
                addresses,
                tlsa: answer.authenticity,
                records,
            };
            (input, Some(report))
        }
        Err(failure) => {
            let detail = format!("{name}: {failure}");
            let report = TlsaReport {
                name,
                status: Err(detail.clone()),
                records: Vec::new(),
            };
            // Where DANE cannot apply (only `probe` gets here), a failed
            // TLSA lookup changes nothing.
            let input = if authenticated {
                DaneInput::Failed(detail)
            } else {
                DaneInput::Looked {
                    mx: mx_status,
                    addresses,
                    tlsa: Authenticity::Unauthenticated,
                    records: Vec::new(),
                }
            };
            (input, Some(report))
        }
    }
}

/// Authenticated only when the authenticated answer names `host` (or, for
/// the implicit MX, proves there is no MX and `host` is the domain).
fn mx_authenticity(answer: &Answer, domain: &str, host: &str) -> Authenticity {
    if answer.authenticity != Authenticity::Authenticated {
        return Authenticity::Unauthenticated;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let exchanges: Vec<String> = answer
        .records
        .iter()
        .filter_map(|r| match r {
            RData::MX(mx) => Some(
                mx.exchange
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            ),
            _ => None,
        })
        .collect();
    let named = if exchanges.is_empty() {
        host == domain.trim_end_matches('.').to_ascii_lowercase()
    } else {
        exchanges.contains(&host)
    };
    if named {
        Authenticity::Authenticated
    } else {
        Authenticity::Unauthenticated
    }
}

/// The A and AAAA answers of the host: authenticated when every family
/// that has addresses is, and the route's addresses are all among them.
/// `Err` only for bogus answers.
async fn address_authenticity(dns: &SecureDns, target: &Target) -> Result<Authenticity, String> {
    let mut found: Vec<IpAddr> = Vec::new();
    let mut all_authenticated = true;
    for rtype in [RecordType::A, RecordType::AAAA] {
        match dns.query(&target.host, rtype).await {
            Ok(answer) => {
                if answer.records.is_empty() {
                    continue;
                }
                all_authenticated &= answer.authenticity == Authenticity::Authenticated;
                found.extend(answer.records.iter().filter_map(|r| match r {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                    _ => None,
                }));
            }
            Err(QueryFailure::Bogus(detail)) => {
                return Err(format!("{rtype} of {}: {detail}", target.host))
            }
            Err(QueryFailure::Failed(_)) => all_authenticated = false,
        }
    }
    let covered = !found.is_empty() && target.addrs.iter().all(|ip| found.contains(ip));
    Ok(if all_authenticated && covered {
        Authenticity::Authenticated
    } else {
        Authenticity::Unauthenticated
    })
}

fn tlsa_records(records: &[RData]) -> Vec<Tlsa> {
    let mut out: Vec<Tlsa> = records
        .iter()
        .filter_map(|r| match r {
            RData::TLSA(tlsa) => Some(Tlsa {
                usage: u8::from(tlsa.cert_usage),
                selector: u8::from(tlsa.selector),
                matching: u8::from(tlsa.matching),
                data: tlsa.cert_data.clone(),
            }),
            _ => None,
        })
        .collect();
    // A stable order, so equal RRsets make equal requirements (connection
    // reuse compares them).
    out.sort_by(|a, b| {
        (a.usage, a.selector, a.matching, &a.data).cmp(&(b.usage, b.selector, b.matching, &b.data))
    });
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::rdata::MX;
    use hickory_resolver::proto::rr::Name;

    fn mx_answer(authenticity: Authenticity, hosts: &[&str]) -> Answer {
        Answer {
            authenticity,
            records: hosts
                .iter()
                .map(|h| {
                    RData::MX(MX::new(
                        10,
                        Name::from_ascii(format!("{h}.")).expect("name"),
                    ))
                })
                .collect(),
        }
    }

    #[test]
    fn mx_must_name_the_host() {
        use Authenticity::{Authenticated, Unauthenticated};
        let signed = mx_answer(Authenticated, &["mx1.partner.test"]);
        assert_eq!(
            mx_authenticity(&signed, "partner.test", "MX1.partner.test."),
            Authenticated
        );
        assert_eq!(
            mx_authenticity(&signed, "partner.test", "mx.attacker.test"),
            Unauthenticated
        );
        let unsigned = mx_answer(Unauthenticated, &["mx1.partner.test"]);
        assert_eq!(
            mx_authenticity(&unsigned, "partner.test", "mx1.partner.test"),
            Unauthenticated
        );
        // Implicit MX: an authenticated denial and the domain itself.
        let none = mx_answer(Authenticated, &[]);
        assert_eq!(
            mx_authenticity(&none, "partner.test", "partner.test"),
            Authenticated
        );
        assert_eq!(
            mx_authenticity(&none, "partner.test", "other.test"),
            Unauthenticated
        );
    }

    #[test]
    fn tlsa_owner_names() {
        assert_eq!(
            tlsa_name("mx1.partner.test.", 25),
            "_25._tcp.mx1.partner.test"
        );
        assert_eq!(tlsa_name("mx", 2526), "_2526._tcp.mx");
    }
}
