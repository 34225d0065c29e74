//! TLSA certificate association data (RFC 6698 §2.1): what a TLSA record
//! says about a certificate, for matching records against a server's chain
//! (DANE, RFC 7672) and for printing the records to publish
//! (`postern cert tlsa`).

use aws_lc_rs::digest;
use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The selector (RFC 6698 §2.1.2): what of the certificate is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsaSelector {
    /// 0: the whole certificate (DER).
    FullCertificate,
    /// 1: the SubjectPublicKeyInfo (DER).
    PublicKey,
}

/// The matching type (RFC 6698 §2.1.3): how it is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsaMatching {
    /// 0: exact bytes.
    Exact,
    /// 1: SHA-256 of the bytes.
    Sha256,
    /// 2: SHA-512 of the bytes.
    Sha512,
}

impl TlsaSelector {
    /// From the record's field; `None` for values RFC 7672 does not use.
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::FullCertificate),
            1 => Some(Self::PublicKey),
            _ => None,
        }
    }
}

impl TlsaMatching {
    pub fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::Exact),
            1 => Some(Self::Sha256),
            2 => Some(Self::Sha512),
            _ => None,
        }
    }
}

/// The association data of `cert` for `selector` and `matching`; an error
/// in words when the certificate cannot be parsed (selector 1 needs its
/// SubjectPublicKeyInfo).
pub fn tlsa_association(
    cert: &CertificateDer<'_>,
    selector: TlsaSelector,
    matching: TlsaMatching,
) -> Result<Vec<u8>, String> {
    let selected: Vec<u8> = match selector {
        TlsaSelector::FullCertificate => cert.as_ref().to_vec(),
        TlsaSelector::PublicKey => {
            let (_, parsed) = X509Certificate::from_der(cert.as_ref())
                .map_err(|e| format!("certificate cannot be parsed: {e}"))?;
            parsed.tbs_certificate.subject_pki.raw.to_vec()
        }
    };
    Ok(match matching {
        TlsaMatching::Exact => selected,
        TlsaMatching::Sha256 => digest::digest(&digest::SHA256, &selected).as_ref().to_vec(),
        TlsaMatching::Sha512 => digest::digest(&digest::SHA512, &selected).as_ref().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn association_data() {
        let generated =
            crate::generate_self_signed(crate::KeyKind::EcdsaP256, "mx.example.test", &[])
                .expect("cert");
        let chain = crate::parse_chain(&generated.chain_pem).expect("chain");
        let cert = &chain[0];
        let full = tlsa_association(cert, TlsaSelector::FullCertificate, TlsaMatching::Exact)
            .expect("full");
        assert_eq!(full, cert.as_ref());
        let spki =
            tlsa_association(cert, TlsaSelector::PublicKey, TlsaMatching::Exact).expect("spki");
        // An EC P-256 SubjectPublicKeyInfo: a SEQUENCE of 91 bytes.
        assert_eq!(spki.len(), 91);
        assert_eq!(spki[0], 0x30);
        let sha256 =
            tlsa_association(cert, TlsaSelector::PublicKey, TlsaMatching::Sha256).expect("256");
        assert_eq!(
            sha256,
            digest::digest(&digest::SHA256, &spki).as_ref().to_vec()
        );
        let sha512 = tlsa_association(cert, TlsaSelector::FullCertificate, TlsaMatching::Sha512)
            .expect("512");
        assert_eq!(sha512.len(), 64);
        let garbage = CertificateDer::from(vec![1u8, 2, 3]);
        assert!(tlsa_association(&garbage, TlsaSelector::PublicKey, TlsaMatching::Sha256).is_err());
    }
}
