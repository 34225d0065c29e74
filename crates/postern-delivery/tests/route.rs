//! Routes against an in-process authoritative DNS server (hickory-server on
//! loopback): MX order, the A/AAAA fallback, null MX, NXDOMAIN, next-hop
//! overrides — and one end-to-end delivery over MX to SMTP receivers on
//! 127.0.0.2 and 127.0.0.3.

mod support;

use std::time::Duration;

use postern_config::{DomainEntry, Settings};
use postern_delivery::policy::RouteAuth;
use postern_delivery::{resolve, Failure, FailureKind, Resolver, RouteError, Target};
use support::dns::{DnsServer, Rr};
use support::*;

async fn zone() -> DnsServer {
    DnsServer::start(
        "test.",
        &[
            // Three MX hosts, listed out of order; mx3 has no address.
            Rr::Mx("partner.test.", 20, "mx2.partner.test."),
            Rr::Mx("partner.test.", 10, "mx1.partner.test."),
            Rr::Mx("partner.test.", 30, "mx3.partner.test."),
            Rr::A("mx1.partner.test.", "127.0.0.2"),
            Rr::A("mx2.partner.test.", "127.0.0.3"),
            Rr::Aaaa("mx2.partner.test.", "::1"),
            // No MX: the domain's own address.
            Rr::A("implicit.test.", "127.0.0.4"),
            // RFC 7505 null MX.
            Rr::Mx("nullmx.test.", 0, "."),
            // Exists, but neither MX nor address.
            Rr::Txt("empty.test.", "v=spf1 -all"),
            // MX pointing nowhere.
            Rr::Mx("dangling.test.", 10, "nowhere.test."),
            // Next hop by name.
            Rr::A("relay.partner.test.", "127.0.0.5"),
        ],
    )
    .await
}

fn resolver(dns: &DnsServer) -> Resolver {
    Resolver::with_timeout(&[dns.addr], Duration::from_secs(2)).expect("resolver")
}

fn settings_with(entries: &[(&str, &str)]) -> Settings {
    let settings = Settings {
        domains: entries
            .iter()
            .map(|(name, hop)| DomainEntry {
                name: name.to_string(),
                relay: false,
                next_hop: Some(hop.to_string()),
                tls: None,
                mta_sts: true,
                dane: true,
                monitor: false,
            })
            .collect(),
        ..Settings::default()
    };
    settings.validate().expect("valid settings");
    settings
}

fn target(host: &str, addrs: &[&str], port: u16, preference: u16) -> Target {
    Target {
        host: host.into(),
        addrs: addrs.iter().map(|a| a.parse().expect("ip")).collect(),
        port,
        preference,
        dnssec: RouteAuth::NotLooked,
    }
}

#[tokio::test]
async fn mx_records_in_preference_order() {
    bounded(async {
        let dns = zone().await;
        let resolver = resolver(&dns);
        let targets = resolve("Partner.TEST.", &Settings::default(), &resolver, 2525)
            .await
            .expect("routes");
        // mx3 has no address: left out, the others in order, IPv4 first.
        assert_eq!(
            targets,
            [
                target("mx1.partner.test", &["127.0.0.2"], 2525, 10),
                target("mx2.partner.test", &["127.0.0.3", "::1"], 2525, 20),
            ]
        );
    })
    .await;
}

/// With DNSSEC on, a route found by MX says per target whether its
/// answers were authenticated: this zone is unsigned (hickory-server sets
/// no AD), so `Looked` and unauthenticated; a static next hop and
/// `dnssec = off` are not looked up at all.
#[tokio::test]
async fn mx_routes_carry_their_dnssec_status() {
    use postern_config::Dnssec;
    use postern_delivery::policy::Authenticity::Unauthenticated;
    bounded(async {
        let dns = zone().await;
        let trust_ad = Resolver::with_dnssec(&[dns.addr], Dnssec::TrustAd, Duration::from_secs(2))
            .expect("resolver");
        for domain in ["partner.test", "implicit.test"] {
            let targets = resolve(domain, &Settings::default(), &trust_ad, 25)
                .await
                .expect("routes");
            for t in &targets {
                assert_eq!(
                    t.dnssec,
                    RouteAuth::Looked {
                        mx: Unauthenticated,
                        addresses: Unauthenticated
                    },
                    "{domain} {}",
                    t.host
                );
                assert!(!t.dnssec.mx_authenticated());
            }
        }
        let settings = settings_with(&[("partner.test", "relay.partner.test:2526")]);
        let [hop] = &resolve("partner.test", &settings, &trust_ad, 25)
            .await
            .expect("next hop")[..]
        else {
            panic!("one next hop");
        };
        assert_eq!(hop.dnssec, RouteAuth::NotLooked);
        let off = Resolver::with_dnssec(&[dns.addr], Dnssec::Off, Duration::from_secs(2))
            .expect("resolver");
        let targets = resolve("partner.test", &Settings::default(), &off, 25)
            .await
            .expect("routes");
        assert!(targets.iter().all(|t| t.dnssec == RouteAuth::NotLooked));
    })
    .await;
}

