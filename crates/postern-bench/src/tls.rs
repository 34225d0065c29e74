//! rustls configurations for the harness (aws-lc-rs provider only).
//!
//! * The sink's server configuration: one certificate (RSA or ECDSA, from
//!   PEM files), stateless session tickets, like a well-configured MX.
//! * The load generator's client configuration: accepts any certificate
//!   (the benchmark is about cost, not trust) but still verifies the
//!   handshake signatures, so the client does the work a real sender does.
//!   Session resumption can be turned off to force full handshakes.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context as _, Result};
use postern_delivery::ServerCheck;
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The sink's STARTTLS configuration.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!("{}: no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading key {}", key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("certificate and key")?;
    config.ticketer =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| anyhow!("ticketer: {e}"))?;
    Ok(Arc::new(config))
}

/// The load generator's client configuration.
pub fn client_config(resume: bool) -> Result<Arc<ClientConfig>> {
    let provider = provider();
    // Any certificate; the handshake signatures are still checked.
    let verifier = Arc::new(ServerCheck::accept_any(&provider));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.resumption = if resume {
        Resumption::in_memory_sessions(4096)
    } else {
        Resumption::disabled()
    };
    Ok(Arc::new(config))
}

pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("mta.bench").unwrap_or(ServerName::IpAddress(
        std::net::IpAddr::from([127, 0, 0, 1]).into(),
    ))
}
