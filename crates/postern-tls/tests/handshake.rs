//! In-memory handshakes (no sockets) between a rustls client and the server
//! configuration built by `ServerTls`: client-certificate modes, protocol
//! versions, resumption and certificate choice.

use std::sync::{Arc, Mutex};

use postern_config::{ClientCertMode, TlsVersion};
use postern_tls::{
    describe_der, generate_self_signed, negotiated, parse_chain, parse_key, CertKeyPem,
    ClientCertStatus, Generated, InboundTlsParams, KeyKind, ServerTls, TlsError,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, RootCertStore,
    ServerConnection, SignatureScheme, SupportedProtocolVersion,
};

const SERVER_NAME: &str = "mx.example.test";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_cert() -> Generated {
    generate_self_signed(KeyKind::EcdsaP256, SERVER_NAME, &[]).expect("server cert")
}

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn make_ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("CA cert");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A client certificate issued by `ca`: (chain PEM, key PEM).
fn issue_client_cert(ca: &Ca, cn: &str) -> (String, String) {
    let key = KeyPair::generate().expect("client key");
    let mut params = CertificateParams::new(Vec::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca.issuer).expect("client cert");
    (cert.pem(), key.serialize_pem())
}

fn server_tls(
    cert: &Generated,
    mode: ClientCertMode,
    cas: &[&str],
    min_version: TlsVersion,
) -> ServerTls {
    ServerTls::build(&InboundTlsParams {
        chain_pem: &cert.chain_pem,
        key_pem: &cert.key_pem,
        client_certificate: mode,
        client_ca_pems: cas.to_vec(),
        min_version,
        session_tickets: true,
    })
    .expect("server config")
}

fn client_config(
    server_cert: &Generated,
    client_auth: Option<&(String, String)>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for der in parse_chain(&server_cert.chain_pem).expect("chain") {
        roots.add(der).expect("root");
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client_auth {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                parse_chain(chain).expect("chain"),
                parse_key(key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[derive(Debug)]
#[allow(dead_code)] // the errors are read through Debug in failure messages
enum Failure {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Move bytes between the two ends until neither has anything to say.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), Failure> {
    for _ in 0..32 {
        let mut progressed = false;

        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).expect("client write_tls");
        }
        if !buf.is_empty() {
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).expect("server read_tls");
                if let Err(e) = server.process_new_packets() {
                    let mut alert = Vec::new();
                    while server.wants_write() {
                        server.write_tls(&mut alert).expect("server alert");
                    }
                    let _ = client.read_tls(&mut &alert[..]);
                    let _ = client.process_new_packets();
                    return Err(Failure::Server(e));
                }
            }
        }

        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).expect("server write_tls");
        }
        if !buf.is_empty() {
            progressed = true;
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).expect("client read_tls");
                if let Err(e) = client.process_new_packets() {
                    return Err(Failure::Client(e));
                }
            }
        }

        if !progressed {
            break;
        }
    }
    assert!(
        !client.is_handshaking() && !server.is_handshaking(),
        "stalled handshake"
    );
    Ok(())
}

fn connect(
    client_config: &Arc<ClientConfig>,
    server_tls: &ServerTls,
) -> (ClientConnection, ServerConnection, Result<(), Failure>) {
    let name = ServerName::try_from(SERVER_NAME).expect("name");
    let mut client = ClientConnection::new(client_config.clone(), name).expect("client");
    let mut server = ServerConnection::new(server_tls.config.clone()).expect("server");
    let result = pump(&mut client, &mut server);
    (client, server, result)
}

/// Send a line from client to server over the established connection.
fn exchange(client: &mut ClientConnection, server: &mut ServerConnection) {
    use std::io::{Read, Write};
    client
        .writer()
        .write_all(b"EHLO client.test\r\n")
        .expect("write");
    pump(client, server).expect("pump data");
    let mut got = [0u8; 18];
    server.reader().read_exact(&mut got).expect("read");
    assert_eq!(&got, b"EHLO client.test\r\n");
}

#[test]
fn none_mode_handshake_and_names() {
    let cert = server_cert();
    let tls = server_tls(&cert, ClientCertMode::None, &[], TlsVersion::V1_2);
    let (mut client, mut server, result) = connect(&client_config(&cert, None, BOTH), &tls);
    result.expect("handshake");
    exchange(&mut client, &mut server);
    let n = negotiated(&server).expect("negotiated");
    assert_eq!(n.version, "TLSv1.3");
    assert_eq!(n.cipher, "TLS13_AES_256_GCM_SHA384");
    assert!(n.key_exchange.is_some());
    assert_eq!(
        tls.client_certificate_status(server.peer_certificates()),
        ClientCertStatus::NotPresented
    );

    let (_, server, result) = connect(&client_config(&cert, None, TLS12_ONLY), &tls);
    result.expect("TLS 1.2 handshake");
    let n = negotiated(&server).expect("negotiated");
    assert_eq!(n.version, "TLSv1.2");
    assert_eq!(n.cipher, "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384");
}

