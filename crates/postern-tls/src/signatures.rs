//! The handshake-signature half of every certificate verifier Postern
//! builds (the inbound client-certificate verifier here, delivery's PKIX
//! and DANE server verifiers): whatever a verifier decides about the
//! certificate, the peer must still prove it holds its key, checked with
//! the one crypto provider's algorithms.
//!
//! rustls makes each verifier implement `verify_tls12_signature`,
//! `verify_tls13_signature` and `supported_verify_schemes`; each delegates
//! to [`HandshakeSignatures`] in one line instead of keeping its own copy.

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::CertificateDer;

/// The provider's signature verification algorithms, applied to the
/// handshake signatures (TLS 1.2 ServerKeyExchange / CertificateVerify,
/// TLS 1.3 CertificateVerify).
#[derive(Debug, Clone, Copy)]
pub struct HandshakeSignatures {
    algorithms: WebPkiSupportedAlgorithms,
}

impl HandshakeSignatures {
    /// The algorithms of `provider` (the process's aws-lc-rs provider).
    pub fn of(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }

    /// For `verify_tls12_signature`.
    pub fn verify_tls12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    /// For `verify_tls13_signature` (TLS 1.3 restricts the schemes further;
    /// rustls applies that here).
    pub fn verify_tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    /// For `supported_verify_schemes`: what we offer to verify.
    pub fn schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn schemes_are_the_providers() {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let signatures = HandshakeSignatures::of(&provider);
        assert_eq!(
            signatures.schemes(),
            provider
                .signature_verification_algorithms
                .supported_schemes()
        );
        assert!(signatures.schemes().contains(&SignatureScheme::ED25519));
        assert!(signatures
            .schemes()
            .contains(&SignatureScheme::RSA_PSS_SHA256));
    }
}