#[tokio::test]
async fn address_fallback_without_mx() {
    bounded(async {
        let dns = zone().await;
        let targets = resolve("implicit.test", &Settings::default(), &resolver(&dns), 25)
            .await
            .expect("routes");
        assert_eq!(targets, [target("implicit.test", &["127.0.0.4"], 25, 0)]);
    })
    .await;
}

#[tokio::test]
async fn permanent_and_temporary_dns_failures() {
    bounded(async {
        let dns = zone().await;
        let resolver = resolver(&dns);
        let settings = Settings::default();
        let rows: &[(&str, RouteError, bool)] = &[
            (
                "nullmx.test",
                RouteError::NullMx {
                    domain: "nullmx.test".into(),
                },
                true,
            ),
            (
                "nx.test",
                RouteError::NxDomain {
                    domain: "nx.test".into(),
                },
                true,
            ),
            (
                "empty.test",
                RouteError::NoRecords {
                    domain: "empty.test".into(),
                },
                true,
            ),
            (
                "dangling.test",
                RouteError::NoAddress {
                    host: "nowhere.test".into(),
                    detail: "host does not exist (NXDOMAIN)".into(),
                },
                false,
            ),
        ];
        for (domain, expected, permanent) in rows {
            let error = resolve(domain, &settings, &resolver, 25).await.unwrap_err();
            assert_eq!(&error, expected, "{domain}");
            let failure = Failure::new(None, FailureKind::Route(error));
            assert_eq!(failure.is_permanent(), *permanent, "{domain}");
            assert!(failure.last_error().starts_with(match expected {
                RouteError::NoAddress { host, .. } => host.as_str(),
                _ => domain,
            }));
        }
        // Outside the served zone the server refuses: temporary.
        let error = resolve("elsewhere.example", &settings, &resolver, 25)
            .await
            .unwrap_err();
        assert!(matches!(error, RouteError::Lookup { .. }), "{error:?}");
        assert!(!Failure::new(None, FailureKind::Route(error)).is_permanent());
    })
    .await;
}

#[tokio::test]
async fn dns_server_down_is_temporary() {
    bounded(async {
        // A UDP port nobody answers on.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        let resolver = Resolver::with_timeout(
            &[silent.local_addr().expect("addr")],
            Duration::from_millis(300),
        )
        .expect("resolver");
        let error = resolve("partner.test", &Settings::default(), &resolver, 25)
            .await
            .unwrap_err();
        assert!(matches!(error, RouteError::Lookup { .. }), "{error:?}");
        assert!(!Failure::new(None, FailureKind::Route(error)).is_permanent());
    })
    .await;
}

#[tokio::test]
async fn next_hop_overrides_mx() {
    bounded(async {
        let dns = zone().await;
        let resolver = resolver(&dns);
        let settings = settings_with(&[
            ("partner.test", "relay.partner.test:2526"),
            ("*.literal.test", "[127.0.0.6]:2527"),
            ("broken.test", "missing.partner.test"),
        ]);
        assert_eq!(
            resolve("partner.test", &settings, &resolver, 25)
                .await
                .expect("routes"),
            [target("relay.partner.test", &["127.0.0.5"], 2526, 0)]
        );
        // The IP literal is also the verification name.
        assert_eq!(
            resolve("a.literal.test", &settings, &resolver, 25)
                .await
                .expect("routes"),
            [target("127.0.0.6", &["127.0.0.6"], 2527, 0)]
        );
        // A next hop that does not resolve is temporary (a configuration
        // or DNS problem, not the recipient's).
        let error = resolve("broken.test", &settings, &resolver, 25)
            .await
            .unwrap_err();
        assert!(matches!(error, RouteError::NoAddress { .. }), "{error:?}");
        assert!(!Failure::new(None, FailureKind::Route(error)).is_permanent());
    })
    .await;
}
