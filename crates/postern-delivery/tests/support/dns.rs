//! An authoritative DNS server (hickory-server) on 127.0.0.1, UDP and TCP
//! on one random port, serving a test zone in-process.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, AAAA, MX, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};

/// A record in zone-file terms.
pub enum Rr {
    Mx(&'static str, u16, &'static str),
    A(&'static str, &'static str),
    Aaaa(&'static str, &'static str),
    Txt(&'static str, &'static str),
}

pub struct DnsServer {
    pub addr: SocketAddr,
    _server: Server<Catalog>,
}

fn name(text: &str) -> Name {
    Name::from_str(text).expect("name")
}

impl DnsServer {
    /// Serve `origin` (e.g. `"test."`) with `records`.
    pub async fn start(origin: &str, records: &[Rr]) -> DnsServer {
        let origin_name = name(origin);
        let mut zone = InMemoryZoneHandler::<TokioRuntimeProvider>::empty(
            origin_name.clone(),
            ZoneType::Primary,
            AxfrPolicy::Deny,
        );
        let serial = 1;
        let soa = SOA::new(
            name(&format!("ns.{origin}")),
            name(&format!("hostmaster.{origin}")),
            serial,
            3600,
            600,
            86_400,
            60,
        );
        assert!(zone.upsert_mut(
            Record::from_rdata(origin_name.clone(), 60, RData::SOA(soa)),
            serial
        ));
        for rr in records {
            let record = match rr {
                Rr::Mx(owner, preference, exchange) => Record::from_rdata(
                    name(owner),
                    60,
                    RData::MX(MX::new(*preference, name(exchange))),
                ),
                Rr::A(owner, ip) => {
                    Record::from_rdata(name(owner), 60, RData::A(A(ip.parse().expect("ipv4"))))
                }
                Rr::Aaaa(owner, ip) => Record::from_rdata(
                    name(owner),
                    60,
                    RData::AAAA(AAAA(ip.parse().expect("ipv6"))),
                ),
                Rr::Txt(owner, text) => Record::from_rdata(
                    name(owner),
                    60,
                    RData::TXT(TXT::new(vec![text.to_string()])),
                ),
            };
            assert!(zone.upsert_mut(record, serial), "record rejected");
        }
        let mut catalog = Catalog::new();
        catalog.upsert(LowerName::new(&origin_name), vec![Arc::new(zone)]);

        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("addr");
        let mut server = Server::new(catalog);
        server.register_socket(udp);
        server.register_listener(tcp, Duration::from_secs(5), 4096);
        DnsServer {
            addr,
            _server: server,
        }
    }
}

/// UDP and TCP on the same random loopback port.
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let port = udp.local_addr().expect("addr").port();
        if let Ok(tcp) =
            TcpListener::bind(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)).await
        {
            return (udp, tcp);
        }
    }
    panic!("no free UDP+TCP port pair");
}
