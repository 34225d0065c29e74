//! The outbound rustls configuration (SPEC §4 `[tls.outbound]`).
//!
//! [`ClientTls`] holds two client configurations, built once and shared by
//! every connection (rebuild it when the settings or certificates change):
//!
//! * **verifying** — for `verify`: the chain must end at a trusted root
//!   (the Mozilla roots from `webpki-roots` when `"system"` is listed in
//!   `trusted_ca`, plus every named CA entry) and the certificate must name
//!   the host: a DNS name for MX and next-hop names, an IP SAN for IP
//!   literals. A failure aborts the handshake.
//! * **accepting** — for `require` and `opportunistic`: any certificate is
//!   accepted, but the handshake signatures are still verified (the peer
//!   must hold the key of the certificate it shows), and
//!   [`ClientTls::check_certificate`] tells afterwards whether the chain
//!   would have verified, so every attempt records the verification result.
//!
//! A DANE requirement gets a third configuration, built per connection
//! from its TLSA records ([`ClientTls::config_for`],
//! [`crate::dane::verify`]).
//!
//! All speak TLS 1.3 and 1.2 only, with the aws-lc-rs provider's default
//! (AEAD, forward-secret) suites, send SNI for host names (never for IP
//! literals, RFC 6066 §3), present the outbound client certificate when one
//! is configured, and resume sessions from rustls's in-memory cache. Each
//! configuration has its own cache, so a session made without verification
//! is never resumed where verification is required.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use postern_tls::HandshakeSignatures;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::dane::verify::{DaneVerifier, TlsaMismatch};
use crate::policy::{CertAuth, CertFault, CertProblem, Requirement};

/// Where trust for `verify` comes from (`tls.outbound.trusted_ca`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustSources {
    /// `"system"` is listed: the public web PKI roots (Mozilla's, from
    /// `webpki-roots`).
    pub system: bool,
    /// The PEM of every CA entry named in `trusted_ca`; every certificate
    /// in each becomes a trust anchor.
    pub ca_pems: Vec<String>,
}

impl TrustSources {
    /// From the `trusted_ca` list: `"system"` turns on the public roots,
    /// every other name is looked up with `pem_of` (the certificate table).
    /// An unknown name is an error naming it.
    pub fn from_names(
        names: &[String],
        mut pem_of: impl FnMut(&str) -> Option<String>,
    ) -> Result<TrustSources, TlsSetupError> {
        let mut sources = TrustSources::default();
        for name in names {
            if name == "system" {
                sources.system = true;
                continue;
            }
            let pem = pem_of(name).ok_or_else(|| TlsSetupError::UnknownCa(name.clone()))?;
            sources.ca_pems.push(pem);
        }
        Ok(sources)
    }
}

/// The outbound TLS configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsSetupError {
    #[error("tls.outbound.trusted_ca: no certificate entry named \"{0}\"")]
    UnknownCa(String),
    #[error("tls.outbound.trusted_ca entry {index}: {detail}")]
    BadCa { index: usize, detail: String },
    #[error("tls.outbound.client_certificate: {0}")]
    ClientCertificate(String),
    #[error("cannot build the outbound TLS configuration: {0}")]
    Config(String),
}

/// The outbound client certificate, when one is configured.
type ClientAuth = Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>;

