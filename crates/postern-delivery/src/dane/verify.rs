//! The DANE server-certificate check (RFC 7672 §3, SPEC §10 item 2), as a
//! rustls [`ServerCertVerifier`] built for one connection from the
//! requirement's usable TLSA records:
//!
//! * **DANE-EE** (usage 3): the leaf certificate (selector 0) or its public
//!   key (selector 1) matches the record — exact, SHA-256 or SHA-512. No
//!   name check and no expiry check (RFC 7672 §3.1.1): the record is the
//!   authentication.
//! * **DANE-TA** (usage 2): a certificate of the chain the server sent
//!   matches the record and becomes the only trust anchor; the leaf must
//!   chain to it, be valid now, and name the MX host (RFC 7672 §3.1.2,
//!   §3.2.2).
//!
//! Any one matching record suffices. The handshake signatures are checked
//! as always, so the peer must hold the key of the certificate it shows.

use std::fmt;
use std::sync::Arc;

use postern_tls::HandshakeSignatures;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::policy::Tlsa;

/// No TLSA record matches the server's certificates (RFC 8460
/// `tlsa-invalid`).
#[derive(Debug)]
pub struct TlsaMismatch {
    pub records: usize,
}

impl fmt::Display for TlsaMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no TLSA record matches the server's certificate chain ({} usable record{})",
            self.records,
            if self.records == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for TlsaMismatch {}

/// DANE-EE and DANE-TA over one host's usable TLSA records.
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    /// The MX host: the reference identity for DANE-TA.
    host: ServerName<'static>,
    provider: Arc<CryptoProvider>,
    signatures: HandshakeSignatures,
}

impl fmt::Debug for DaneVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaneVerifier")
            .field("records", &self.records.len())
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl DaneVerifier {
    pub fn new(
        records: Vec<Tlsa>,
        host: ServerName<'static>,
        provider: Arc<CryptoProvider>,
    ) -> DaneVerifier {
        DaneVerifier {
            records,
            host,
            signatures: HandshakeSignatures::of(&provider),
            provider,
        }
    }

    /// The check itself: `Ok` when a record authenticates the chain.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        if self
            .records
            .iter()
            .any(|r| r.usage == 3 && matches(r, end_entity))
        {
            return Ok(());
        }
        // DANE-TA: the first chain certificate a record matches is the
        // anchor; a failure of the chain or name check beyond it is the
        // reason given (more useful than "no match").
        let mut ta_failure = None;
        for (index, candidate) in intermediates.iter().enumerate() {
            if !self
                .records
                .iter()
                .any(|r| r.usage == 2 && matches(r, candidate))
            {
                continue;
            }
            match self.chain_to(candidate, end_entity, &intermediates[..index], now) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    ta_failure.get_or_insert(e);
                }
            }
        }
        Err(ta_failure.unwrap_or_else(|| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(TlsaMismatch {
                    records: self.records.len(),
                }),
            )))
        }))
    }

    fn chain_to(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        below: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned()).map_err(|e| {
            rustls::Error::General(format!(
                "the certificate a DANE-TA record matches cannot be a trust anchor: {e}"
            ))
        })?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        webpki
            .verify_server_cert(end_entity, below, &self.host, &[], now)
            .map(|_| ())
    }
}

