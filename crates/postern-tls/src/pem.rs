//! PEM parsing and the checks run before a certificate table entry is stored.

use rustls_pki_types::pem::{self, PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::describe::{describe_parsed, CertInfo};
use crate::TlsError;

/// Every PEM section of `text`, with its kind; unknown kinds are skipped.
fn sections(text: &str, file: &'static str) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::MalformedPem {
            file,
            detail: pem_error(&e),
        })
}

fn pem_error(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a block is not closed (missing \"{}\")",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => {
            format!("malformed BEGIN line \"{}\"", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(detail) => format!("bad base64 data ({detail})"),
        other => other.to_string(),
    }
}

/// The certificates of a PEM chain, in file order (server certificate
/// first). Other PEM blocks are ignored; see [`validate_entry`] for the full
/// import check.
pub fn parse_chain(chain_pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = sections(chain_pem, "certificate")?
        .into_iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der))
        .collect();
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    for (i, der) in chain.iter().enumerate() {
        parse_certificate(der, i + 1)?;
    }
    Ok(chain)
}

/// Parse one DER certificate; `index` (1-based) names it in the error.
pub(crate) fn parse_certificate<'a>(
    der: &'a CertificateDer<'_>,
    index: usize,
) -> Result<X509Certificate<'a>, TlsError> {
    match X509Certificate::from_der(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(TlsError::BadCertificate {
            index,
            detail: "trailing data after the certificate".into(),
        }),
        Err(e) => Err(TlsError::BadCertificate {
            index,
            detail: e.to_string(),
        }),
    }
}

/// The single private key of a PEM key file: PKCS#8 (`PRIVATE KEY`),
/// PKCS#1 (`RSA PRIVATE KEY`) or SEC1 (`EC PRIVATE KEY`).
///
/// Only the encoding is checked here; [`validate_entry`] also checks that
/// the key is usable and matches its certificate.
pub fn parse_key(key_pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    if key_pem.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || key_pem.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(TlsError::EncryptedKey);
    }
    let mut keys = sections(key_pem, "key")?
        .into_iter()
        .filter_map(|(kind, der)| PrivateKeyDer::from_pem(kind, der));
    let key = keys.next().ok_or(TlsError::NoPrivateKey)?;
    if keys.next().is_some() {
        return Err(TlsError::MultipleKeys);
    }
    Ok(key)
}

/// Check a certificate table entry before it is stored, and describe it.
///
/// - `chain_pem` must hold at least one parsable certificate. With a key it
///   is the chain served to peers: server certificate first, then each
///   issuer. Without a key it is a CA / trust anchor entry (one or more
///   certificates), which must not carry a private key.
/// - `key_pem`, when given, must hold exactly one unencrypted private key of
///   a supported type (RSA, ECDSA P-256/P-384/P-521, Ed25519) whose public
///   key is the one in the first certificate.
///
/// Returns the description of the first certificate. Expired certificates
/// are accepted (the description shows `not_after`).
pub fn validate_entry(chain_pem: &str, key_pem: Option<&str>) -> Result<CertInfo, TlsError> {
    let chain = parse_chain(chain_pem)?;
    let parsed = chain
        .iter()
        .enumerate()
        .map(|(i, der)| parse_certificate(der, i + 1))
        .collect::<Result<Vec<_>, _>>()?;
    let info = describe_parsed(&chain[0], &parsed[0], chain.len());

    let Some(key_pem) = key_pem else {
        let key_in_chain = sections(chain_pem, "certificate")?
            .iter()
            .any(|(kind, _)| is_private_key(*kind))
            || chain_pem.contains("PRIVATE KEY-----");
        if key_in_chain {
            return Err(TlsError::KeyInCertificateFile);
        }
        return Ok(info);
    };

    let key = parse_key(key_pem)?;
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key).map_err(|_| {
        TlsError::UnsupportedKey(
            "not an RSA, ECDSA (P-256, P-384, P-521) or Ed25519 key, or a malformed one".into(),
        )
    })?;
    let key_spki = signing_key
        .public_key()
        .ok_or_else(|| TlsError::UnsupportedKey("its public key cannot be derived".into()))?;
    if !same_public_key(key_spki.as_ref(), parsed[0].public_key()) {
        return Err(TlsError::KeyMismatch);
    }

    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            return Err(TlsError::ChainOrder {
                index: i + 1,
                next: i + 2,
            });
        }
    }
    Ok(info)
}

