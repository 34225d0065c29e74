//! `postern cert tlsa NAME [--port 25]`: the TLSA records to publish so
//! that others can use DANE towards Postern (SPEC §10), and the DANE part
//! of `postern probe`.

use std::fmt::Write as _;

use anyhow::{anyhow, Result};
use postern_delivery::dane::tlsa_name;
use postern_delivery::policy::{Authenticity, DaneInput};
use postern_delivery::ProbedHost;
use postern_tls::{parse_chain, tlsa_association, TlsaMatching, TlsaSelector};

use crate::context::Context;

/// The records for the certificate entry `name`, one per line: `3 1 1`
/// (SHA-256 of the leaf's public key, which survives a renewal with the
/// same key) and, when the entry holds the issuer too, `2 1 1` for it.
pub fn records(chain_pem: &str, host: &str, port: u16) -> Result<String> {
    let chain = parse_chain(chain_pem).map_err(|e| anyhow!("{e}"))?;
    let owner = format!("{}.", tlsa_name(host, port));
    let mut out = String::new();
    for (usage, cert) in [(3u8, chain.first()), (2u8, chain.get(1))] {
        let Some(cert) = cert else { continue };
        let data = tlsa_association(cert, TlsaSelector::PublicKey, TlsaMatching::Sha256)
            .map_err(|e| anyhow!("{e}"))?;
        let _ = writeln!(out, "{owner} IN TLSA {usage} 1 1 {}", hex(&data));
    }
    Ok(out)
}

pub fn tlsa(ctx: &Context, name: &str, port: u16, host: Option<&str>) -> Result<()> {
    let record = ctx
        .store
        .certificates()?
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| anyhow!("no certificate entry named \"{name}\""))?;
    let host = host.unwrap_or(&ctx.hostname);
    print!("{}", records(&record.chain_pem, host, port)?);
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn status(authenticity: Authenticity) -> &'static str {
    match authenticity {
        Authenticity::Authenticated => "authenticated (DNSSEC)",
        Authenticity::Unauthenticated => "unauthenticated",
    }
}

/// `postern probe`: the TLSA records of one host with their DNSSEC status,
/// and what DANE made of them.
pub fn print_probe_dane(host: &ProbedHost) {
    match &host.dane {
        DaneInput::Off => println!("  DANE:            off for this domain"),
        DaneInput::Failed(reason) => println!("  DANE:            lookup failed: {reason}"),
        DaneInput::Looked { mx, addresses, .. } => {
            println!("  MX answer:       {}", status(*mx));
            println!("  address answers: {}", status(*addresses));
        }
    }
    if let Some(report) = &host.tlsa {
        match &report.status {
            Ok(authenticity) if report.records.is_empty() => {
                println!("  TLSA {}: none ({})", report.name, status(*authenticity));
            }
            Ok(authenticity) => {
                println!("  TLSA {}: {}", report.name, status(*authenticity));
                for r in &report.records {
                    let usable = if r.is_usable() { "" } else { " (unusable)" };
                    println!(
                        "    {} {} {} {}{usable}",
                        r.usage,
                        r.selector,
                        r.matching,
                        hex(&r.data)
                    );
                }
            }
            Err(reason) => println!("  TLSA {}: lookup failed: {reason}", report.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_for_a_chain() {
        let generated = postern_tls::generate_self_signed(
            postern_tls::KeyKind::EcdsaP256,
            "mx.example.test",
            &[],
        )
        .expect("cert");
        let one = records(&generated.chain_pem, "mx.example.test", 25).expect("records");
        let lines: Vec<&str> = one.lines().collect();
        assert_eq!(lines.len(), 1, "{one}");
        assert!(
            lines[0].starts_with("_25._tcp.mx.example.test. IN TLSA 3 1 1 "),
            "{one}"
        );
        assert_eq!(lines[0].rsplit(' ').next().map(str::len), Some(64));
        // Leaf and issuer: both records, the issuer's as DANE-TA.
        let two = format!("{}{}", generated.chain_pem, generated.chain_pem);
        let both = records(&two, "mx.example.test", 2525).expect("records");
        let lines: Vec<&str> = both.lines().collect();
        assert_eq!(lines.len(), 2, "{both}");
        assert!(lines[1].starts_with("_2525._tcp.mx.example.test. IN TLSA 2 1 1 "));
    }
}
