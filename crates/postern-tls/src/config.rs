//! Where every rustls configuration of Postern starts: the one crypto
//! provider (aws-lc-rs; two providers in one process panic at run time)
//! and the protocol versions. The inbound SMTP listener ([`crate::ServerTls`]),
//! the admin listener ([`admin_server_config`]), outbound delivery and
//! MTA-STS fetches (postern-delivery's `ClientTls`) and the PostgreSQL
//! store client all build on these, so a change of policy — a version
//! dropped, a provider feature — is made once, here. What differs per use
//! (certificate verifiers: PKIX, DANE, the store's CA) stays with its user.

use std::sync::Arc;

use rustls::client::WantsClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ConfigBuilder, ServerConfig, SupportedProtocolVersion, WantsVerifier};

/// TLS 1.3 and 1.2: what every Postern endpoint speaks unless a setting
/// narrows it (`tls.inbound.min_version`).
pub const TLS12_AND_13: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// TLS 1.3 only.
pub const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The one crypto provider (shared, with its default strong suites).
pub fn provider() -> Arc<CryptoProvider> {
    crate::provider()
}

/// A server configuration builder on `provider` with `versions`.
pub fn server_builder(
    provider: Arc<CryptoProvider>,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<ConfigBuilder<ServerConfig, WantsVerifier>, rustls::Error> {
    ServerConfig::builder_with_provider(provider).with_protocol_versions(versions)
}

/// A client configuration builder on `provider`, TLS 1.2 and 1.3.
pub fn client_builder(
    provider: Arc<CryptoProvider>,
) -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, rustls::Error> {
    ClientConfig::builder_with_provider(provider).with_protocol_versions(TLS12_AND_13)
}

/// A client configuration builder with a verifier of the caller's (PKIX
/// with the administrator's trust anchors, DANE, a store's CA).
pub fn client_with_verifier(
    provider: Arc<CryptoProvider>,
    verifier: Arc<dyn rustls::client::danger::ServerCertVerifier>,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, rustls::Error> {
    Ok(client_builder(provider)?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

/// The admin listener's configuration: one certificate, no client
/// certificates, HTTP/1.1.
pub fn admin_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = server_builder(provider(), TLS12_AND_13)?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
