//! Key generation and self-signed certificates for the certificate table.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, RsaKeySize,
    SanType, SerialNumber, SignatureAlgorithm,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// Key type and size of a generated certificate (`--key` of `postern cert generate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyKind {
    #[serde(rename = "rsa2048")]
    Rsa2048,
    #[serde(rename = "rsa3072")]
    Rsa3072,
    #[serde(rename = "rsa4096")]
    Rsa4096,
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    #[serde(rename = "ecdsa-p384")]
    EcdsaP384,
}

impl KeyKind {
    /// Every kind, in the order the CLI help lists them.
    pub const ALL: [KeyKind; 5] = [
        KeyKind::Rsa4096,
        KeyKind::Rsa3072,
        KeyKind::Rsa2048,
        KeyKind::EcdsaP256,
        KeyKind::EcdsaP384,
    ];

    /// The name used on the command line and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Rsa2048 => "rsa2048",
            KeyKind::Rsa3072 => "rsa3072",
            KeyKind::Rsa4096 => "rsa4096",
            KeyKind::EcdsaP256 => "ecdsa-p256",
            KeyKind::EcdsaP384 => "ecdsa-p384",
        }
    }

    /// Signature algorithm of the self-signed certificate.
    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyKind::Rsa2048 | KeyKind::Rsa3072 | KeyKind::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }

    fn generate_key(self) -> Result<KeyPair, rcgen::Error> {
        let alg = self.signature_algorithm();
        match self {
            KeyKind::Rsa2048 => KeyPair::generate_rsa_for(alg, RsaKeySize::_2048),
            KeyKind::Rsa3072 => KeyPair::generate_rsa_for(alg, RsaKeySize::_3072),
            KeyKind::Rsa4096 => KeyPair::generate_rsa_for(alg, RsaKeySize::_4096),
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => KeyPair::generate_for(alg),
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyKind {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim().to_ascii_lowercase();
        KeyKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == wanted)
            .ok_or_else(|| TlsError::UnknownKeyKind(s.to_string()))
    }
}

/// A freshly generated certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Generated {
    /// The self-signed certificate (a chain of one).
    pub chain_pem: String,
    /// The private key, PKCS#8 (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key, not even in debug logs.
        f.debug_struct("Generated")
            .field("chain_pem", &self.chain_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Generate a key of `kind` and a self-signed certificate for it.
///
/// Subject CN = `cn`; the subject alternative names are `sans` (IP literals
/// become IP SANs, everything else DNS names), or `cn` alone when `sans` is
/// empty. The signature is sha256WithRSAEncryption for RSA keys,
/// ecdsa-with-SHA256 for P-256 and ecdsa-with-SHA384 for P-384. Valid from one
/// day ago (tolerating clock skew) for ten years, random 127-bit serial, not
/// a CA, usable for TLS server and client authentication.
pub fn generate_self_signed(
    kind: KeyKind,
    cn: &str,
    sans: &[String],
) -> Result<Generated, TlsError> {
    let cn = cn.trim();
    if cn.is_empty() {
        return Err(TlsError::InvalidName {
            name: String::new(),
            detail: "the common name (CN) must not be empty".into(),
        });
    }
    if cn.len() > 64 {
        return Err(TlsError::InvalidName {
            name: cn.to_string(),
            detail: "a common name is at most 64 characters (RFC 5280)".into(),
        });
    }
    if let Err(detail) = crate::check_name_chars(cn) {
        return Err(TlsError::InvalidName {
            // Escaped: the message must not itself carry the character.
            name: cn.escape_debug().to_string(),
            detail: format!("the common name (CN) {detail}"),
        });
    }
    let names: Vec<&str> = if sans.is_empty() {
        vec![cn]
    } else {
        sans.iter().map(|s| s.trim()).collect()
    };
    let subject_alt_names = names
        .iter()
        .map(|name| san(name))
        .collect::<Result<Vec<_>, _>>()?;

    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.subject_alt_names = subject_alt_names;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(3652);
    params.serial_number = Some(random_serial()?);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = match kind {
        KeyKind::Rsa2048 | KeyKind::Rsa3072 | KeyKind::Rsa4096 => vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ],
        KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => vec![KeyUsagePurpose::DigitalSignature],
    };
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];

    let key = kind
        .generate_key()
        .map_err(|e| TlsError::Generate(format!("{kind} key: {e}")))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok(Generated {
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// One subject alternative name: an IP literal or a DNS name.
fn san(name: &str) -> Result<SanType, TlsError> {
    let invalid = |detail: &str| TlsError::InvalidName {
        name: name.to_string(),
        detail: detail.to_string(),
    };
    // "[192.0.2.1]" is how SMTP writes address literals; accept it too.
    let literal = name
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    check_dns_name(name).map_err(invalid)?;
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    rcgen::string::Ia5String::try_from(name)
        .map(SanType::DnsName)
        .map_err(|e| invalid(&e.to_string()))
}

/// A host name as it may appear in a DNS SAN: LDH labels (underscores
/// tolerated, as some internal host names have them), an optional leading
/// `*.` wildcard label, at most 253 characters.
fn check_dns_name(name: &str) -> Result<(), &'static str> {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err("a DNS name must not be empty");
    }
    if name.len() > 253 {
        return Err("a DNS name is at most 253 characters");
    }
    let rest = name.strip_prefix("*.").unwrap_or(name);
    for label in rest.split('.') {
        if label.is_empty() {
            return Err("a DNS name has no empty labels");
        }
        if label.len() > 63 {
            return Err("a DNS label is at most 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(
                "a DNS name holds only letters, digits, '-' and '.' (use punycode for IDNs)",
            );
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a DNS label neither starts nor ends with '-'");
        }
    }
    Ok(())
}