/// The two shared client configurations and the verifier behind both, and
/// what a per-connection (DANE) configuration is built from.
#[derive(Clone)]
pub struct ClientTls {
    verifying: Arc<ClientConfig>,
    accepting: Arc<ClientConfig>,
    /// For HTTPS fetches (MTA-STS policies): the same trust anchors and
    /// name check as `verifying`, no client certificate, HTTP/1.1 ALPN.
    https: Arc<ClientConfig>,
    trust: Arc<Trust>,
    provider: Arc<CryptoProvider>,
    client_auth: ClientAuth,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("trust_anchors", &self.trust.anchors)
            .field(
                "client_certificate",
                &self.accepting.client_auth_cert_resolver.has_certs(),
            )
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Build both configurations. `client_cert` is `(chain_pem, key_pem)`
    /// of the entry named by `tls.outbound.client_certificate`.
    pub fn new(
        trusted: TrustSources,
        client_cert: Option<(String, String)>,
    ) -> Result<ClientTls, TlsSetupError> {
        let provider = postern_tls::config::provider();
        let trust = Arc::new(Trust::new(&trusted, &provider)?);

        let client_auth: ClientAuth = match &client_cert {
            None => None,
            Some((chain_pem, key_pem)) => {
                let problem =
                    |e: postern_tls::TlsError| TlsSetupError::ClientCertificate(e.to_string());
                postern_tls::validate_entry(chain_pem, Some(key_pem)).map_err(problem)?;
                let chain = postern_tls::parse_chain(chain_pem).map_err(problem)?;
                let key = postern_tls::parse_key(key_pem).map_err(problem)?;
                Some((chain, Arc::new(key)))
            }
        };

        let verifying = build_config(
            &provider,
            &client_auth,
            Arc::new(ServerCheck {
                trust: Some(trust.clone()),
                signatures: HandshakeSignatures::of(&provider),
            }),
        )?;
        let accepting = build_config(
            &provider,
            &client_auth,
            Arc::new(ServerCheck::accept_any(&provider)),
        )?;
        let mut https = postern_tls::config::client_with_verifier(
            provider.clone(),
            Arc::new(ServerCheck {
                trust: Some(trust.clone()),
                signatures: HandshakeSignatures::of(&provider),
            }),
        )
        .map_err(|e| TlsSetupError::Config(e.to_string()))?
        .with_no_client_auth();
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            verifying,
            accepting,
            https: Arc::new(https),
            trust,
            provider,
            client_auth,
        })
    }

    /// The configuration for a handshake: verifying or accepting.
    pub fn config(&self, verify: bool) -> Arc<ClientConfig> {
        if verify {
            self.verifying.clone()
        } else {
            self.accepting.clone()
        }
    }

    /// The configuration for HTTPS fetches ([`crate::https`]).
    pub fn https_config(&self) -> Arc<ClientConfig> {
        self.https.clone()
    }

    /// The one place a connection's verifier is chosen: what the
    /// requirement's [`CertAuth`] asks for. PKIX uses the shared verifying
    /// configuration (its session cache too); no authentication the
    /// accepting one, whose result is checked afterwards and recorded;
    /// DANE a configuration built for this connection around a
    /// [`DaneVerifier`] of its TLSA records (with its own, empty, session
    /// cache: a session is never resumed under other records).
    /// `Ok(verifies)` says whether the handshake itself authenticates.
    pub fn config_for(
        &self,
        requirement: &Requirement,
    ) -> Result<(Arc<ClientConfig>, bool), TlsSetupError> {
        match &requirement.auth {
            CertAuth::None => Ok((self.accepting.clone(), false)),
            CertAuth::Pkix { .. } => Ok((self.verifying.clone(), true)),
            CertAuth::Dane { name, records } => {
                let host = match server_name(name)? {
                    ServerName::DnsName(dns) => ServerName::DnsName(dns),
                    _ => {
                        return Err(TlsSetupError::Config(format!(
                            "DANE needs an MX host name, not the address {name}"
                        )))
                    }
                };
                let verifier = DaneVerifier::new(records.clone(), host, self.provider.clone());
                Ok((
                    build_config(&self.provider, &self.client_auth, Arc::new(verifier))?,
                    true,
                ))
            }
        }
    }

    /// Whether `chain` (as the server sent it) verifies for `host` against
    /// the trusted roots; the reason in words when it does not.
    pub fn check_certificate(
        &self,
        chain: Option<&[CertificateDer<'_>]>,
        host: &str,
    ) -> Result<(), CertProblem> {
        let Some((end_entity, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Err(CertProblem {
                fault: CertFault::Other,
                detail: "the server sent no certificate".into(),
            });
        };
        let name = server_name(host).map_err(|e| CertProblem {
            fault: CertFault::HostMismatch,
            detail: e.to_string(),
        })?;
        self.trust
            .verify(end_entity, intermediates, &name, UnixTime::now())
            .map(|_| ())
            .map_err(|e| certificate_problem(&e))
    }
}

/// A client configuration around `verifier`: TLS 1.3 and 1.2, the
/// provider's suites, the client certificate when configured.
fn build_config(
    provider: &Arc<CryptoProvider>,
    client_auth: &ClientAuth,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let builder = postern_tls::config::client_with_verifier(provider.clone(), verifier)
        .map_err(|e| TlsSetupError::Config(e.to_string()))?;
    let config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| TlsSetupError::ClientCertificate(e.to_string()))?,
    };
    Ok(Arc::new(config))
}

