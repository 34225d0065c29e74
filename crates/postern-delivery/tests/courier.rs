//! The courier against real receivers and the in-process DNS server on
//! loopback: MX order with every host tried, connection reuse and the
//! reconnect when an idle connection went stale, the requirement of a
//! `[[domain]]` rule, and `probe` over the same path.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postern_config::{DomainEntry, OutboundMode, Settings};
use postern_delivery::{
    Courier, FailureKind, MessageBody, Outgoing, RecipientResult, Resolver, ResultType, Source,
    TlsPolicyFailure,
};
use support::dns::{DnsServer, Rr};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

async fn zone() -> DnsServer {
    DnsServer::start(
        "test.",
        &[
            Rr::Mx("partner.test.", 20, "mx2.partner.test."),
            Rr::Mx("partner.test.", 10, "mx1.partner.test."),
            Rr::A("mx1.partner.test.", "127.0.0.2"),
            Rr::A("mx2.partner.test.", "127.0.0.3"),
            Rr::Mx("stale.test.", 10, "mx.stale.test."),
            Rr::A("mx.stale.test.", "127.0.0.1"),
        ],
    )
    .await
}

fn courier(dns: &DnsServer, port: u16) -> Courier {
    let resolver = Resolver::with_timeout(&[dns.addr], Duration::from_secs(2)).expect("resolver");
    Courier::new(resolver, "gw.example.test".into(), port, timeouts())
}

fn outgoing<'a>(to: &'a [String], body: &'a MessageBody) -> Outgoing<'a> {
    Outgoing {
        sender: "alice@example.test",
        recipients: to,
        message: body,
        smtputf8: false,
        requiretls: false,
        tls_required_no: false,
    }
}

/// mx1 (preference 10, 127.0.0.2) is down: mx2 takes the message, both
/// attempts are reported; the next message reuses mx2's connection.
#[tokio::test]
async fn every_mx_in_order_then_reuse() {
    bounded(async {
        let dns = zone().await;
        let server = TestServer::start_on("127.0.0.3:0", ServerOptions::new(TlsLayer::Off)).await;
        let courier = courier(&dns, server.addr.port());
        let tls = client_tls(&[]);
        let settings = Settings::default();
        let to = vec!["bob@partner.test".to_string()];
        let body = MessageBody::from_bytes(message("courier"));

        let report = courier
            .deliver(&settings, 1, &tls, "partner.test", &outgoing(&to, &body))
            .await;
        assert!(report.outcomes[0].is_delivered(), "{report:?}");
        let hosts: Vec<&str> = report.attempts.iter().map(|a| a.host.as_str()).collect();
        assert_eq!(hosts, ["mx1.partner.test", "mx2.partner.test"]);
        assert_eq!(report.attempts[1].mode, OutboundMode::Opportunistic);

        let report = courier
            .deliver(&settings, 1, &tls, "partner.test", &outgoing(&to, &body))
            .await;
        assert!(report.outcomes[0].is_delivered(), "{report:?}");
        // mx1 is still tried first (it is the preferred MX), mx2 reused.
        assert_eq!(
            report.attempts.last().map(|a| a.host.as_str()),
            Some("mx2.partner.test")
        );
        assert_eq!(server.seen.deliveries().len(), 2);
        assert_eq!(
            server.seen.connections(),
            1,
            "the idle connection was reused"
        );

        // A new settings generation never reuses the old connection.
        let report = courier
            .deliver(&settings, 2, &tls, "partner.test", &outgoing(&to, &body))
            .await;
        assert!(report.outcomes[0].is_delivered(), "{report:?}");
        assert_eq!(server.seen.connections(), 2);
    })
    .await;
}

