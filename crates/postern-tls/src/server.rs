//! The inbound rustls configuration: what the server presents, which
//! protocol versions it speaks, and its client-certificate policy.

use std::fmt;
use std::sync::Arc;

use postern_config::{ClientCertMode, TlsVersion};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureAlgorithm, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Serialize;

use crate::pem::{parse_certificate, parse_chain, parse_key, validate_entry};
use crate::signatures::HandshakeSignatures;
use crate::{provider, TlsError};

/// Size of the TLS 1.2 session-ID cache (clients without ticket support).
const SESSION_CACHE_SIZE: usize = 1024;

/// What the server presents and whom it trusts for client certificates.
#[derive(Debug, Clone)]
pub struct InboundTlsParams<'a> {
    /// PEM chain of the certificate entry named by `tls.inbound.certificate`.
    pub chain_pem: &'a str,
    /// Its private key (PEM).
    pub key_pem: &'a str,
    /// `tls.inbound.client_certificate`.
    pub client_certificate: ClientCertMode,
    /// PEM of each entry named in `tls.inbound.trusted_client_ca`.
    pub client_ca_pems: Vec<&'a str>,
    /// `tls.inbound.min_version`.
    pub min_version: TlsVersion,
    /// `tls.inbound.session_tickets`: issue session tickets.
    pub session_tickets: bool,
}

/// A further certificate the server may present (see
/// [`ServerTls::build_with_alternates`]).
#[derive(Debug, Clone, Copy)]
pub struct CertKeyPem<'a> {
    pub chain_pem: &'a str,
    pub key_pem: &'a str,
}

/// How a client's certificate fared, for the mail log and the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ClientCertStatus {
    /// The client sent no certificate.
    NotPresented,
    /// The certificate chains to a trusted client CA and is valid now.
    Verified { subject: String },
    /// A certificate was sent (and its key proven) but it does not chain to
    /// a trusted client CA, or is invalid; only possible in `request` mode.
    /// Never treat such a client as trusted.
    Unverified { subject: String, reason: String },
}

impl ClientCertStatus {
    pub fn is_verified(&self) -> bool {
        matches!(self, ClientCertStatus::Verified { .. })
    }
}

impl fmt::Display for ClientCertStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientCertStatus::NotPresented => f.write_str("no client certificate"),
            ClientCertStatus::Verified { subject } => {
                write!(f, "client certificate verified ({subject})")
            }
            ClientCertStatus::Unverified { subject, reason } => {
                write!(f, "client certificate not verified ({subject}): {reason}")
            }
        }
    }
}