/// The TLS name for a target host: an IP address for IP literals (no SNI,
/// IP SAN check), a DNS name otherwise.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsSetupError> {
    let host = host.trim_end_matches('.');
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_ascii_lowercase())
        .map_err(|_| TlsSetupError::Config(format!("\"{host}\" is not a valid TLS server name")))
}

/// Trust anchors and the WebPKI verifier over them (none when no anchor is
/// configured: then nothing verifies).
struct Trust {
    anchors: usize,
    webpki: Option<Arc<WebPkiServerVerifier>>,
}

impl Trust {
    fn new(sources: &TrustSources, provider: &Arc<CryptoProvider>) -> Result<Trust, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        if sources.system {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for (i, pem) in sources.ca_pems.iter().enumerate() {
            let index = i + 1;
            let bad = |detail: String| TlsSetupError::BadCa { index, detail };
            let chain = postern_tls::parse_chain(pem).map_err(|e| bad(e.to_string()))?;
            for der in chain {
                roots.add(der).map_err(|e| bad(e.to_string()))?;
            }
        }
        let anchors = roots.len();
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| TlsSetupError::Config(e.to_string()))?,
            )
        };
        Ok(Trust { anchors, webpki })
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let result = match &self.webpki {
            Some(webpki) => webpki.verify_server_cert(end_entity, intermediates, name, &[], now),
            None => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NoTrustAnchors)),
            ))),
        };
        match result {
            // Say "self-signed" rather than "unknown issuer" when that is
            // what it is: the first thing an administrator needs to know.
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer))
                if intermediates.is_empty() && is_self_issued(end_entity) =>
            {
                Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(SelfSigned)),
                )))
            }
            other => other,
        }
    }
}

/// The error when `trusted_ca` names no usable CA.
#[derive(Debug)]
struct NoTrustAnchors;

impl fmt::Display for NoTrustAnchors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no trusted CA is configured (tls.outbound.trusted_ca)")
    }
}

impl std::error::Error for NoTrustAnchors {}

/// A certificate issued by itself and not a trust anchor.
#[derive(Debug)]
struct SelfSigned;

impl fmt::Display for SelfSigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("certificate is self-signed (not issued by a trusted CA)")
    }
}

impl std::error::Error for SelfSigned {}

fn is_self_issued(der: &CertificateDer<'_>) -> bool {
    postern_tls::describe_der(std::slice::from_ref(der))
        .is_ok_and(|info| info.subject == info.issuer)
}

/// The outbound server-certificate check. With trust anchors (`verify`):
/// chain and name, or the handshake fails. Without (`require`,
/// `opportunistic`, and the benchmark's load generator): any certificate.
/// Either way the handshake signatures are really checked, so the peer must
/// hold the key of the certificate it shows.
pub struct ServerCheck {
    trust: Option<Arc<Trust>>,
    signatures: HandshakeSignatures,
}

impl ServerCheck {
    /// Any certificate, real signatures.
    pub fn accept_any(provider: &CryptoProvider) -> Self {
        Self {
            trust: None,
            signatures: HandshakeSignatures::of(provider),
        }
    }
}

impl fmt::Debug for ServerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCheck")
            .field("verifies_chain", &self.trust.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            Some(trust) => trust.verify(end_entity, intermediates, server_name, now),
            None => Ok(ServerCertVerified::assertion()),
        }
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

/// Why a server certificate did not verify, in words for `last_error`.
/// rustls reports presented names in debug form (`DnsName("mx.example")`,
/// `IpAddress(192.0.2.1)`): the bare name reads better in a log.
fn presented_name(debug: &str) -> &str {
    for (prefix, suffix) in [
        ("DnsName(\"", "\")"),
        ("IpAddress(", ")"),
        ("DnsName(", ")"),
    ] {
        if let Some(inner) = debug
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
        {
            return inner;
        }
    }
    debug
}

/// Why a server certificate did not authenticate: the RFC 8460 category
/// and the words for `last_error`.
pub fn certificate_problem(error: &rustls::Error) -> CertProblem {
    let fault = match error {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                CertFault::NotTrusted
            }
            CertificateError::Other(other) if other.0.downcast_ref::<SelfSigned>().is_some() => {
                CertFault::SelfSigned
            }
            CertificateError::Other(other)
                if other.0.downcast_ref::<NoTrustAnchors>().is_some() =>
            {
                CertFault::NotTrusted
            }
            CertificateError::Other(other) if other.0.downcast_ref::<TlsaMismatch>().is_some() => {
                CertFault::TlsaMismatch
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                CertFault::Expired
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                CertFault::HostMismatch
            }
            _ => CertFault::Other,
        },
        _ => CertFault::Other,
    };
    CertProblem {
        fault,
        detail: certificate_reason(error),
    }
}

