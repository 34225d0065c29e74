//! The SMTP client against real receivers on loopback: every outbound TLS
//! mode × every server variant (SPEC §6), opportunistic fallback, STARTTLS
//! injection, connection reuse, per-recipient outcomes, pipelining,
//! SMTPUTF8, SIZE, dot-stuffing, resumption, timeouts.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use postern_config::OutboundMode;
use postern_delivery::{
    deliver, AttemptError, ClientTls, Connection, FailureKind, Fault, MessageBody, Outgoing,
    RecipientOutcome, Requirement, Source, Stage, TlsPolicyFailure,
};
use rustls::HandshakeKind;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HELO: &str = "gw.example.test";

fn recipients(list: &[&str]) -> Vec<String> {
    list.iter().map(|r| r.to_string()).collect()
}

async fn open(
    server: SocketAddr,
    host: &str,
    tls: &ClientTls,
    mode: OutboundMode,
) -> Result<Connection, AttemptError> {
    Connection::open(host, server, tls, &at(mode, host), HELO, &timeouts()).await
}

/// The requirement the global mode alone gives for `host`.
fn at(mode: OutboundMode, host: &str) -> Requirement {
    Requirement::at(mode, Source::Global, host)
}

/// Open, send one message to bob@partner.test, quit.
async fn send_one(
    server: SocketAddr,
    host: &str,
    tls: &ClientTls,
    mode: OutboundMode,
) -> Result<(Vec<RecipientOutcome>, postern_delivery::AttemptRecord), AttemptError> {
    let mut connection = open(server, host, tls, mode).await?;
    let to = recipients(&["bob@partner.test"]);
    let body = message("matrix");
    let outcomes = connection
        .send(&Outgoing {
            sender: "alice@example.test",
            recipients: &to,
            message: &MessageBody::from_bytes(body.clone()),
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
        })
        .await?;
    let record = connection.record().clone();
    connection.quit().await;
    Ok((outcomes, record))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Delivered without TLS.
    Plain,
    /// Delivered without TLS after a failed handshake (opportunistic).
    Fallback,
    /// Delivered over TLS; whether the certificate verified.
    Tls { verified: bool },
    /// Deferred by TLS policy.
    Defer,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_against_every_server_variant() {
    bounded(async {
        let ca = TestCa::new("Partner Test CA");
        let (chain, key) = ca.issue(&[MX_NAME]);
        let ca_issued = server_tls(&chain, &key);
        let self_signed = self_signed_tls();
        let tls = client_tls(&[&ca.pem]);

        use Expect::*;
        use OutboundMode::*;
        let variants: Vec<(&str, TlsLayer, &str, [Expect; 4])> = vec![
            (
                "plaintext only",
                TlsLayer::Off,
                MX_NAME,
                [Plain, Plain, Defer, Defer],
            ),
            (
                "self-signed",
                TlsLayer::Real(self_signed.clone()),
                MX_NAME,
                [
                    Plain,
                    Tls { verified: false },
                    Tls { verified: false },
                    Defer,
                ],
            ),
            (
                "CA-issued",
                TlsLayer::Real(ca_issued.clone()),
                MX_NAME,
                [
                    Plain,
                    Tls { verified: true },
                    Tls { verified: true },
                    Tls { verified: true },
                ],
            ),
            (
                "CA-issued, other host name",
                TlsLayer::Real(ca_issued.clone()),
                "mx2.partner.test",
                [
                    Plain,
                    Tls { verified: false },
                    Tls { verified: false },
                    Defer,
                ],
            ),
            (
                "broken TLS",
                TlsLayer::Broken,
                MX_NAME,
                [Plain, Fallback, Defer, Defer],
            ),
        ];
        for (name, layer, host, expected) in variants {
            for (mode, expect) in [None, Opportunistic, Require, Verify]
                .into_iter()
                .zip(expected)
            {
                let server = TestServer::start(ServerOptions::new(layer.clone())).await;
                let result = send_one(server.addr, host, &tls, mode).await;
                let context = format!("{name} × {mode:?}");
                match expect {
                    Defer => {
                        let error = result
                            .err()
                            .unwrap_or_else(|| panic!("{context}: delivered"));
                        assert!(
                            matches!(error.failure.kind, FailureKind::TlsPolicy(_)),
                            "{context}: {error}"
                        );
                        assert!(
                            !error.failure.is_permanent(),
                            "{context}: TLS policy is temporary"
                        );
                        assert!(
                            error
                                .failure
                                .last_error()
                                .starts_with(&format!("{host}[127.0.0.1]: ")),
                            "{context}: {error}"
                        );
                        assert!(server.seen.deliveries().is_empty(), "{context}");
                    }
                    Plain | Fallback | Tls { .. } => {
                        let (outcomes, record) =
                            result.unwrap_or_else(|e| panic!("{context}: {e}"));
                        assert!(
                            outcomes.iter().all(RecipientOutcome::is_delivered),
                            "{context}: {outcomes:?}"
                        );
                        assert_eq!(server.seen.deliveries().len(), 1, "{context}");
                        assert_eq!(record.mode, mode);
                        assert_eq!(record.host, host);
                        assert_eq!(record.ip.to_string(), "127.0.0.1");
                        assert!(
                            record.reply.starts_with("250 "),
                            "{context}: {}",
                            record.reply
                        );
                        match expect {
                            Plain => {
                                assert!(!record.is_tls(), "{context}");
                                assert!(!record.tls_fallback_plaintext, "{context}");
                                assert_eq!(record.cert_verified, Option::None, "{context}");
                            }
                            Fallback => {
                                assert!(!record.is_tls(), "{context}");
                                assert!(record.tls_fallback_plaintext, "{context}");
                                assert!(record.tls_error.is_some(), "{context}");
                                assert_eq!(server.seen.connections(), 2, "{context}: reconnected");
                            }
                            Tls { verified } => {
                                assert!(record.is_tls(), "{context}");
                                assert!(record
                                    .tls_version
                                    .as_deref()
                                    .is_some_and(|v| v.starts_with("TLSv1.")));
                                assert!(record.cipher.is_some(), "{context}");
                                assert_eq!(
                                    record.cert_verified,
                                    Some(verified),
                                    "{context}: {record:?}"
                                );
                                assert_eq!(record.verify_error.is_some(), !verified, "{context}");
                                let delivered = &server.seen.deliveries()[0];
                                assert!(delivered.tls.is_some(), "{context}: server saw TLS");
                            }
                            Defer => unreachable!(),
                        }
                    }
                }
            }
        }
    })
    .await;
}

#[tokio::test]
async fn policy_failures_name_host_and_reason() {
    bounded(async {
        let tls = client_tls(&[]);
        let plain = TestServer::start(ServerOptions::new(TlsLayer::Off)).await;
        let error = send_one(plain.addr, MX_NAME, &tls, OutboundMode::Require)
            .await
            .unwrap_err();
        assert_eq!(
            error.failure.last_error(),
            "mx.partner.test[127.0.0.1]: global require: TLS required but STARTTLS not offered"
        );
        assert_eq!(error.failure.fault(), Fault::PeerIncompatible);
        assert!(!error.record.starttls_offered);

        let self_signed =
            TestServer::start(ServerOptions::new(TlsLayer::Real(self_signed_tls()))).await;
        let error = send_one(self_signed.addr, MX_NAME, &tls, OutboundMode::Verify)
            .await
            .unwrap_err();
        let text = error.failure.last_error();
        assert!(
            text.starts_with(
                "mx.partner.test[127.0.0.1]: global verify: certificate verification failed: "
            ),
            "{text}"
        );
        assert_eq!(error.record.cert_verified, Some(false));
        assert!(error.record.verify_error.is_some());

        let broken = TestServer::start(ServerOptions::new(TlsLayer::Broken)).await;
        let error = send_one(broken.addr, MX_NAME, &tls, OutboundMode::Require)
            .await
            .unwrap_err();
        assert!(
            matches!(
                error.failure.kind,
                FailureKind::TlsPolicy(TlsPolicyFailure::HandshakeFailed(_))
            ),
            "{error}"
        );
        assert!(
            error.failure.last_error().starts_with(
                "mx.partner.test[127.0.0.1]: global require: TLS required but the handshake \
                 failed: the server did not speak TLS"
            ),
            "{error}"
        );
        assert_eq!(
            error
                .record
                .tls_error
                .as_deref()
                .map(|e| e.starts_with("TLS handshake failed: ")),
            Some(true)
        );
        assert_eq!(
            broken.seen.connections(),
            1,
            "no plaintext retry in require mode"
        );
    })
    .await;
}

#[tokio::test]
async fn ip_literal_next_hop_verifies_against_ip_san() {
    bounded(async {
        let ca = TestCa::new("Partner Test CA");
        let tls = client_tls(&[&ca.pem]);

        let (chain, key) = ca.issue(&["relay.partner.test", "127.0.0.1"]);
        let with_ip =
            TestServer::start(ServerOptions::new(TlsLayer::Real(server_tls(&chain, &key)))).await;
        let (_, record) = send_one(with_ip.addr, "127.0.0.1", &tls, OutboundMode::Verify)
            .await
            .expect("IP SAN verifies");
        assert_eq!(record.cert_verified, Some(true));

        let (chain, key) = ca.issue(&["relay.partner.test"]);
        let without_ip =
            TestServer::start(ServerOptions::new(TlsLayer::Real(server_tls(&chain, &key)))).await;
        let error = send_one(without_ip.addr, "127.0.0.1", &tls, OutboundMode::Verify)
            .await
            .unwrap_err();
        let text = error.failure.last_error();
        assert!(text.contains("does not match 127.0.0.1"), "{text}");
    })
    .await;
}

#[tokio::test]
async fn starttls_injection_is_a_protocol_error() {
    bounded(async {
        let tls = client_tls(&[]);
        let server = TestServer::start(ServerOptions::new(TlsLayer::Inject)).await;
        for mode in [OutboundMode::Opportunistic, OutboundMode::Require] {
            let error = send_one(server.addr, MX_NAME, &tls, mode)
                .await
                .unwrap_err();
            assert!(
                matches!(error.failure.kind, FailureKind::Protocol(_)),
                "{error}"
            );
            assert!(
                error.failure.last_error().contains("command injection"),
                "{error}"
            );
            assert!(!error.failure.is_permanent());
        }
        assert!(server.seen.deliveries().is_empty());
    })
    .await;
}

#[tokio::test]
async fn two_messages_on_one_connection() {
    bounded(async {
        let tls = client_tls(&[]);
        let server = TestServer::start(ServerOptions::new(TlsLayer::Real(self_signed_tls()))).await;
        let mut connection = open(server.addr, MX_NAME, &tls, OutboundMode::Require)
            .await
            .expect("open");
        for subject in ["first", "second"] {
            let to = recipients(&["bob@partner.test"]);
            let body = message(subject);
            let outcomes = connection
                .send(&Outgoing {
                    sender: "alice@example.test",
                    recipients: &to,
                    message: &MessageBody::from_bytes(body.clone()),
                    smtputf8: false,
                    requiretls: false,
                    tls_required_no: false,
                })
                .await
                .expect("send");
            assert!(outcomes[0].is_delivered(), "{outcomes:?}");
        }
        connection.quit().await;
        let deliveries = server.seen.deliveries();
        assert_eq!(deliveries.len(), 2);
        assert_eq!(server.seen.connections(), 1);
        assert!(String::from_utf8_lossy(&deliveries[1].message).contains("Subject: second"));
        assert!(deliveries.iter().all(|d| d.tls.is_some()));
    })
    .await;
}

#[tokio::test]
async fn rcpt_5xx_is_per_recipient_and_permanent() {
    bounded(async {
        let tls = client_tls(&[]);
        let mut options = ServerOptions::new(TlsLayer::Off);
        options.relay_domains = vec!["partner.test"];
        let server = TestServer::start(options).await;
        let mut connection = open(server.addr, MX_NAME, &tls, OutboundMode::Opportunistic)
            .await
            .expect("open");

        let to = recipients(&[
            "bob@partner.test",
            "eve@elsewhere.test",
            "carol@partner.test",
        ]);
        let body = message("mixed");
        let outcomes = connection
            .send(&Outgoing {
                sender: "alice@example.test",
                recipients: &to,
                message: &MessageBody::from_bytes(body.clone()),
                smtputf8: false,
                requiretls: false,
                tls_required_no: false,
            })
            .await
            .expect("send");
        assert_eq!(outcomes.len(), 3);
        assert!(outcomes[0].is_delivered());
        assert!(outcomes[2].is_delivered());
        let failure = outcomes[1].failure().expect("eve refused");
        assert_eq!(outcomes[1].recipient, "eve@elsewhere.test");
        assert!(failure.is_permanent());
        assert_eq!(failure.status(), "5.7.1");
        assert_eq!(
            failure.last_error(),
            "mx.partner.test[127.0.0.1]: 554 5.7.1 Relaying denied (in reply to RCPT TO)"
        );
        assert_eq!(failure.diagnostic_code(), "smtp; 554 5.7.1 Relaying denied");
        let deliveries = server.seen.deliveries();
        assert_eq!(deliveries.len(), 1);
        assert_eq!(
            deliveries[0].recipients,
            ["bob@partner.test", "carol@partner.test"]
        );

        // Every recipient refused: no DATA, and the connection stays usable.
        let to = recipients(&["eve@elsewhere.test"]);
        let outcomes = connection
            .send(&Outgoing {
                sender: "alice@example.test",
                recipients: &to,
                message: &MessageBody::from_bytes(body.clone()),
                smtputf8: false,
                requiretls: false,
                tls_required_no: false,
            })
            .await
            .expect("send");
        assert!(outcomes[0].failure().is_some_and(|f| f.is_permanent()));
        assert!(connection.is_usable());
        let to = recipients(&["bob@partner.test"]);
        let outcomes = connection
            .send(&Outgoing {
                sender: "alice@example.test",
                recipients: &to,
                message: &MessageBody::from_bytes(body.clone()),
                smtputf8: false,
                requiretls: false,
                tls_required_no: false,
            })
            .await
            .expect("send");
        assert!(outcomes[0].is_delivered());
        connection.quit().await;
        assert_eq!(server.seen.deliveries().len(), 2);
        assert_eq!(server.seen.connections(), 1);
    })
    .await;
}

#[tokio::test]
async fn pipelining_when_advertised_only() {
    bounded(async {
        let tls = client_tls(&[]);
        let to = recipients(&["a@partner.test", "b@partner.test", "c@partner.test"]);
        let body = message("pipelined");
        let outgoing = Outgoing {
            sender: "alice@example.test",
            recipients: &to,
            message: &MessageBody::from_bytes(body.clone()),
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
        };

        let server = TestServer::start(ServerOptions::new(TlsLayer::Off)).await;
        let report = deliver(
            MX_NAME,
            server.addr,
            &tls,
            &at(OutboundMode::None, MX_NAME),
            HELO,
            &timeouts(),
            &[outgoing],
        )
        .await
        .expect("deliver");
        assert!(report.messages[0]
            .as_ref()
            .expect("sent")
            .iter()
            .all(RecipientOutcome::is_delivered));
        let reads = server.seen.reads();
        assert!(
            reads.iter().any(|r| r.starts_with("MAIL FROM:")
                && r.matches("RCPT TO:").count() == 3
                && r.ends_with("DATA\r\n")),
            "MAIL, RCPTs and DATA in one write: {reads:?}"
        );

        let mut options = ServerOptions::new(TlsLayer::Off);
        options.hide = vec!["PIPELINING"];
        let server = TestServer::start(options).await;
        let mut connection = open(server.addr, MX_NAME, &tls, OutboundMode::None)
            .await
            .expect("open");
        assert!(!connection.capabilities().pipelining);
        let outcomes = connection.send(&outgoing).await.expect("send");
        assert!(outcomes.iter().all(RecipientOutcome::is_delivered));
        connection.quit().await;
        let reads = server.seen.reads();
        assert!(
            reads
                .iter()
                .all(|r| r.matches("RCPT TO:").count() + r.matches("MAIL FROM:").count() <= 1),
            "one command per write: {reads:?}"
        );
        assert_eq!(server.seen.deliveries().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn smtputf8_and_size_limits() {
    bounded(async {
        let tls = client_tls(&[]);
        let body = message("utf8");
        let utf8_to = recipients(&["jörg@partner.test"]);
        let utf8 = Outgoing {
            sender: "alice@example.test",
            recipients: &utf8_to,
            message: &MessageBody::from_bytes(body.clone()),
            smtputf8: true,
            requiretls: false,
            tls_required_no: false,
        };

        // Offered: delivered with SMTPUTF8.
        let server = TestServer::start(ServerOptions::new(TlsLayer::Off)).await;
        let mut connection = open(server.addr, MX_NAME, &tls, OutboundMode::None)
            .await
            .expect("open");
        let outcomes = connection.send(&utf8).await.expect("send");
        assert!(outcomes[0].is_delivered(), "{outcomes:?}");
        connection.quit().await;
        let delivered = server.seen.deliveries();
        assert!(delivered[0].smtputf8);
        assert_eq!(delivered[0].recipients, ["jörg@partner.test"]);

        // Not offered: permanent 5.6.7, nothing sent, connection still usable.
        let mut options = ServerOptions::new(TlsLayer::Off);
        options.hide = vec!["SMTPUTF8"];
        let server = TestServer::start(options).await;
        let mut connection = open(server.addr, MX_NAME, &tls, OutboundMode::None)
            .await
            .expect("open");
        let outcomes = connection.send(&utf8).await.expect("send");
        let failure = outcomes[0].failure().expect("refused");
        assert!(failure.is_permanent());
        assert_eq!(failure.status(), "5.6.7");
        assert!(connection.is_usable());
        // An ASCII message goes through on the same connection.
        let ascii_to = recipients(&["bob@partner.test"]);
        let ascii = Outgoing {
            sender: "alice@example.test",
            recipients: &ascii_to,
            message: &MessageBody::from_bytes(body.clone()),
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
        };
        assert!(connection.send(&ascii).await.expect("send")[0].is_delivered());
        connection.quit().await;
        assert_eq!(server.seen.deliveries().len(), 1);

        // Over the advertised SIZE: permanent 5.3.4 without sending.
        let mut options = ServerOptions::new(TlsLayer::Off);
        options.max_message_size = 100;
        let server = TestServer::start(options).await;
        let mut connection = open(server.addr, MX_NAME, &tls, OutboundMode::None)
            .await
            .expect("open");
        assert_eq!(connection.capabilities().size, Some(100));
        let outcomes = connection.send(&ascii).await.expect("send");
        let failure = outcomes[0].failure().expect("too big");
        assert_eq!(failure.status(), "5.3.4");
        assert!(failure.is_permanent());
        connection.quit().await;
        assert!(server.seen.deliveries().is_empty());
        assert!(!server.seen.reads().iter().any(|r| r.contains("MAIL FROM")));
    })
    .await;
}

#[tokio::test]
async fn dot_stuffing_round_trips() {
    bounded(async {
        let tls = client_tls(&[]);
        let server = TestServer::start(ServerOptions::new(TlsLayer::Real(self_signed_tls()))).await;
        let original =
            b"Subject: dots\r\n\r\n.leading dot\r\n..two dots\r\n.\r\nmiddle . dot\r\n.".to_vec();
        let to = recipients(&["bob@partner.test"]);
        let report = deliver(
            MX_NAME,
            server.addr,
            &tls,
            &at(OutboundMode::Opportunistic, MX_NAME),
            HELO,
            &timeouts(),
            &[
                Outgoing {
                    sender: "",
                    recipients: &to,
                    message: &MessageBody::from_bytes(original.clone()),
                    smtputf8: false,
                    requiretls: false,
                    tls_required_no: false,
                },
                Outgoing {
                    sender: "alice@example.test",
                    recipients: &to,
                    message: &MessageBody::from_bytes(message("after")),
                    smtputf8: false,
                    requiretls: false,
                    tls_required_no: false,
                },
            ],
        )
        .await
        .expect("deliver");
        assert!(report.record.is_tls());
        assert_eq!(report.messages.len(), 2);
        assert!(report
            .messages
            .iter()
            .all(|m| m.as_ref().is_ok_and(|o| o[0].is_delivered())));
        let deliveries = server.seen.deliveries();
        assert_eq!(deliveries.len(), 2);
        // The last line had no CRLF: one was added, nothing else changed.
        let mut expected = original.clone();
        expected.extend_from_slice(b"\r\n");
        assert_eq!(deliveries[0].message, expected);
        assert_eq!(deliveries[0].sender, "", "null sender kept");
    })
    .await;
}

/// The outbound client certificate (`tls.outbound.client_certificate`) is
/// presented to a server that asks for one.
#[tokio::test]
async fn client_certificate_is_presented() {
    bounded(async {
        let ca = TestCa::new("Partner Test CA");
        let (chain, key) = ca.issue(&[MX_NAME]);
        let server_tls = std::sync::Arc::new(
            postern_tls::ServerTls::build(&postern_tls::InboundTlsParams {
                chain_pem: &chain,
                key_pem: &key,
                client_certificate: postern_config::ClientCertMode::Request,
                client_ca_pems: vec![&ca.pem],
                min_version: Default::default(),
                session_tickets: true,
            })
            .expect("server tls"),
        );
        let server = TestServer::start(ServerOptions::new(TlsLayer::Real(server_tls))).await;
        let (client_chain, client_key) = ca.issue_client("gw.example.test");
        let tls = ClientTls::new(
            postern_delivery::TrustSources {
                system: false,
                ca_pems: vec![ca.pem.clone()],
            },
            Some((client_chain, client_key)),
        )
        .expect("client tls");
        let (outcomes, record) = send_one(server.addr, MX_NAME, &tls, OutboundMode::Verify)
            .await
            .expect("delivered");
        assert!(outcomes[0].is_delivered());
        assert_eq!(record.cert_verified, Some(true));
        let cert = server.seen.tls_infos()[0]
            .client_cert
            .clone()
            .expect("client certificate seen");
        assert!(cert.verified);
        assert!(cert.subject.contains("gw.example.test"), "{}", cert.subject);

        // A bad client certificate is refused when building the configuration.
        let error = ClientTls::new(
            postern_delivery::TrustSources::default(),
            Some(("not a pem".into(), "nor this".into())),
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("tls.outbound.client_certificate: "),
            "{error}"
        );
    })
    .await;
}

#[tokio::test]
async fn sessions_are_resumed() {
    bounded(async {
        let ca = TestCa::new("Partner Test CA");
        let (chain, key) = ca.issue(&[MX_NAME]);
        let server =
            TestServer::start(ServerOptions::new(TlsLayer::Real(server_tls(&chain, &key)))).await;
        let tls = client_tls(&[&ca.pem]);
        for mode in [
            OutboundMode::Verify,
            OutboundMode::Verify,
            OutboundMode::Require,
            OutboundMode::Require,
        ] {
            let (outcomes, record) = send_one(server.addr, MX_NAME, &tls, mode)
                .await
                .expect("delivered");
            assert!(outcomes[0].is_delivered());
            assert_eq!(
                record.cert_verified,
                Some(true),
                "{mode:?}: resumed sessions keep the result"
            );
        }
        // Each configuration resumes its own sessions only.
        assert_eq!(
            server.seen.handshakes(),
            [
                HandshakeKind::Full,
                HandshakeKind::Resumed,
                HandshakeKind::Full,
                HandshakeKind::Resumed
            ]
        );
    })
    .await;
}

#[tokio::test]
async fn connection_failures_are_temporary() {
    bounded(async {
        let tls = client_tls(&[]);
        let mut quick = timeouts();
        quick.greeting = Duration::from_millis(300);
        let open_failing = |addr| {
            let (tls, quick) = (&tls, &quick);
            async move {
                Connection::open(
                    MX_NAME,
                    addr,
                    tls,
                    &at(OutboundMode::Opportunistic, MX_NAME),
                    HELO,
                    quick,
                )
                .await
                .unwrap_err()
            }
        };

        // Nobody listening.
        let closed = {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            listener.local_addr().expect("addr")
        };
        let error = open_failing(closed).await;
        assert!(
            matches!(error.failure.kind, FailureKind::Connect(_)),
            "{error}"
        );
        assert!(!error.failure.is_permanent());
        assert!(error
            .failure
            .last_error()
            .starts_with("mx.partner.test[127.0.0.1]: connection failed: "));

        // A server that never greets.
        let (silent, _task) = raw_server(|mut tcp| async move {
            let mut sink = [0u8; 64];
            let _ = tcp.read(&mut sink).await;
        })
        .await;
        let error = open_failing(silent).await;
        assert_eq!(error.failure.kind, FailureKind::Timeout(Stage::Greeting));
        assert_eq!(
            error.failure.last_error(),
            "mx.partner.test[127.0.0.1]: timeout waiting for the greeting"
        );

        // A 554 banner refuses the connection, not the message.
        let (refusing, _task) = raw_server(|mut tcp| async move {
            let _ = tcp.write_all(b"554 5.7.1 go away\r\n").await;
            let mut sink = [0u8; 64];
            let _ = tcp.read(&mut sink).await;
            let _ = tcp.write_all(b"221 bye\r\n").await;
        })
        .await;
        let error = open_failing(refusing).await;
        assert!(!error.failure.is_permanent(), "{error}");
        assert_eq!(
            error.failure.last_error(),
            "mx.partner.test[127.0.0.1]: 554 5.7.1 go away (greeting)"
        );

        // Garbage instead of a greeting.
        let (garbage, _task) = raw_server(|mut tcp| async move {
            let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        })
        .await;
        let error = open_failing(garbage).await;
        assert!(
            matches!(error.failure.kind, FailureKind::Protocol(_)),
            "{error}"
        );
    })
    .await;
}

/// EHLO refused (502) → HELO; a 421 after RCPT ends the connection.
#[tokio::test]
async fn helo_fallback_and_421() {
    bounded(async {
        let tls = client_tls(&[]);
        let (addr, _task) = scripted(|line| match line {
            l if l.starts_with("EHLO") => b"502 command not implemented\r\n",
            l if l.starts_with("HELO") => b"250 old.partner.test\r\n",
            l if l.starts_with("MAIL FROM:<alice@example.test>\r\n") => b"250 ok\r\n",
            l if l.starts_with("RCPT TO:<busy@") => b"421 4.3.2 shutting down\r\n",
            l if l.starts_with("RCPT") => b"250 ok\r\n",
            l if l.starts_with("DATA") => b"354 go ahead\r\n",
            ".\r\n" => b"250 queued\r\n",
            _ => b"500 what\r\n",
        })
        .await;

        let mut connection = open(addr, "old.partner.test", &tls, OutboundMode::Opportunistic)
            .await
            .expect("open");
        assert!(!connection.capabilities().esmtp);
        let to = recipients(&["bob@partner.test"]);
        let body = message("helo");
        let outgoing = Outgoing {
            sender: "alice@example.test",
            recipients: &to,
            message: &MessageBody::from_bytes(body.clone()),
            smtputf8: false,
            requiretls: false,
            tls_required_no: false,
        };
        let outcomes = connection.send(&outgoing).await.expect("send");
        assert!(outcomes[0].is_delivered(), "{outcomes:?}");
        assert_eq!(connection.record().reply, "250 queued");

        let busy = recipients(&["busy@partner.test"]);
        let error = connection
            .send(&Outgoing {
                recipients: &busy,
                ..outgoing
            })
            .await
            .unwrap_err();
        assert!(!error.failure.is_permanent());
        assert_eq!(
            error.failure.last_error(),
            "old.partner.test[127.0.0.1]: 421 4.3.2 shutting down (in reply to RCPT TO)"
        );
        assert!(!connection.is_usable());
        assert!(
            connection.send(&outgoing).await.is_err(),
            "unusable stays unusable"
        );

        // Require mode: a HELO-only server cannot do STARTTLS.
        let error = open(addr, "old.partner.test", &tls, OutboundMode::Require)
            .await
            .unwrap_err();
        assert_eq!(
            error.failure.kind,
            FailureKind::TlsPolicy(TlsPolicyFailure::StartTlsNotOffered)
        );
    })
    .await;
}

/// STARTTLS advertised but refused with 454: opportunistic goes on in
/// plaintext on the same connection (recorded), require defers.
#[tokio::test]
async fn starttls_refused() {
    bounded(async {
        let tls = client_tls(&[]);
        let (addr, _task) = scripted(|line| match line {
            l if l.starts_with("EHLO") => b"250-scripted.partner.test\r\n250 STARTTLS\r\n",
            l if l.starts_with("STARTTLS") => b"454 4.7.0 TLS not available\r\n",
            l if l.starts_with("MAIL") || l.starts_with("RCPT") => b"250 ok\r\n",
            l if l.starts_with("DATA") => b"354 go ahead\r\n",
            ".\r\n" => b"250 2.0.0 queued\r\n",
            _ => b"500 what\r\n",
        })
        .await;
        let (outcomes, record) = send_one(addr, MX_NAME, &tls, OutboundMode::Opportunistic)
            .await
            .expect("delivered in plaintext");
        assert!(outcomes[0].is_delivered());
        assert!(record.starttls_offered);
        assert!(record.tls_fallback_plaintext);
        assert!(!record.is_tls());
        assert_eq!(
            record.tls_error.as_deref(),
            Some("STARTTLS refused: 454 4.7.0 TLS not available")
        );

        let error = send_one(addr, MX_NAME, &tls, OutboundMode::Verify)
            .await
            .unwrap_err();
        assert_eq!(
            error.failure.last_error(),
            "mx.partner.test[127.0.0.1]: global verify: TLS required but STARTTLS refused: 454 4.7.0 TLS not available"
        );
        assert!(!error.failure.is_permanent());
    })
    .await;
}

/// MAIL refused (temporary, whole message) and the final dot refused
/// (permanent, the accepted recipients); the connection stays usable.
#[tokio::test]
async fn mail_and_data_end_failures() {
    bounded(async {
        let tls = client_tls(&[]);
        let (addr, _task) = scripted(|line| match line {
            l if l.starts_with("EHLO") => {
                b"250-scripted.partner.test\r\n250-ENHANCEDSTATUSCODES\r\n250 PIPELINING\r\n"
            }
            l if l.starts_with("MAIL FROM:<greylisted@") => b"451 4.7.1 try again later\r\n",
            l if l.starts_with("MAIL") => b"250 2.1.0 ok\r\n",
            l if l.starts_with("RCPT TO:<nobody@") => b"550 5.1.1 user unknown\r\n",
            l if l.starts_with("RCPT") => b"250 2.1.5 ok\r\n",
            l if l.starts_with("RSET") => b"250 2.0.0 ok\r\n",
            l if l.starts_with("DATA") => b"354 go ahead\r\n",
            ".\r\n" => b"552 5.3.4 message content rejected\r\n",
            _ => b"500 what\r\n",
        })
        .await;
        let mut connection = open(addr, MX_NAME, &tls, OutboundMode::Opportunistic)
            .await
            .expect("open");
        let to = recipients(&["bob@partner.test", "nobody@partner.test"]);
        let body = message("failures");

        let outcomes = connection
            .send(&Outgoing {
                sender: "greylisted@example.test",
                recipients: &to,
                message: &MessageBody::from_bytes(body.clone()),
                smtputf8: false,
                requiretls: false,
                tls_required_no: false,
            })
            .await
            .expect("send");
        for outcome in &outcomes {
            let failure = outcome.failure().expect("failed");
            assert!(!failure.is_permanent());
            assert_eq!(failure.status(), "4.7.1");
            assert!(failure.last_error().ends_with("(in reply to MAIL FROM)"));
        }

        let outcomes = connection
            .send(&Outgoing {
                sender: "alice@example.test",
                recipients: &to,
                message: &MessageBody::from_bytes(body.clone()),
                smtputf8: false,
                requiretls: false,
                tls_required_no: false,
            })
            .await
            .expect("send");
        let bob = outcomes[0].failure().expect("refused at end of data");
        assert!(bob.is_permanent());
        assert_eq!(
            bob.last_error(),
            "mx.partner.test[127.0.0.1]: 552 5.3.4 message content rejected (in reply to end of DATA)"
        );
        let nobody = outcomes[1].failure().expect("refused at RCPT");
        assert_eq!(nobody.status(), "5.1.1");
        assert!(connection.is_usable());
        connection.quit().await;
    })
    .await;
}
