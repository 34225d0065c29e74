//! Whether the answers a route was built from were DNSSEC-authenticated
//! (SPEC §10): the MX RRset that named each host, and the host's address
//! records. One fact, found here once per route, read by DANE (which only
//! looks for TLSA records behind an authenticated MX and addresses, RFC
//! 7672 §2.2) and by REQUIRETLS (which only uses an MX the lookup
//! authenticated, RFC 8689 §4.2.1).
//!
//! The route's own lookups come from the plain resolver; the status comes
//! from the DNSSEC-aware queries of `[dns] dnssec` ([`SecureDns`]). An
//! answer only counts as authenticated when it also contains what the
//! route uses, so a spoofed plain answer never borrows the authenticity of
//! the real one.

use std::net::IpAddr;

use hickory_resolver::proto::rr::{RData, RecordType};

use super::Target;
use crate::dane::dnssec::{Answer, QueryFailure, SecureDns};
use crate::policy::{Authenticity, RouteAuth};

/// Fill in [`Target::dnssec`] for the targets of `domain`, found by MX
/// lookup (or the implicit MX).
pub(super) async fn authenticate(dns: &SecureDns, domain: &str, targets: &mut [Target]) {
    let mx = dns.query(domain, RecordType::MX).await;
    for target in targets {
        target.dnssec = for_target(dns, domain, &mx, target).await;
    }
}

async fn for_target(
    dns: &SecureDns,
    domain: &str,
    mx: &Result<Answer, QueryFailure>,
    target: &Target,
) -> RouteAuth {
    let mx = match mx {
        Err(QueryFailure::Bogus(detail)) => {
            return RouteAuth::Bogus(format!("MX of {domain}: {detail}"))
        }
        // The route's own MX lookup worked; the status query did not.
        Err(QueryFailure::Failed(detail)) => {
            return RouteAuth::MxUnknown(format!("DNSSEC status of the MX of {domain}: {detail}"))
        }
        Ok(answer) => mx_authenticity(answer, domain, &target.host),
    };
    match address_authenticity(dns, target).await {
        Ok(addresses) => RouteAuth::Looked { mx, addresses },
        Err(detail) => RouteAuth::Bogus(detail),
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
}