#[test]
fn none_mode_does_not_ask_for_a_certificate() {
    let cert = server_cert();
    let ca = make_ca("Agents CA");
    let agent = issue_client_cert(&ca, "agent.corp.example");
    let tls = server_tls(&cert, ClientCertMode::None, &[&ca.pem], TlsVersion::V1_2);
    let (_, server, result) = connect(&client_config(&cert, Some(&agent), BOTH), &tls);
    result.expect("handshake");
    assert!(server.peer_certificates().is_none());
}

#[test]
fn require_mode() {
    let cert = server_cert();
    let trusted = make_ca("Agents CA");
    let other = make_ca("Other CA");
    let tls = server_tls(
        &cert,
        ClientCertMode::Require,
        &[&trusted.pem],
        TlsVersion::V1_2,
    );

    for versions in [BOTH, TLS12_ONLY] {
        let (_, _, result) = connect(&client_config(&cert, None, versions), &tls);
        assert!(
            matches!(result, Err(Failure::Server(_))),
            "no cert: {result:?}"
        );

        let stranger = issue_client_cert(&other, "stranger.example");
        let (_, _, result) = connect(&client_config(&cert, Some(&stranger), versions), &tls);
        match result {
            Err(Failure::Server(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))) => {}
            other => panic!("untrusted cert: {other:?}"),
        }

        let agent = issue_client_cert(&trusted, "agent.corp.example");
        let (mut client, mut server, result) =
            connect(&client_config(&cert, Some(&agent), versions), &tls);
        result.expect("trusted cert");
        exchange(&mut client, &mut server);
        assert_eq!(
            tls.client_certificate_status(server.peer_certificates()),
            ClientCertStatus::Verified {
                subject: "CN=agent.corp.example".into()
            }
        );
    }
}

#[test]
fn require_mode_needs_a_ca() {
    let cert = server_cert();
    let result = ServerTls::build(&InboundTlsParams {
        chain_pem: &cert.chain_pem,
        key_pem: &cert.key_pem,
        client_certificate: ClientCertMode::Require,
        client_ca_pems: Vec::new(),
        min_version: TlsVersion::V1_2,
        session_tickets: true,
    });
    assert_eq!(result.err(), Some(TlsError::NoClientCa));
}

#[test]
fn request_mode() {
    let cert = server_cert();
    let trusted = make_ca("Agents CA");
    let other = make_ca("Other CA");
    let tls = server_tls(
        &cert,
        ClientCertMode::Request,
        &[&trusted.pem],
        TlsVersion::V1_2,
    );

    for versions in [BOTH, TLS12_ONLY] {
        let (_, server, result) = connect(&client_config(&cert, None, versions), &tls);
        result.expect("no cert");
        assert_eq!(
            tls.client_certificate_status(server.peer_certificates()),
            ClientCertStatus::NotPresented
        );

        let stranger = issue_client_cert(&other, "stranger.example");
        let (mut client, mut server, result) =
            connect(&client_config(&cert, Some(&stranger), versions), &tls);
        result.expect("untrusted cert is accepted in request mode");
        exchange(&mut client, &mut server);
        let status = tls.client_certificate_status(server.peer_certificates());
        assert_eq!(
            status,
            ClientCertStatus::Unverified {
                subject: "CN=stranger.example".into(),
                reason: "not issued by a trusted client CA".into(),
            }
        );
        assert!(!status.is_verified());

        let agent = issue_client_cert(&trusted, "agent.corp.example");
        let (_, server, result) = connect(&client_config(&cert, Some(&agent), versions), &tls);
        result.expect("trusted cert");
        assert_eq!(
            tls.client_certificate_status(server.peer_certificates()),
            ClientCertStatus::Verified {
                subject: "CN=agent.corp.example".into()
            }
        );
    }
}

/// Records the CA names a server sends in its CertificateRequest.
#[derive(Debug, Default)]
struct RecordHints(Mutex<Vec<Vec<u8>>>);

