//! Human- and machine-readable descriptions of certificates.

use std::fmt::Write as _;
use std::net::IpAddr;

use aws_lc_rs::signature;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;
use x509_parser::public_key::PublicKey;
use x509_parser::time::ASN1Time;

use crate::pem::{parse_certificate, parse_chain};
use crate::TlsError;

/// What `postern cert show` and the admin UI tell about a certificate (the
/// first one of an entry's chain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// Subject distinguished name, RFC 4514 style: `CN=mx.example.test, O=Example`.
    pub subject: String,
    /// Issuer distinguished name, same format.
    pub issuer: String,
    /// Subject alternative names: DNS names and IP addresses as plain text,
    /// other kinds prefixed (`email:`, `URI:`).
    pub sans: Vec<String>,
    /// `RSA`, `RSA-PSS`, `ECDSA P-256`, `ECDSA P-384`, `ECDSA P-521`,
    /// `Ed25519`, `Ed448`, or `unknown (OID)`.
    pub key_type: String,
    /// Key size in bits (modulus size for RSA, curve size for ECDSA); 0 if unknown.
    pub key_bits: u32,
    /// OpenSSL name of the signature algorithm: `sha256WithRSAEncryption`,
    /// `ecdsa-with-SHA256`, ...; the dotted OID if unknown.
    pub signature_algorithm: String,
    /// Start of validity, RFC 3339 (UTC).
    pub not_before: String,
    /// End of validity, RFC 3339 (UTC).
    pub not_after: String,
    /// SHA-256 of the DER certificate, upper-case hex pairs joined by `:`.
    pub sha256_fingerprint: String,
    /// basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// Subject equals issuer and the certificate's signature verifies with its own key.
    pub self_signed: bool,
    /// Number of certificates in the entry's chain.
    pub chain_len: usize,
}

/// Describe the first certificate of a PEM chain.
pub fn describe(chain_pem: &str) -> Result<CertInfo, TlsError> {
    let chain = parse_chain(chain_pem)?;
    let parsed = parse_certificate(&chain[0], 1)?;
    Ok(describe_parsed(&chain[0], &parsed, chain.len()))
}

/// Describe the first certificate of a DER chain, e.g. a peer's chain from
/// `conn.peer_certificates()`.
pub fn describe_der(chain: &[CertificateDer<'_>]) -> Result<CertInfo, TlsError> {
    let first = chain.first().ok_or(TlsError::NoCertificate)?;
    let parsed = parse_certificate(first, 1)?;
    Ok(describe_parsed(first, &parsed, chain.len()))
}

/// Describe an already parsed certificate (also used for peer certificates).
pub(crate) fn describe_parsed(
    der: &CertificateDer<'_>,
    cert: &X509Certificate<'_>,
    chain_len: usize,
) -> CertInfo {
    let (key_type, key_bits) = key_type(cert);
    CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans: sans(cert),
        key_type,
        key_bits,
        signature_algorithm: signature_name(&cert.signature_algorithm.algorithm.to_id_string())
            .map(str::to_string)
            .unwrap_or_else(|| cert.signature_algorithm.algorithm.to_id_string()),
        not_before: rfc3339(cert.validity().not_before),
        not_after: rfc3339(cert.validity().not_after),
        sha256_fingerprint: fingerprint(der.as_ref()),
        is_ca: cert.is_ca(),
        self_signed: self_signed(cert),
        chain_len,
    }
}

/// `AA:BB:...` SHA-256 fingerprint of DER bytes.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = String::with_capacity(digest.as_ref().len() * 3);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{byte:02X}");
    }
    out
}

fn rfc3339(t: ASN1Time) -> String {
    t.to_datetime()
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_string()),
            GeneralName::IPAddress(bytes) => ip_from_bytes(bytes)
                .map(|ip| ip.to_string())
                .or_else(|| Some(format!("IP:{}", hex(bytes)))),
            GeneralName::RFC822Name(mail) => Some(format!("email:{mail}")),
            GeneralName::URI(uri) => Some(format!("URI:{uri}")),
            _ => None,
        })
        .collect()
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_ED448: &str = "1.3.101.113";

