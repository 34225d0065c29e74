//! Certificates and inbound TLS for Postern.
//!
//! This crate owns everything Postern does with X.509 certificates and
//! private keys before a socket is involved:
//!
//! - **Key generation** ([`generate_self_signed`]): the self-signed entries of
//!   the certificate table, among them the `Default Cert` of SPEC §1
//!   (RSA-4096 with sha256WithRSAEncryption, [`KeyKind::Rsa4096`]).
//! - **Import validation** ([`validate_entry`]): a PEM chain and an optional
//!   PKCS#8 / PKCS#1 / SEC1 private key are checked before they reach the
//!   store, with errors an administrator can act on ("the private key does
//!   not match the certificate").
//! - **Description** ([`describe`]): subject, issuer, SANs, key type and size,
//!   signature algorithm (OpenSSL names), validity (RFC 3339) and SHA-256
//!   fingerprint, for `postern cert list|show` and the admin UI.
//! - **The inbound rustls configuration** ([`ServerTls::build`]): TLS 1.2 and
//!   1.3 only (RFC 8996 retired the older versions; anonymous suites do not
//!   exist in them), the aws-lc-rs provider, stateless session tickets
//!   (RFC 5077 / RFC 8446 §4.6.1), and the client-certificate policy of
//!   SPEC §4 (`none`, `request`, `require`), with
//!   [`ServerTls::client_certificate_status`] classifying what a client
//!   presented for the mail log.
//!
//! - **DKIM keys** ([`generate_dkim_key`], [`dkim_sign`]): RSA-2048 and
//!   Ed25519 keys for signing mailed TLS reports, their DNS TXT records.
//!
//! Layout: `keys` (generation), `dkim` (DKIM keys), `pem` (parsing and import checks),
//! `describe` (certificate descriptions), `server` (inbound configuration and
//! client-certificate verifiers), `signatures` (the handshake-signature
//! checks every verifier delegates to), `names` (version and cipher names for
//! `Received:` headers and traces).
//!
//! Exactly one rustls crypto provider is used in the process: aws-lc-rs
//! ([`install_crypto_provider`]). Nothing here panics on bad input: PEM text
//! and peer certificates are untrusted data.

pub mod config;
mod describe;
mod dkim;
mod keys;
mod names;
mod pem;
mod server;
mod signatures;
mod tlsa;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use describe::{describe, describe_der, CertInfo};
pub use dkim::{dkim_sign, generate_dkim_key, DkimError, DkimKeyPair, DkimKeyType};
pub use keys::{generate_self_signed, Generated, KeyKind};
pub use names::{
    check_name_chars, cipher_suite_name, forbidden_name_char, negotiated, protocol_name,
    NegotiatedTls,
};
pub use pem::{parse_chain, parse_key, validate_entry};
pub use server::{CertKeyPem, ClientCertStatus, InboundTlsParams, ServerTls};
pub use signatures::HandshakeSignatures;
pub use tlsa::{tlsa_association, TlsaMatching, TlsaSelector};

/// What went wrong with a certificate, a key or the TLS configuration,
/// phrased for the administrator who has to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error(
        "the certificate file has no CERTIFICATE block (expected \"-----BEGIN CERTIFICATE-----\")"
    )]
    NoCertificate,
    #[error("the {file} file is not valid PEM: {detail}")]
    MalformedPem { file: &'static str, detail: String },
    #[error("certificate {index} of the chain cannot be parsed: {detail}")]
    BadCertificate { index: usize, detail: String },
    #[error(
        "the chain is not in order: certificate {index} was not issued by certificate {next} \
         (expected the server certificate first, then each issuer)"
    )]
    ChainOrder { index: usize, next: usize },
    #[error(
        "the certificate file also holds a private key: pass it as the key, \
         or remove it to import a CA certificate"
    )]
    KeyInCertificateFile,
    #[error(
        "the key file has no private key (expected a PEM block \"PRIVATE KEY\", \
         \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\")"
    )]
    NoPrivateKey,
    #[error(
        "the private key is encrypted; decrypt it first (e.g. openssl pkey -in key.pem -out plain.pem)"
    )]
    EncryptedKey,
    #[error(
        "the key file holds more than one private key; keep only the one for this certificate"
    )]
    MultipleKeys,
    #[error("the private key cannot be used: {0}")]
    UnsupportedKey(String),
    #[error("the private key does not match the certificate")]
    KeyMismatch,
    #[error(
        "unknown key type \"{0}\"; allowed: rsa2048, rsa3072, rsa4096, ecdsa-p256, ecdsa-p384"
    )]
    UnknownKeyKind(String),
    #[error("invalid certificate name \"{name}\": {detail}")]
    InvalidName { name: String, detail: String },
    #[error("certificate generation failed: {0}")]
    Generate(String),
    #[error("client_certificate = \"require\" needs at least one trusted client CA")]
    NoClientCa,
    #[error("trusted client CA {index} cannot be used: {detail}")]
    ClientCa { index: usize, detail: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
}

/// Install aws-lc-rs as the process-wide rustls crypto provider.
///
/// Call once at startup, before any TLS configuration is built by other
/// crates that rely on the process default (tokio-rustls clients, reqwest).
/// Idempotent: a provider that is already installed is left in place.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The aws-lc-rs provider with its default (strong) cipher suites, shared by
/// every configuration this crate builds.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}
