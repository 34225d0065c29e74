//! DANE for SMTP (RFC 7672, SPEC §10 item 2): what the DNS says about each
//! MX host, as the [`DaneInput`] of the requirement function, and the
//! verifier that applies the resulting requirement in the handshake.
//!
//! Layout: `dnssec` (answers with their DNSSEC status, per `[dns]
//! dnssec`), `verify` (DANE-EE and DANE-TA as a rustls verifier), and here
//! the TLSA lookup at `_<port>._tcp.<host>` for each host of a domain
//! routed by MX.
//!
//! Whether the MX RRset and the host's addresses were authenticated is the
//! route's fact ([`Target::dnssec`], found by [`crate::route`]), read here,
//! not looked up again. The TLSA lookup is made only where MX and
//! addresses are authenticated (RFC 7672 §2.2): elsewhere DANE cannot
//! apply, and an unsigned zone's broken TLSA name must not stop its mail.

pub mod dnssec;
pub mod verify;

use hickory_resolver::proto::rr::{RData, RecordType};
use postern_config::Settings;
use serde::Serialize;

use crate::policy::{Authenticity, DaneInput, RouteAuth, Tlsa};
use crate::route::{Resolver, Target};
use dnssec::SecureDns;

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

/// The DANE input for every target (same order). With `probe`, the TLSA
/// records are looked up for every host, also where they cannot apply,
/// and reported.
pub async fn inputs(
    resolver: &Resolver,
    targets: &[Target],
    probe: bool,
) -> Vec<(DaneInput, Option<TlsaReport>)> {
    let Some(dns) = resolver.secure() else {
        return targets.iter().map(|_| (DaneInput::Off, None)).collect();
    };
    let mut out = Vec::with_capacity(targets.len());
    for target in targets {
        out.push(for_target(dns, target, probe).await);
    }
    out
}

async fn for_target(
    dns: &SecureDns,
    target: &Target,
    probe: bool,
) -> (DaneInput, Option<TlsaReport>) {
    let (mx_status, addresses) = match &target.dnssec {
        RouteAuth::Looked { mx, addresses } => (*mx, *addresses),
        RouteAuth::Bogus(detail) => return (DaneInput::Failed(detail.clone()), None),
        // A failed status query only means DNSSEC cannot say anything
        // (never a reason to stop mail); a route not found by MX has
        // nothing to authenticate (`applies` keeps DANE away from those).
        RouteAuth::MxUnknown(_) | RouteAuth::NotLooked => {
            (Authenticity::Unauthenticated, Authenticity::Unauthenticated)
        }
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

    #[test]
    fn tlsa_owner_names() {
        assert_eq!(
            tlsa_name("mx1.partner.test.", 25),
            "_25._tcp.mx1.partner.test"
        );
        assert_eq!(tlsa_name("mx", 2526), "_2526._tcp.mx");
    }
}