/// A server that closes every connection after one message: the idle
/// connection kept for reuse is stale, and the courier opens a fresh one
/// to the same address instead of deferring.
#[tokio::test]
async fn stale_idle_connection_reconnects() {
    bounded(async {
        let dns = zone().await;
        let delivered = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (d, c) = (delivered.clone(), connections.clone());
        let (addr, _task) = raw_server(move |tcp| {
            let (d, c) = (d.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                let (read, mut write) = tcp.into_split();
                let mut lines = tokio::io::BufReader::new(read);
                let _ = write.write_all(b"220 once.stale.test ESMTP\r\n").await;
                let mut line = String::new();
                let mut in_data = false;
                loop {
                    line.clear();
                    if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let reply: &[u8] = match (in_data, line.as_str()) {
                        (true, ".\r\n") => {
                            d.fetch_add(1, Ordering::SeqCst);
                            let _ = write.write_all(b"250 2.0.0 queued\r\n").await;
                            // Gone, as a server with a short idle timeout is.
                            return;
                        }
                        (true, _) => continue,
                        (false, l) if l.starts_with("DATA") => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        _ => b"250 ok\r\n",
                    };
                    if write.write_all(reply).await.is_err() {
                        return;
                    }
                }
            }
        })
        .await;
        let courier = courier(&dns, addr.port());
        let tls = client_tls(&[]);
        let settings = Settings::default();
        let to = vec!["bob@stale.test".to_string()];
        let body = MessageBody::from_bytes(message("stale"));
        for round in 1..=2 {
            let report = courier
                .deliver(&settings, 1, &tls, "stale.test", &outgoing(&to, &body))
                .await;
            assert!(
                report.outcomes[0].is_delivered(),
                "round {round}: {report:?}"
            );
            assert_eq!(
                report.attempts.len(),
                1,
                "round {round}: {:?}",
                report.attempts
            );
        }
        assert_eq!(delivered.load(Ordering::SeqCst), 2);
        assert_eq!(
            connections.load(Ordering::SeqCst),
            2,
            "a fresh connection for round 2"
        );
    })
    .await;
}

/// A `[[domain]]` rule raises the requirement: a plaintext-only MX is
/// deferred with the policy failure, and probe says what delivery would do.
#[tokio::test]
async fn domain_rule_sets_the_requirement() {
    bounded(async {
        let dns = zone().await;
        let server = TestServer::start_on("127.0.0.3:0", ServerOptions::new(TlsLayer::Off)).await;
        let courier = courier(&dns, server.addr.port());
        let tls = client_tls(&[]);
        let settings = Settings {
            domains: vec![DomainEntry {
                name: "partner.test".into(),
                relay: false,
                next_hop: None,
                tls: Some(OutboundMode::Require),
                mta_sts: true,
                dane: true,
                monitor: false,
            }],
            ..Settings::default()
        };
        let to = vec!["bob@partner.test".to_string()];
        let body = MessageBody::from_bytes(message("rule"));
        let report = courier
            .deliver(&settings, 1, &tls, "partner.test", &outgoing(&to, &body))
            .await;
        let RecipientResult::Failed(failure) = &report.outcomes[0].result else {
            panic!("delivered: {report:?}");
        };
        assert_eq!(
            failure.kind,
            FailureKind::TlsPolicy(TlsPolicyFailure::StartTlsNotOffered),
            "{failure}"
        );
        assert!(!failure.is_permanent());
        // The deferral reason names host, requirement and what failed.
        assert_eq!(
            failure.last_error(),
            "mx2.partner.test[127.0.0.3]: domain require: TLS required but STARTTLS not offered"
        );
        let last = report.attempts.last().expect("attempts");
        assert_eq!(last.mode, OutboundMode::Require);
        assert_eq!(
            (last.source, last.requirement.as_str()),
            (Source::Domain, "domain require")
        );
        assert_eq!(last.result_type, Some(ResultType::StarttlsNotSupported));
        assert!(server.seen.deliveries().is_empty());

        let hosts = courier
            .probe(&settings, &tls, "partner.test")
            .await
            .expect("route")
            .hosts;
        assert_eq!(hosts.len(), 2);
        let mx2 = &hosts[1];
        assert_eq!(mx2.target.host, "mx2.partner.test");
        assert_eq!(mx2.requirement.source, Source::Domain);
        assert_eq!(mx2.requirement.label(), "domain require");
        assert_eq!(
            mx2.addresses[0].verdict,
            Err(TlsPolicyFailure::StartTlsNotOffered)
        );
        assert!(server.seen.deliveries().is_empty(), "probe sends no mail");
    })
    .await;
}