fn key_type(cert: &X509Certificate<'_>) -> (String, u32) {
    let spki = cert.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        OID_RSA | OID_RSA_PSS => {
            let name = if alg == OID_RSA { "RSA" } else { "RSA-PSS" };
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => significant_bits(rsa.modulus),
                _ => 0,
            };
            (name.to_string(), bits)
        }
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| oid.to_id_string());
            match curve.as_deref() {
                Some("1.2.840.10045.3.1.7") => ("ECDSA P-256".into(), 256),
                Some("1.3.132.0.34") => ("ECDSA P-384".into(), 384),
                Some("1.3.132.0.35") => ("ECDSA P-521".into(), 521),
                Some("1.3.132.0.10") => ("ECDSA secp256k1".into(), 256),
                Some(other) => (format!("ECDSA (curve {other})"), 0),
                None => ("ECDSA".into(), 0),
            }
        }
        OID_ED25519 => ("Ed25519".into(), 256),
        OID_ED448 => ("Ed448".into(), 456),
        other => (format!("unknown ({other})"), 0),
    }
}

/// Bit length of a big-endian unsigned integer.
fn significant_bits(bytes: &[u8]) -> u32 {
    let mut iter = bytes.iter().skip_while(|b| **b == 0);
    let Some(first) = iter.next() else {
        return 0;
    };
    let rest = u32::try_from(iter.count()).unwrap_or(0);
    rest * 8 + (8 - first.leading_zeros())
}

/// OpenSSL's short names for the usual certificate signature algorithms.
fn signature_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption",
        "1.2.840.113549.1.1.5" => "sha1WithRSAEncryption",
        "1.2.840.113549.1.1.14" => "sha224WithRSAEncryption",
        "1.2.840.113549.1.1.11" => "sha256WithRSAEncryption",
        "1.2.840.113549.1.1.12" => "sha384WithRSAEncryption",
        "1.2.840.113549.1.1.13" => "sha512WithRSAEncryption",
        "1.2.840.113549.1.1.10" => "rsassaPss",
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1",
        "1.2.840.10045.4.3.1" => "ecdsa-with-SHA224",
        "1.2.840.10045.4.3.2" => "ecdsa-with-SHA256",
        "1.2.840.10045.4.3.3" => "ecdsa-with-SHA384",
        "1.2.840.10045.4.3.4" => "ecdsa-with-SHA512",
        OID_ED25519 => "ED25519",
        OID_ED448 => "ED448",
        _ => return None,
    })
}

/// Subject equals issuer, and the signature verifies with the certificate's
/// own key where the algorithm is one aws-lc-rs can check (for others, the
/// name comparison alone decides).
fn self_signed(cert: &X509Certificate<'_>) -> bool {
    if cert.subject().as_raw() != cert.issuer().as_raw() {
        return false;
    }
    let spki = cert.public_key();
    let key = spki.subject_public_key.data.as_ref();
    let sig_oid = cert.signature_algorithm.algorithm.to_id_string();
    let key_oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string())
        .unwrap_or_default();
    let alg: &dyn signature::VerificationAlgorithm = match (sig_oid.as_str(), key_oid.as_str()) {
        ("1.2.840.113549.1.1.11", OID_RSA) => &signature::RSA_PKCS1_2048_8192_SHA256,
        ("1.2.840.113549.1.1.12", OID_RSA) => &signature::RSA_PKCS1_2048_8192_SHA384,
        ("1.2.840.113549.1.1.13", OID_RSA) => &signature::RSA_PKCS1_2048_8192_SHA512,
        ("1.2.840.10045.4.3.2", OID_EC) if curve == "1.2.840.10045.3.1.7" => {
            &signature::ECDSA_P256_SHA256_ASN1
        }
        ("1.2.840.10045.4.3.3", OID_EC) if curve == "1.2.840.10045.3.1.7" => {
            &signature::ECDSA_P256_SHA384_ASN1
        }
        ("1.2.840.10045.4.3.2", OID_EC) if curve == "1.3.132.0.34" => {
            &signature::ECDSA_P384_SHA256_ASN1
        }
        ("1.2.840.10045.4.3.3", OID_EC) if curve == "1.3.132.0.34" => {
            &signature::ECDSA_P384_SHA384_ASN1
        }
        ("1.2.840.10045.4.3.4", OID_EC) if curve == "1.3.132.0.35" => {
            &signature::ECDSA_P521_SHA512_ASN1
        }
        (OID_ED25519, OID_ED25519) => &signature::ED25519,
        _ => return true,
    };
    signature::UnparsedPublicKey::new(alg, key)
        .verify(
            cert.tbs_certificate.as_ref(),
            cert.signature_value.data.as_ref(),
        )
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lengths() {
        assert_eq!(significant_bits(&[]), 0);
        assert_eq!(significant_bits(&[0, 0]), 0);
        assert_eq!(significant_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(significant_bits(&[0x01, 0xff]), 9);
    }

    #[test]
    fn fingerprint_format() {
        let fp = fingerprint(b"abc");
        assert_eq!(
            fp,
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:\
             B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }
}