impl ResolvesClientCert for RecordHints {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let mut hints = self.0.lock().expect("lock");
        hints.extend(root_hint_subjects.iter().map(|s| s.to_vec()));
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[test]
fn request_mode_names_the_trusted_cas() {
    let cert = server_cert();
    let trusted = make_ca("Agents CA");
    let tls = server_tls(
        &cert,
        ClientCertMode::Request,
        &[&trusted.pem],
        TlsVersion::V1_2,
    );
    let hints = Arc::new(RecordHints::default());
    let mut roots = RootCertStore::empty();
    for der in parse_chain(&cert.chain_pem).expect("chain") {
        roots.add(der).expect("root");
    }
    let config = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(BOTH)
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_cert_resolver(hints.clone()),
    );
    let (_, server, result) = connect(&config, &tls);
    result.expect("handshake without a certificate");
    assert_eq!(
        tls.client_certificate_status(server.peer_certificates()),
        ClientCertStatus::NotPresented
    );
    let hints = hints.0.lock().expect("lock");
    assert_eq!(hints.len(), 1);
    assert!(hints[0].windows(9).any(|w| w == b"Agents CA"));
}

#[test]
fn request_mode_without_cas_reports_unverified() {
    let cert = server_cert();
    let tls = server_tls(&cert, ClientCertMode::Request, &[], TlsVersion::V1_2);
    let stranger = issue_client_cert(&make_ca("Other CA"), "stranger.example");
    let (_, server, result) = connect(&client_config(&cert, Some(&stranger), BOTH), &tls);
    result.expect("handshake");
    match tls.client_certificate_status(server.peer_certificates()) {
        ClientCertStatus::Unverified { reason, .. } => {
            assert_eq!(reason, "no trusted client CA is configured")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn min_version_1_3_refuses_a_tls12_client() {
    let cert = server_cert();
    let tls = server_tls(&cert, ClientCertMode::None, &[], TlsVersion::V1_3);
    let (_, _, result) = connect(&client_config(&cert, None, TLS12_ONLY), &tls);
    match result {
        Err(Failure::Server(rustls::Error::PeerIncompatible(_))) => {}
        other => panic!("expected a refused handshake: {other:?}"),
    }
    let (_, server, result) = connect(&client_config(&cert, None, BOTH), &tls);
    result.expect("TLS 1.3 client");
    assert_eq!(negotiated(&server).expect("negotiated").version, "TLSv1.3");
}

#[test]
fn sessions_resume() {
    let cert = server_cert();
    let tls = server_tls(&cert, ClientCertMode::None, &[], TlsVersion::V1_2);
    for versions in [BOTH, TLS12_ONLY] {
        let config = client_config(&cert, None, versions);
        let (mut client, mut server, result) = connect(&config, &tls);
        result.expect("first handshake");
        // TLS 1.3 tickets travel after the handshake.
        exchange(&mut client, &mut server);
        assert_eq!(server.handshake_kind(), Some(HandshakeKind::Full));
        let (_, server, result) = connect(&config, &tls);
        result.expect("second handshake");
        assert_eq!(
            server.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{versions:?}"
        );
        // A rebuilt configuration (settings changed) does not resume
        // sessions made under the old one.
        let rebuilt = server_tls(&cert, ClientCertMode::None, &[], TlsVersion::V1_2);
        let (_, server, result) = connect(&config, &rebuilt);
        result.expect("handshake after rebuild");
        assert_eq!(
            server.handshake_kind(),
            Some(HandshakeKind::Full),
            "{versions:?}"
        );
    }
}

#[test]
fn tickets_off_sends_none_and_tls12_still_resumes_by_session_id() {
    let cert = server_cert();
    let tls = ServerTls::build(&InboundTlsParams {
        chain_pem: &cert.chain_pem,
        key_pem: &cert.key_pem,
        client_certificate: ClientCertMode::None,
        client_ca_pems: Vec::new(),
        min_version: TlsVersion::V1_2,
        session_tickets: false,
    })
    .expect("server config");
    for (versions, expected) in [
        (BOTH, HandshakeKind::Full),
        (TLS12_ONLY, HandshakeKind::Resumed),
    ] {
        let config = client_config(&cert, None, versions);
        let (mut client, mut server, result) = connect(&config, &tls);
        result.expect("first handshake");
        exchange(&mut client, &mut server);
        let (_, server, result) = connect(&config, &tls);
        result.expect("second handshake");
        assert_eq!(server.handshake_kind(), Some(expected), "{versions:?}");
    }
}

#[test]
fn rsa_alternate_refused() {
    let primary = generate_self_signed(KeyKind::Rsa2048, SERVER_NAME, &[]).expect("rsa");
    let other = generate_self_signed(KeyKind::Rsa2048, SERVER_NAME, &[]).expect("rsa");
    let err = ServerTls::build_with_alternates(
        &InboundTlsParams {
            chain_pem: &primary.chain_pem,
            key_pem: &primary.key_pem,
            client_certificate: ClientCertMode::None,
            client_ca_pems: Vec::new(),
            min_version: TlsVersion::V1_2,
            session_tickets: true,
        },
        &[CertKeyPem {
            chain_pem: &other.chain_pem,
            key_pem: &other.key_pem,
        }],
    )
    .expect_err("an RSA alternate is useless");
    assert!(err.to_string().contains("RSA key"), "{err}");
}

#[test]
fn resumed_session_keeps_the_client_certificate() {
    let cert = server_cert();
    let trusted = make_ca("Agents CA");
    let tls = server_tls(
        &cert,
        ClientCertMode::Request,
        &[&trusted.pem],
        TlsVersion::V1_2,
    );
    let agent = issue_client_cert(&trusted, "agent.corp.example");
    let config = client_config(&cert, Some(&agent), BOTH);
    let (mut client, mut server, result) = connect(&config, &tls);
    result.expect("first handshake");
    exchange(&mut client, &mut server);
    let (_, server, result) = connect(&config, &tls);
    result.expect("second handshake");
    assert_eq!(server.handshake_kind(), Some(HandshakeKind::Resumed));
    assert!(tls
        .client_certificate_status(server.peer_certificates())
        .is_verified());
}

/// A client that accepts any server certificate but offers only the given
/// signature schemes.
#[derive(Debug)]
struct OnlySchemes(Vec<SignatureScheme>);

impl ServerCertVerifier for OnlySchemes {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.clone()
    }
}

fn client_with_schemes(
    schemes: Vec<SignatureScheme>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(OnlySchemes(schemes)))
            .with_no_client_auth(),
    )
}