/// A positive serial number of 16 bytes without a leading zero byte, so its
/// DER encoding is minimal (RFC 5280 §4.1.2.2 allows up to 20 octets).
fn random_serial() -> Result<SerialNumber, TlsError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| TlsError::Generate("the system random generator failed".into()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{describe, validate_entry};

    #[test]
    fn key_kind_names_round_trip() {
        for kind in KeyKind::ALL {
            assert_eq!(kind.as_str().parse::<KeyKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!("RSA4096".parse::<KeyKind>(), Ok(KeyKind::Rsa4096));
        let err = "rsa1024"
            .parse::<KeyKind>()
            .expect_err("must be refused")
            .to_string();
        assert!(err.contains("rsa1024"), "{err}");
        for allowed in ["rsa2048", "rsa3072", "rsa4096", "ecdsa-p256", "ecdsa-p384"] {
            assert!(err.contains(allowed), "{err}");
        }
    }

    #[test]
    fn generates_every_kind_with_the_right_algorithms() {
        let cases = [
            (KeyKind::Rsa2048, "RSA", 2048, "sha256WithRSAEncryption"),
            (KeyKind::Rsa3072, "RSA", 3072, "sha256WithRSAEncryption"),
            (KeyKind::Rsa4096, "RSA", 4096, "sha256WithRSAEncryption"),
            (KeyKind::EcdsaP256, "ECDSA P-256", 256, "ecdsa-with-SHA256"),
            (KeyKind::EcdsaP384, "ECDSA P-384", 384, "ecdsa-with-SHA384"),
        ];
        for (kind, key_type, bits, sig) in cases {
            let generated = generate_self_signed(kind, "mx.example.test", &[]).expect("generate");
            assert!(generated.key_pem.contains("-----BEGIN PRIVATE KEY-----"));
            let info = describe(&generated.chain_pem).expect("describe");
            assert_eq!(info.key_type, key_type, "{kind}");
            assert_eq!(info.key_bits, bits, "{kind}");
            assert_eq!(info.signature_algorithm, sig, "{kind}");
            assert!(info.self_signed, "{kind}");
            assert!(!info.is_ca, "{kind}");
            assert_eq!(info.subject, "CN=mx.example.test");
            assert_eq!(info.issuer, "CN=mx.example.test");
            assert_eq!(info.sans, vec!["mx.example.test".to_string()]);
            assert_eq!(info.chain_len, 1);
            // The generated pair passes the import check.
            let checked =
                validate_entry(&generated.chain_pem, Some(&generated.key_pem)).expect("valid");
            assert_eq!(checked.sha256_fingerprint, info.sha256_fingerprint);
        }
    }

    #[test]
    fn validity_is_ten_years_from_yesterday() {
        let generated = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        let info = describe(&generated.chain_pem).expect("describe");
        let fmt = time::format_description::well_known::Rfc3339;
        let nb = OffsetDateTime::parse(&info.not_before, &fmt).expect("not_before");
        let na = OffsetDateTime::parse(&info.not_after, &fmt).expect("not_after");
        let now = OffsetDateTime::now_utc();
        assert!(nb < now - Duration::hours(23) && nb > now - Duration::hours(25));
        assert!((na - now).whole_days() >= 3651 && (na - now).whole_days() <= 3652);
    }

    #[test]
    fn sans_take_dns_names_and_ip_literals() {
        let sans = vec![
            "mx.example.test".to_string(),
            "192.0.2.7".to_string(),
            "[2001:db8::1]".to_string(),
            "*.corp.example".to_string(),
        ];
        let generated = generate_self_signed(KeyKind::EcdsaP256, "mx", &sans).expect("gen");
        let info = describe(&generated.chain_pem).expect("describe");
        assert_eq!(
            info.sans,
            vec![
                "mx.example.test",
                "192.0.2.7",
                "2001:db8::1",
                "*.corp.example"
            ]
        );
        assert_eq!(info.subject, "CN=mx");
    }

    #[test]
    fn serial_numbers_differ() {
        let a = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        let b = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        assert_ne!(a.chain_pem, b.chain_pem);
    }

    #[test]
    fn refuses_bad_names() {
        for bad in ["", "two words", "a..b", "-a.test", "ex\u{e4}mple.test"] {
            let err = generate_self_signed(KeyKind::EcdsaP256, bad, &[]);
            assert!(
                matches!(err, Err(TlsError::InvalidName { .. })),
                "{bad:?}: {err:?}"
            );
        }
        let err = generate_self_signed(KeyKind::EcdsaP256, "ok.test", &["bad name".into()]);
        assert!(matches!(err, Err(TlsError::InvalidName { .. })));
    }

    #[test]
    fn generated_debug_hides_the_key() {
        let generated = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        let debug = format!("{generated:?}");
        assert!(!debug.contains("PRIVATE KEY"));
    }
}