fn certificate_reason(error: &rustls::Error) -> String {
    let rustls::Error::InvalidCertificate(error) = error else {
        return match error {
            rustls::Error::General(text) => text.clone(),
            other => other.to_string(),
        };
    };
    match error {
        CertificateError::UnknownIssuer => "certificate not issued by a trusted CA".into(),
        CertificateError::BadSignature => "bad signature in the certificate chain".into(),
        CertificateError::BadEncoding => "malformed certificate".into(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not valid yet".into()
        }
        CertificateError::Revoked => "certificate revoked".into(),
        CertificateError::NotValidForName => "certificate does not match the host name".into(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let expected = match expected {
                ServerName::DnsName(name) => name.as_ref().to_string(),
                ServerName::IpAddress(ip) => IpAddr::from(*ip).to_string(),
                other => format!("{other:?}"),
            };
            if presented.is_empty() {
                format!("certificate does not match {expected} (it names no host)")
            } else {
                let names: Vec<&str> = presented.iter().map(|p| presented_name(p)).collect();
                format!(
                    "certificate does not match {expected} (it names {})",
                    names.join(", ")
                )
            }
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate not valid for TLS server authentication (extended key usage)".into()
        }
        CertificateError::Other(other) => other.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod presented_name_tests {
    #[test]
    fn strips_debug_wrappers() {
        assert_eq!(
            super::presented_name("DnsName(\"mx.other.test\")"),
            "mx.other.test"
        );
        assert_eq!(super::presented_name("IpAddress(192.0.2.1)"), "192.0.2.1");
        assert_eq!(super::presented_name("mx.plain.test"), "mx.plain.test");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_sources_from_names() {
        let names = vec!["system".to_string(), "Partner CA".to_string()];
        let sources = TrustSources::from_names(&names, |name| {
            (name == "Partner CA").then(|| "PEM".to_string())
        })
        .expect("known names");
        assert!(sources.system);
        assert_eq!(sources.ca_pems, ["PEM"]);
        let error = TrustSources::from_names(&["Nope".to_string()], |_| None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "tls.outbound.trusted_ca: no certificate entry named \"Nope\""
        );
    }

    #[test]
    fn bad_ca_is_refused() {
        let error = ClientTls::new(
            TrustSources {
                system: true,
                ca_pems: vec!["garbage".into()],
            },
            None,
        )
        .unwrap_err();
        assert!(
            matches!(error, TlsSetupError::BadCa { index: 1, .. }),
            "{error}"
        );
    }

    #[test]
    fn server_names() {
        assert!(matches!(
            server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[2001:db8::1]"),
            Ok(ServerName::IpAddress(_))
        ));
        match server_name("MX.Partner.test.") {
            Ok(ServerName::DnsName(name)) => assert_eq!(name.as_ref(), "mx.partner.test"),
            other => panic!("{other:?}"),
        }
        assert!(server_name("not a name").is_err());
    }

    #[test]
    fn verification_without_anchors_explains_itself() {
        let tls = ClientTls::new(TrustSources::default(), None).expect("builds");
        let detail = |r: Result<(), CertProblem>| r.map_err(|p| (p.fault, p.detail));
        assert_eq!(
            detail(tls.check_certificate(None, "mx.partner.test")),
            Err((
                CertFault::Other,
                "the server sent no certificate".to_string()
            ))
        );
        let generated = postern_tls::generate_self_signed(
            postern_tls::KeyKind::EcdsaP256,
            "mx.partner.test",
            &[],
        )
        .expect("cert");
        let chain = postern_tls::parse_chain(&generated.chain_pem).expect("chain");
        assert_eq!(
            detail(tls.check_certificate(Some(&chain), "mx.partner.test")),
            Err((
                CertFault::NotTrusted,
                "no trusted CA is configured (tls.outbound.trusted_ca)".to_string()
            ))
        );
        // With public roots only, a self-signed certificate says so.
        let public = ClientTls::new(
            TrustSources {
                system: true,
                ca_pems: Vec::new(),
            },
            None,
        )
        .expect("builds");
        assert_eq!(
            detail(public.check_certificate(Some(&chain), "mx.partner.test")),
            Err((
                CertFault::SelfSigned,
                "certificate is self-signed (not issued by a trusted CA)".to_string()
            ))
        );
    }
}