/// The inbound TLS configuration, ready for `ServerConnection::new` or a
/// tokio-rustls `TlsAcceptor`.
pub struct ServerTls {
    /// The rustls configuration; clone the `Arc` per connection.
    pub config: Arc<ServerConfig>,
    client_certificate: ClientCertMode,
    /// Verifies client certificates against the trusted client CAs after
    /// the handshake; `None` when no CA is configured.
    trust: Option<Arc<dyn ClientCertVerifier>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("client_certificate", &self.client_certificate)
            .field("trusted_client_ca", &self.trust.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Build the inbound configuration.
    ///
    /// - TLS 1.3 and 1.2, or 1.3 alone when `min_version` is 1.3; the
    ///   aws-lc-rs provider with its default cipher suites (AEAD with forward
    ///   secrecy only); no 0-RTT data.
    /// - Client certificates: `none` does not ask; `require` refuses the
    ///   handshake without a certificate chaining to `client_ca_pems`;
    ///   `request` asks (naming the CAs), accepts any certificate or none,
    ///   and leaves the verdict to [`ServerTls::client_certificate_status`].
    /// - Resumption: stateless tickets (TLS 1.3 and 1.2) unless
    ///   `session_tickets` is off, and a session-ID cache (TLS 1.2). The
    ///   ticket key is new for every `build`, so sessions from before a
    ///   settings change are not resumed with the new trust settings.
    pub fn build(params: &InboundTlsParams) -> Result<ServerTls, TlsError> {
        Self::build_with_alternates(params, &[])
    }

    /// Like [`ServerTls::build`], with further certificates to present: for
    /// each client the first certificate whose key can sign with one of the
    /// client's signature schemes is chosen, ECDSA and EdDSA before RSA
    /// (cheaper handshakes). A client that offers only RSA schemes gets the
    /// RSA certificate (SPEC §7). An RSA alternate would never be chosen
    /// and is refused.
    pub fn build_with_alternates(
        params: &InboundTlsParams,
        alternates: &[CertKeyPem<'_>],
    ) -> Result<ServerTls, TlsError> {
        let provider = provider();

        let mut keys = vec![certified_key(params.chain_pem, params.key_pem, &provider)?];
        for alternate in alternates {
            keys.push(alternate_key(alternate, &provider)?);
        }
        // Stable: among keys of one family, the primary stays first.
        keys.sort_by_key(|k| k.key.algorithm() == SignatureAlgorithm::RSA);

        let roots = client_roots(&params.client_ca_pems)?;
        let (verifier, trust) = client_verifiers(params.client_certificate, roots, &provider)?;

        let versions: &[&rustls::SupportedProtocolVersion] = match params.min_version {
            TlsVersion::V1_2 => crate::config::TLS12_AND_13,
            TlsVersion::V1_3 => crate::config::TLS13_ONLY,
        };
        let mut config = crate::config::server_builder(provider, versions)
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CertChoice { keys }));
        if params.session_tickets {
            config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
                .map_err(|e| TlsError::Config(format!("session ticket key: {e}")))?;
            // One per handshake, not rustls' two (made for browsers opening
            // parallel connections): an SMTP client resumes one session per
            // destination, and each ticket costs a key derivation, an
            // encryption and ~200 bytes on every new connection.
            config.send_tls13_tickets = 1;
        } else {
            // No NewSessionTicket at all (rustls would otherwise send
            // stateful TLS 1.3 tickets from the cache below).
            config.send_tls13_tickets = 0;
        }
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);

        Ok(ServerTls {
            config: Arc::new(config),
            client_certificate: params.client_certificate,
            trust,
        })
    }

    /// The client-certificate policy this configuration enforces.
    pub fn client_certificate_mode(&self) -> ClientCertMode {
        self.client_certificate
    }

    /// After a handshake: classify the client's certificate for the log and
    /// the session. Pass `conn.peer_certificates()`.
    ///
    /// The chain is checked against the trusted client CAs now (in
    /// `require` mode the handshake already did so; the result is the same).
    pub fn client_certificate_status(
        &self,
        peer_certs: Option<&[CertificateDer<'_>]>,
    ) -> ClientCertStatus {
        let Some((end_entity, intermediates)) = peer_certs.and_then(|c| c.split_first()) else {
            return ClientCertStatus::NotPresented;
        };
        let subject = match parse_certificate(end_entity, 1) {
            Ok(cert) => cert.subject().to_string(),
            Err(_) => "(unparsable certificate)".to_string(),
        };
        let Some(trust) = &self.trust else {
            return ClientCertStatus::Unverified {
                subject,
                reason: "no trusted client CA is configured".into(),
            };
        };
        match trust.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
            Ok(_) => ClientCertStatus::Verified { subject },
            Err(e) => ClientCertStatus::Unverified {
                subject,
                reason: verification_reason(&e),
            },
        }
    }
}

/// Load and cross-check one certificate entry for serving.
impl CertKeyPem<'_> {
    /// Can this entry be presented beside a primary certificate? It must be
    /// valid, its key must match, and the key must not be RSA: the RSA
    /// primary would always be chosen before it.
    pub fn check_alternate(&self) -> Result<(), TlsError> {
        alternate_key(self, &provider()).map(|_| ())
    }
}