#[test]
fn ecdsa_beside_rsa() {
    let rsa = generate_self_signed(KeyKind::Rsa2048, SERVER_NAME, &[]).expect("rsa");
    let ecdsa = server_cert();
    let tls = ServerTls::build_with_alternates(
        &InboundTlsParams {
            chain_pem: &rsa.chain_pem,
            key_pem: &rsa.key_pem,
            client_certificate: ClientCertMode::None,
            client_ca_pems: Vec::new(),
            min_version: TlsVersion::V1_2,
            session_tickets: true,
        },
        &[CertKeyPem {
            chain_pem: &ecdsa.chain_pem,
            key_pem: &ecdsa.key_pem,
        }],
    )
    .expect("server config");

    let served_key = |client: &ClientConnection| {
        let certs = client.peer_certificates().expect("server certs");
        describe_der(certs).expect("describe").key_type
    };

    let all = provider()
        .signature_verification_algorithms
        .supported_schemes();
    let rsa_only = vec![
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];
    for versions in [BOTH, TLS12_ONLY] {
        let (client, _, result) = connect(&client_with_schemes(all.clone(), versions), &tls);
        result.expect("handshake");
        assert_eq!(served_key(&client), "ECDSA P-256", "{versions:?}");

        let (client, _, result) = connect(&client_with_schemes(rsa_only.clone(), versions), &tls);
        result.expect("handshake");
        assert_eq!(served_key(&client), "RSA", "{versions:?}");
    }
}

#[test]
fn build_refuses_bad_material() {
    let a = server_cert();
    let b = server_cert();
    let params = InboundTlsParams {
        chain_pem: &a.chain_pem,
        key_pem: &b.key_pem,
        client_certificate: ClientCertMode::None,
        client_ca_pems: Vec::new(),
        min_version: TlsVersion::V1_2,
        session_tickets: true,
    };
    assert_eq!(ServerTls::build(&params).err(), Some(TlsError::KeyMismatch));

    let params = InboundTlsParams {
        chain_pem: &a.chain_pem,
        key_pem: &a.key_pem,
        client_certificate: ClientCertMode::Request,
        client_ca_pems: vec!["not a certificate"],
        min_version: TlsVersion::V1_2,
        session_tickets: true,
    };
    match ServerTls::build(&params).err() {
        Some(TlsError::ClientCa { index: 1, detail }) => {
            assert!(detail.contains("no CERTIFICATE block"), "{detail}")
        }
        other => panic!("{other:?}"),
    }
}