/// Whether `record` matches `cert` (selector and matching type as given;
/// unusable combinations never reach a requirement, and never match).
fn matches(record: &Tlsa, cert: &CertificateDer<'_>) -> bool {
    let (Some(selector), Some(matching)) = (
        postern_tls::TlsaSelector::from_u8(record.selector),
        postern_tls::TlsaMatching::from_u8(record.matching),
    ) else {
        return false;
    };
    postern_tls::tlsa_association(cert, selector, matching).is_ok_and(|data| data == record.data)
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use time::{Duration, OffsetDateTime};

    const HOST: &str = "mx.partner.test";

    struct Pki {
        leaf: CertificateDer<'static>,
        intermediate: CertificateDer<'static>,
        root: CertificateDer<'static>,
    }

    fn ca_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
    }

    /// root → intermediate → leaf for `names`, the leaf valid in
    /// `[from, until]` relative to now (days).
    fn pki(names: &[&str], from: i64, until: i64) -> Pki {
        let root_key = KeyPair::generate().expect("key");
        let root = ca_params("Test Root").self_signed(&root_key).expect("root");
        let inter_key = KeyPair::generate().expect("key");
        let issuer_root = rcgen::Issuer::new(ca_params("Test Root"), &root_key);
        let intermediate = ca_params("Test Intermediate")
            .signed_by(&inter_key, &issuer_root)
            .expect("intermediate");
        let issuer_inter = rcgen::Issuer::new(ca_params("Test Intermediate"), &inter_key);
        let leaf_key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let now = OffsetDateTime::now_utc();
        params.not_before = now + Duration::days(from);
        params.not_after = now + Duration::days(until);
        let leaf = params.signed_by(&leaf_key, &issuer_inter).expect("leaf");
        Pki {
            leaf: leaf.der().clone(),
            intermediate: intermediate.der().clone(),
            root: root.der().clone(),
        }
    }

    fn record(usage: u8, selector: u8, matching: u8, cert: &CertificateDer<'_>) -> Tlsa {
        let data = postern_tls::tlsa_association(
            cert,
            postern_tls::TlsaSelector::from_u8(selector).expect("selector"),
            postern_tls::TlsaMatching::from_u8(matching).expect("matching"),
        )
        .expect("association");
        Tlsa {
            usage,
            selector,
            matching,
            data,
        }
    }

    fn verifier(records: Vec<Tlsa>) -> DaneVerifier {
        DaneVerifier::new(
            records,
            ServerName::try_from(HOST.to_string()).expect("name"),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
    }

    fn check(
        records: Vec<Tlsa>,
        pki: &Pki,
        chain: &[&CertificateDer<'static>],
    ) -> Result<(), String> {
        let intermediates: Vec<CertificateDer<'static>> =
            chain.iter().map(|c| (*c).clone()).collect();
        verifier(records)
            .check(&pki.leaf, &intermediates, UnixTime::now())
            .map_err(|e| crate::tls_client::certificate_problem(&e).detail)
    }

    #[test]
    fn every_selector_and_matching_type() {
        let good = pki(&[HOST], -1, 30);
        let other = pki(&[HOST], -1, 30);
        let sent = [&good.intermediate, &good.root];
        for selector in 0..=1 {
            for matching in 0..=2 {
                // DANE-EE on the leaf.
                let ee = record(3, selector, matching, &good.leaf);
                assert_eq!(
                    check(vec![ee], &good, &sent),
                    Ok(()),
                    "3 {selector} {matching}"
                );
                let wrong = record(3, selector, matching, &other.leaf);
                let refused = check(vec![wrong], &good, &sent).unwrap_err();
                assert!(refused.contains("no TLSA record matches"), "{refused}");
                // DANE-TA on the intermediate and on the root.
                for anchor in [&good.intermediate, &good.root] {
                    let ta = record(2, selector, matching, anchor);
                    assert_eq!(
                        check(vec![ta], &good, &sent),
                        Ok(()),
                        "2 {selector} {matching}"
                    );
                }
                let wrong = record(2, selector, matching, &other.intermediate);
                assert!(
                    check(vec![wrong], &good, &sent).is_err(),
                    "2 {selector} {matching}"
                );
            }
        }
    }

    #[test]
    fn one_matching_record_suffices() {
        let good = pki(&[HOST], -1, 30);
        let other = pki(&[HOST], -1, 30);
        let records = vec![
            record(3, 1, 1, &other.leaf),
            record(2, 0, 1, &other.root),
            record(3, 0, 2, &good.leaf),
        ];
        assert_eq!(check(records, &good, &[&good.intermediate]), Ok(()));
    }

    #[test]
    fn dane_ee_ignores_name_and_expiry() {
        let expired = pki(&["mx.elsewhere.test"], -60, -30);
        assert_eq!(
            check(vec![record(3, 1, 1, &expired.leaf)], &expired, &[]),
            Ok(())
        );
        let future = pki(&["mx.elsewhere.test"], 10, 30);
        assert_eq!(
            check(vec![record(3, 0, 1, &future.leaf)], &future, &[]),
            Ok(())
        );
    }

    #[test]
    fn dane_ta_checks_name_and_expiry() {
        let wrong_name = pki(&["mx.elsewhere.test"], -1, 30);
        let refused = check(
            vec![record(2, 1, 1, &wrong_name.intermediate)],
            &wrong_name,
            &[&wrong_name.intermediate],
        )
        .unwrap_err();
        assert!(
            refused.contains("does not match mx.partner.test"),
            "{refused}"
        );
        let expired = pki(&[HOST], -60, -30);
        let refused = check(
            vec![record(2, 1, 1, &expired.root)],
            &expired,
            &[&expired.intermediate, &expired.root],
        )
        .unwrap_err();
        assert!(refused.contains("expired"), "{refused}");
    }

    #[test]
    fn dane_ta_needs_the_anchor_in_the_chain() {
        // The record names the intermediate, but the server did not send it.
        let good = pki(&[HOST], -1, 30);
        let refused = check(vec![record(2, 1, 1, &good.intermediate)], &good, &[]).unwrap_err();
        assert!(refused.contains("no TLSA record matches"), "{refused}");
        // A DANE-TA record never matches the leaf itself.
        let refused = check(vec![record(2, 1, 1, &good.leaf)], &good, &[]).unwrap_err();
        assert!(refused.contains("no TLSA record matches"), "{refused}");
    }

    #[test]
    fn mismatch_is_tlsa_invalid() {
        let good = pki(&[HOST], -1, 30);
        let other = pki(&[HOST], -1, 30);
        let error = verifier(vec![record(3, 1, 1, &other.leaf)])
            .check(&good.leaf, &[], UnixTime::now())
            .unwrap_err();
        let problem = crate::tls_client::certificate_problem(&error);
        assert_eq!(problem.fault, crate::policy::CertFault::TlsaMismatch);
        let failure = crate::policy::TlsPolicyFailure::CertificateUnverified(problem);
        assert_eq!(
            failure.result_type(),
            crate::policy::ResultType::TlsaInvalid
        );
    }
}