fn alternate_key(
    alternate: &CertKeyPem<'_>,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let key = certified_key(alternate.chain_pem, alternate.key_pem, provider)?;
    if key.key.algorithm() == SignatureAlgorithm::RSA {
        return Err(TlsError::Config(
            "the certificate presented beside the primary one has an RSA key; it must be ECDSA (or Ed25519)".into(),
        ));
    }
    Ok(key)
}

fn certified_key(
    chain_pem: &str,
    key_pem: &str,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, TlsError> {
    validate_entry(chain_pem, Some(key_pem))?;
    let chain = parse_chain(chain_pem)?;
    let key = parse_key(key_pem)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::UnsupportedKey(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

/// The trust anchors for client certificates: every certificate of every
/// named CA entry.
fn client_roots(ca_pems: &[&str]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, pem) in ca_pems.iter().enumerate() {
        let index = i + 1;
        let chain = parse_chain(pem).map_err(|e| TlsError::ClientCa {
            index,
            detail: e.to_string(),
        })?;
        for der in chain {
            roots.add(der).map_err(|e| TlsError::ClientCa {
                index,
                detail: e.to_string(),
            })?;
        }
    }
    Ok(roots)
}

/// The verifier used in the handshake and the one used for
/// [`ServerTls::client_certificate_status`].
#[allow(clippy::type_complexity)]
fn client_verifiers(
    mode: ClientCertMode,
    roots: RootCertStore,
    provider: &Arc<CryptoProvider>,
) -> Result<
    (
        Arc<dyn ClientCertVerifier>,
        Option<Arc<dyn ClientCertVerifier>>,
    ),
    TlsError,
> {
    let webpki = |roots: RootCertStore| {
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))
    };
    match mode {
        ClientCertMode::None => Ok((WebPkiClientVerifier::no_client_auth(), None)),
        ClientCertMode::Require => {
            if roots.is_empty() {
                return Err(TlsError::NoClientCa);
            }
            let verifier = webpki(roots)?;
            Ok((verifier.clone(), Some(verifier)))
        }
        ClientCertMode::Request => {
            let hints = roots.subjects();
            let trust = if roots.is_empty() {
                None
            } else {
                Some(webpki(roots)?)
            };
            let verifier = Arc::new(RequestAnyClientCert {
                hints,
                signatures: HandshakeSignatures::of(provider),
            });
            Ok((verifier, trust))
        }
    }
}

/// `request` mode in the handshake: ask for a certificate, accept any or
/// none. The client must still prove it holds the certificate's key (the
/// CertificateVerify signature is checked), so a logged subject is at least
/// the subject of a key the client owns.
#[derive(Debug)]
struct RequestAnyClientCert {
    hints: Vec<DistinguishedName>,
    signatures: HandshakeSignatures,
}

impl ClientCertVerifier for RequestAnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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

/// Chooses the served certificate by the client's signature schemes.
#[derive(Debug)]
struct CertChoice {
    /// In order of preference; never empty.
    keys: Vec<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertChoice {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = client_hello.signature_schemes();
        self.keys
            .iter()
            .find(|k| k.key.choose_scheme(schemes).is_some())
            .or_else(|| self.keys.first())
            .cloned()
    }
}

/// Why a client certificate did not verify, in words for the mail log.
fn verification_reason(error: &rustls::Error) -> String {
    let rustls::Error::InvalidCertificate(error) = error else {
        return error.to_string();
    };
    match error {
        CertificateError::UnknownIssuer => "not issued by a trusted client CA".into(),
        CertificateError::BadSignature => "bad signature in the certificate chain".into(),
        CertificateError::BadEncoding => "malformed certificate".into(),
        CertificateError::Expired => "certificate expired".into(),
        CertificateError::NotValidYet => "certificate not valid yet".into(),
        CertificateError::Revoked => "certificate revoked".into(),
        CertificateError::InvalidPurpose => {
            "certificate not valid for client authentication (extended key usage)".into()
        }
        CertificateError::UnsupportedSignatureAlgorithmContext { .. } => {
            "unsupported signature algorithm in the certificate chain".into()
        }
        other => other.to_string(),
    }
}