fn is_private_key(kind: SectionKind) -> bool {
    matches!(
        kind,
        SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey
    )
}

/// Compare the key pair's SubjectPublicKeyInfo with the certificate's: same
/// algorithm, same parameters where both state them (the curve), same key.
/// Comparing fields rather than bytes tolerates an RSA AlgorithmIdentifier
/// written without its NULL parameters.
fn same_public_key(key_spki_der: &[u8], cert_spki: &SubjectPublicKeyInfo<'_>) -> bool {
    let Ok((_, key_spki)) = SubjectPublicKeyInfo::from_der(key_spki_der) else {
        return false;
    };
    if key_spki.algorithm.algorithm != cert_spki.algorithm.algorithm {
        return false;
    }
    let params_match = match (
        key_spki.algorithm.parameters.as_ref(),
        cert_spki.algorithm.parameters.as_ref(),
    ) {
        (Some(a), Some(b)) => a.header.tag() == b.header.tag() && a.as_bytes() == b.as_bytes(),
        _ => true,
    };
    params_match && key_spki.subject_public_key.data == cert_spki.subject_public_key.data
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate_self_signed, KeyKind};

    #[test]
    fn refuses_garbage() {
        assert_eq!(validate_entry("", None), Err(TlsError::NoCertificate));
        assert_eq!(
            validate_entry("hello world\n", None),
            Err(TlsError::NoCertificate)
        );
        let not_pem = "-----BEGIN CERTIFICATE-----\n!!!notbase64!!!\n-----END CERTIFICATE-----\n";
        let err = validate_entry(not_pem, None).expect_err("must be refused");
        assert!(
            matches!(
                err,
                TlsError::MalformedPem {
                    file: "certificate",
                    ..
                }
            ),
            "{err:?}"
        );
        let unclosed = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        let err = validate_entry(unclosed, None).expect_err("must be refused");
        assert!(err.to_string().contains("not closed"), "{err}");
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let err = validate_entry(not_der, None).expect_err("must be refused");
        assert!(
            matches!(err, TlsError::BadCertificate { index: 1, .. }),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("certificate 1 of the chain cannot be parsed"));
    }

    #[test]
    fn names_the_bad_certificate_in_a_chain() {
        let good = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        let not_der = "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n";
        let chain = format!("{}{not_der}", good.chain_pem);
        let err = validate_entry(&chain, None).expect_err("must be refused");
        assert!(
            matches!(err, TlsError::BadCertificate { index: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn refuses_a_key_that_does_not_match() {
        let a = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        let b = generate_self_signed(KeyKind::EcdsaP256, "b.test", &[]).expect("gen");
        let err = validate_entry(&a.chain_pem, Some(&b.key_pem)).expect_err("must be refused");
        assert_eq!(err, TlsError::KeyMismatch);
        assert_eq!(
            err.to_string(),
            "the private key does not match the certificate"
        );
        let err = validate_entry(&b.chain_pem, Some(&a.key_pem)).expect_err("must be refused");
        assert_eq!(err, TlsError::KeyMismatch);
        // Different key types do not match either.
        let c = generate_self_signed(KeyKind::EcdsaP384, "c.test", &[]).expect("gen");
        let err = validate_entry(&a.chain_pem, Some(&c.key_pem)).expect_err("must be refused");
        assert_eq!(err, TlsError::KeyMismatch);
    }

    #[test]
    fn refuses_a_key_file_without_a_key() {
        let a = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        assert_eq!(
            validate_entry(&a.chain_pem, Some("")),
            Err(TlsError::NoPrivateKey)
        );
        // A certificate given as the key file.
        assert_eq!(
            validate_entry(&a.chain_pem, Some(&a.chain_pem)),
            Err(TlsError::NoPrivateKey)
        );
        let err = validate_entry(&a.chain_pem, Some(""))
            .expect_err("must be refused")
            .to_string();
        assert!(err.starts_with("the key file has no private key"), "{err}");
    }

    #[test]
    fn refuses_encrypted_and_multiple_keys() {
        let a = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert_eq!(
            validate_entry(&a.chain_pem, Some(encrypted)),
            Err(TlsError::EncryptedKey)
        );
        let two = format!("{}{}", a.key_pem, a.key_pem);
        assert_eq!(
            validate_entry(&a.chain_pem, Some(&two)),
            Err(TlsError::MultipleKeys)
        );
    }

    #[test]
    fn refuses_a_malformed_key() {
        let a = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        let junk = "-----BEGIN PRIVATE KEY-----\naGVsbG8gd29ybGQ=\n-----END PRIVATE KEY-----\n";
        let err = validate_entry(&a.chain_pem, Some(junk)).expect_err("must be refused");
        assert!(matches!(err, TlsError::UnsupportedKey(_)), "{err:?}");
    }

    #[test]
    fn accepts_a_ca_without_key_but_not_a_stray_key() {
        let a = generate_self_signed(KeyKind::EcdsaP256, "ca.test", &[]).expect("gen");
        let info = validate_entry(&a.chain_pem, None).expect("CA-only import");
        assert_eq!(info.chain_len, 1);
        let bundle = format!("{}{}", a.chain_pem, a.key_pem);
        assert_eq!(
            validate_entry(&bundle, None),
            Err(TlsError::KeyInCertificateFile)
        );
    }

    /// PEM-armour `der` under `label` (test helper; no base64 crate here).
    fn armour(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    /// The privateKey OCTET STRING of a PKCS#8 structure: PKCS#1 for RSA,
    /// SEC1 for EC keys.
    fn inner_key(pkcs8_der: &[u8]) -> Vec<u8> {
        let (_, obj) = x509_parser::der_parser::parse_der(pkcs8_der).expect("PKCS#8");
        let seq = obj.as_sequence().expect("sequence");
        seq[2].as_slice().expect("octet string").to_vec()
    }

    #[test]
    fn accepts_pkcs1_and_sec1_keys() {
        for kind in [KeyKind::Rsa2048, KeyKind::EcdsaP256] {
            let a = generate_self_signed(kind, "a.test", &[]).expect("gen");
            let PrivateKeyDer::Pkcs8(pkcs8) = parse_key(&a.key_pem).expect("key") else {
                panic!("generated keys are PKCS#8");
            };
            let (label, expect_sec1) = match kind {
                KeyKind::EcdsaP256 => ("EC PRIVATE KEY", true),
                _ => ("RSA PRIVATE KEY", false),
            };
            let legacy = armour(label, &inner_key(pkcs8.secret_pkcs8_der()));
            let parsed = parse_key(&legacy).expect("legacy key");
            assert_eq!(matches!(parsed, PrivateKeyDer::Sec1(_)), expect_sec1);
            assert_eq!(matches!(parsed, PrivateKeyDer::Pkcs1(_)), !expect_sec1);
            validate_entry(&a.chain_pem, Some(&legacy)).expect("legacy key matches");
        }
    }

    #[test]
    fn tolerates_text_around_blocks() {
        let a = generate_self_signed(KeyKind::EcdsaP256, "a.test", &[]).expect("gen");
        let chain = format!("subject=CN = a.test\n{}\n", a.chain_pem);
        let key = format!("# key for a.test\n{}", a.key_pem);
        validate_entry(&chain, Some(&key)).expect("valid");
    }

    #[test]
    fn checks_chain_order() {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["mx.test".to_string()]).expect("params");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");

        let in_order = format!("{}{}", leaf.pem(), ca_cert.pem());
        let info = validate_entry(&in_order, Some(&leaf_key.serialize_pem())).expect("valid");
        assert_eq!(info.chain_len, 2);
        assert!(!info.self_signed);
        assert_eq!(info.issuer, "CN=Test CA");

        let other = generate_self_signed(KeyKind::EcdsaP256, "x.test", &[]).expect("gen");
        let wrong = format!("{}{}", leaf.pem(), other.chain_pem);
        assert_eq!(
            validate_entry(&wrong, Some(&leaf_key.serialize_pem())),
            Err(TlsError::ChainOrder { index: 1, next: 2 })
        );

        let ca_info = validate_entry(&ca_cert.pem(), None).expect("CA");
        assert!(ca_info.is_ca);
        assert!(ca_info.self_signed);
    }

    #[test]
    fn parse_key_reads_one_key() {
        let a = generate_self_signed(KeyKind::EcdsaP384, "a.test", &[]).expect("gen");
        assert!(matches!(parse_key(&a.key_pem), Ok(PrivateKeyDer::Pkcs8(_))));
        assert_eq!(parse_chain(&a.chain_pem).expect("chain").len(), 1);
    }
}
