//! Where mail for a domain goes (RFC 5321 §5.1, RFC 7505, SPEC §6).
//!
//! [`resolve`] turns a recipient domain into an ordered list of
//! [`Target`]s, each a host name (used for SNI and certificate
//! verification), its addresses and a port:
//!
//! 1. A `[[domain]]` entry with `next_hop` wins: a host name is looked up by
//!    A/AAAA (no MX), an `[ip]:port` is used as is and verified by its IP.
//! 2. Otherwise the MX records, lowest preference first; hosts of equal
//!    preference are shuffled (RFC 5321 §5.1) and every one is returned, so
//!    the runner tries them all before deferring.
//! 3. No MX records (NOERROR, empty answer): the domain itself by A/AAAA
//!    (the implicit MX of RFC 5321 §5.1).
//!
//! Permanent answers: the domain does not exist (NXDOMAIN), it has neither
//! MX nor address records, or it publishes a null MX (`MX 0 .`, RFC 7505).
//! Everything else that goes wrong in DNS — SERVFAIL, timeouts, MX hosts
//! without addresses — is temporary (see [`crate::classify`]).
//!
//! With `[dns] dnssec` on, a route found by MX also says, per target,
//! whether the MX RRset and the host's addresses were DNSSEC-authenticated
//! ([`Target::dnssec`], from `authenticity`): DANE and REQUIRETLS read that
//! one fact. The route itself is looked up exactly as without DNSSEC, and
//! DNSSEC never makes a route fail.
//!
//! [`Resolver`] wraps hickory's Tokio resolver, built from
//! `[dns] nameservers` (UDP and TCP) or the system configuration, and
//! carries the DNSSEC-aware queries of `[dns] dnssec`.

mod authenticity;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
    ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use postern_config::{DnsNode, Dnssec, NextHopHost, Settings};
use rand::seq::SliceRandom;

use crate::dane::dnssec::SecureDns;
use crate::policy::RouteAuth;

/// One host to try, with everything needed to connect and verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name used for SNI and certificate verification: the MX host,
    /// the next-hop host, or the IP address text of an IP-literal next hop.
    pub host: String,
    /// Its addresses, to be tried in order.
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    /// MX preference (0 for next hops and the implicit MX).
    pub preference: u16,
    /// Whether DNSSEC authenticated the MX answer naming this host and its
    /// addresses (`NotLooked` without DNSSEC or for a static route).
    pub dnssec: RouteAuth,
}

impl Target {
    /// The socket addresses to try, in order.
    pub fn socket_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs.iter().map(|ip| SocketAddr::new(*ip, self.port))
    }
}

/// Why a domain has no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The domain is not a valid DNS name.
    InvalidDomain { domain: String },
    /// The domain does not exist.
    NxDomain { domain: String },
    /// RFC 7505: the domain accepts no mail.
    NullMx { domain: String },
    /// The domain exists but has no MX, A or AAAA records.
    NoRecords { domain: String },
    /// A host (MX target or next hop) has no usable address.
    NoAddress { host: String, detail: String },
    /// The lookup itself failed (SERVFAIL, REFUSED, timeout, network).
    Lookup {
        name: String,
        record: &'static str,
        detail: String,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::InvalidDomain { domain } => {
                write!(f, "{domain}: not a valid domain name")
            }
            RouteError::NxDomain { domain } => {
                write!(f, "{domain}: domain does not exist (NXDOMAIN)")
            }
            RouteError::NullMx { domain } => {
                write!(f, "{domain}: domain does not accept mail (null MX)")
            }
            RouteError::NoRecords { domain } => {
                write!(f, "{domain}: no MX, A or AAAA records")
            }
            RouteError::NoAddress { host, detail } => write!(f, "{host}: no address ({detail})"),
            RouteError::Lookup {
                name,
                record,
                detail,
            } => write!(f, "{name}: DNS lookup of {record} failed: {detail}"),
        }
    }
}

impl std::error::Error for RouteError {}

/// The resolver could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverError(String);

/// DNS lookups for delivery: a shared, caching hickory resolver, and —
/// unless `[dns] dnssec = "off"` — the DNSSEC-aware queries DANE needs
/// ([`crate::dane::dnssec`]). Cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    secure: Option<Arc<SecureDns>>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("dnssec", &self.secure.is_some())
            .finish_non_exhaustive()
    }
}

/// Per-query timeout (each name server, each try).
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

impl Resolver {
    /// A resolver asking `nameservers` (UDP, falling back to TCP), or the
    /// system's resolvers (`/etc/resolv.conf`) when the list is empty.
    /// Without DNSSEC (so without DANE): see [`Resolver::with_dnssec`].
    pub fn new(nameservers: &[SocketAddr]) -> Result<Resolver, ResolverError> {
        Self::with_timeout(nameservers, DNS_TIMEOUT)
    }

    /// Like [`Resolver::new`] with another per-query timeout (tests).
    pub fn with_timeout(
        nameservers: &[SocketAddr],
        timeout: Duration,
    ) -> Result<Resolver, ResolverError> {
        Self::with_dnssec(nameservers, Dnssec::Off, timeout)
    }

    /// The gateway's resolver: `[dns] nameservers` and `[dns] dnssec`.
    pub fn for_node(dns: &DnsNode) -> Result<Resolver, ResolverError> {
        Self::with_dnssec(&dns.nameservers, dns.dnssec, DNS_TIMEOUT)
    }

    /// [`Resolver::for_node`] with another per-query timeout (tests).
    pub fn with_dnssec(
        nameservers: &[SocketAddr],
        dnssec: Dnssec,
        timeout: Duration,
    ) -> Result<Resolver, ResolverError> {
        let inner = build(nameservers, timeout, false)?;
        let validating = match dnssec {
            Dnssec::Validate => Some(build(nameservers, timeout, true)?),
            Dnssec::TrustAd | Dnssec::Off => None,
        };
        let stub_servers = if dnssec == Dnssec::TrustAd && nameservers.is_empty() {
            system_nameservers()?
        } else {
            nameservers.to_vec()
        };
        let secure =
            SecureDns::new(dnssec, validating, inner.clone(), stub_servers, timeout).map(Arc::new);
        Ok(Resolver { inner, secure })
    }

    /// The DNSSEC-aware queries; `None` with `dnssec = "off"`.
    pub fn secure(&self) -> Option<&SecureDns> {
        self.secure.as_deref()
    }

    /// MX records of `domain`: `Ok(None)` when there are none (NOERROR with
    /// an empty answer), sorted by preference otherwise.
    async fn mx(&self, domain: &str) -> Result<Option<Vec<(u16, String)>>, RouteError> {
        let lookup = match self.inner.mx_lookup(fqdn(domain)).await {
            Ok(lookup) => lookup,
            Err(e) => {
                return match negative(&e) {
                    Some(Negative::NxDomain) => Err(RouteError::NxDomain {
                        domain: domain.to_string(),
                    }),
                    Some(Negative::NoRecords) => Ok(None),
                    None => Err(RouteError::Lookup {
                        name: domain.to_string(),
                        record: "MX",
                        detail: lookup_detail(&e),
                    }),
                }
            }
        };
        let mut records = Vec::new();
        for record in lookup.answers() {
            if let RData::MX(mx) = &record.data {
                if mx.exchange.is_root() {
                    return Err(RouteError::NullMx {
                        domain: domain.to_string(),
                    });
                }
                let host = mx.exchange.to_ascii();
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                records.push((mx.preference, host));
            }
        }
        if records.is_empty() {
            return Ok(None);
        }
        records.sort();
        records.dedup_by(|a, b| a.1 == b.1);
        Ok(Some(records))
    }

    /// TXT records of `name`, each record's strings joined (RFC 7208 §3.3
    /// style, as MTA-STS and TLS-RPT read them). `Ok(empty)` when the name
    /// or the records do not exist; `Err` (words) when the lookup failed.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, String> {
        match self.inner.txt_lookup(fqdn(name)).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if negative(&e).is_some() => Ok(Vec::new()),
            Err(e) => Err(format!(
                "TXT lookup of {name} failed: {}",
                lookup_detail(&e)
            )),
        }
    }

    /// A and AAAA addresses of `host` (for HTTPS fetches), in words on
    /// failure.
    pub async fn host_addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        self.addresses(host).await.map_err(|failure| match failure {
            AddressFailure::Negative(_) => format!("{host} has no address record"),
            AddressFailure::Lookup(detail) => format!("address lookup of {host} failed: {detail}"),
        })
    }

    /// A and AAAA addresses of `host`, IPv4 first.
    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, AddressFailure> {
        match self.inner.lookup_ip(fqdn(host)).await {
            Ok(lookup) => {
                let mut addrs: Vec<IpAddr> = lookup
                    .iter()
                    .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
                    .collect();
                addrs.dedup();
                if addrs.is_empty() {
                    Err(AddressFailure::Negative(Negative::NoRecords))
                } else {
                    Ok(addrs)
                }
            }
            Err(e) => Err(match negative(&e) {
                Some(kind) => AddressFailure::Negative(kind),
                None => AddressFailure::Lookup(lookup_detail(&e)),
            }),
        }
    }
}

/// A hickory resolver for `nameservers` (or the system's); `validate`
/// turns on its in-process DNSSEC validation from the root trust anchor.
fn build(
    nameservers: &[SocketAddr],
    timeout: Duration,
    validate: bool,
) -> Result<TokioResolver, ResolverError> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| ResolverError(e.to_string()))?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        let mut builder = TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        );
        // Explicit name servers mean: ask them, not /etc/hosts.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
        builder
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.timeout = timeout;
    options.attempts = 2;
    options.ndots = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.validate = validate;
    builder.build().map_err(|e| ResolverError(e.to_string()))
}

/// The system's name servers (`/etc/resolv.conf`), for the `trust-ad` stub.
fn system_nameservers() -> Result<Vec<SocketAddr>, ResolverError> {
    let (config, _) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|e| ResolverError(format!("reading the system resolver configuration: {e}")))?;
    let mut servers: Vec<SocketAddr> = Vec::new();
    for server in config.name_servers() {
        let port = server.connections.first().map_or(53, |c| c.port);
        let addr = SocketAddr::new(server.ip, port);
        if !servers.contains(&addr) {
            servers.push(addr);
        }
    }
    Ok(servers)
}

/// An authoritative "no".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negative {
    NxDomain,
    NoRecords,
}

#[derive(Debug)]
enum AddressFailure {
    Negative(Negative),
    Lookup(String),
}

impl AddressFailure {
    fn for_host(self, host: &str) -> RouteError {
        match self {
            AddressFailure::Negative(Negative::NxDomain) => RouteError::NoAddress {
                host: host.to_string(),
                detail: "host does not exist (NXDOMAIN)".into(),
            },
            AddressFailure::Negative(Negative::NoRecords) => RouteError::NoAddress {
                host: host.to_string(),
                detail: "no A or AAAA records".into(),
            },
            AddressFailure::Lookup(detail) => RouteError::Lookup {
                name: host.to_string(),
                record: "A/AAAA",
                detail,
            },
        }
    }
}

fn negative(error: &NetError) -> Option<Negative> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(no)) => Some(match no.response_code {
            ResponseCode::NXDomain => Negative::NxDomain,
            _ => Negative::NoRecords,
        }),
        NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => Some(Negative::NxDomain),
        _ => None,
    }
}

fn lookup_detail(error: &NetError) -> String {
    match error {
        NetError::Timeout => "timeout".into(),
        NetError::Dns(DnsError::ResponseCode(code)) => code.to_string(),
        other => other.to_string(),
    }
}

/// Absolute name, so no search domain is ever appended.
fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

/// Where to deliver mail for `domain` (see the module documentation).
///
/// `mx_port` is the port for MX hosts and the implicit MX (`[delivery]
/// mx_port`); a `next_hop` carries its own port.
pub async fn resolve(
    domain: &str,
    settings: &Settings,
    resolver: &Resolver,
    mx_port: u16,
) -> Result<Vec<Target>, RouteError> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if let Some(hop) = settings.domain_entry(&domain).and_then(|e| e.next_hop()) {
        return match hop.host {
            NextHopHost::Ip(ip) => Ok(vec![Target {
                host: ip.to_string(),
                addrs: vec![ip],
                port: hop.port,
                preference: 0,
                dnssec: RouteAuth::NotLooked,
            }]),
            NextHopHost::Name(name) => {
                let addrs = resolver
                    .addresses(&name)
                    .await
                    .map_err(|f| f.for_host(&name))?;
                Ok(vec![Target {
                    host: name,
                    addrs,
                    port: hop.port,
                    preference: 0,
                    dnssec: RouteAuth::NotLooked,
                }])
            }
        };
    }
    if let Some(ip) = address_literal(&domain) {
        return Ok(vec![Target {
            host: ip.to_string(),
            addrs: vec![ip],
            port: mx_port,
            preference: 0,
            dnssec: RouteAuth::NotLooked,
        }]);
    }
    if domain.is_empty() || domain.contains(['[', ']', ' ', '/', '\\', '@']) {
        return Err(RouteError::InvalidDomain { domain });
    }
    let mut targets = by_mx(domain.clone(), resolver, mx_port).await?;
    if let Some(dns) = resolver.secure() {
        authenticity::authenticate(dns, &domain, &mut targets).await;
    }
    Ok(targets)
}

/// The MX hosts of `domain` (or the domain itself, the implicit MX).
async fn by_mx(
    domain: String,
    resolver: &Resolver,
    mx_port: u16,
) -> Result<Vec<Target>, RouteError> {
    let Some(mut mxs) = resolver.mx(&domain).await? else {
        // No MX: the domain itself is the implicit MX.
        return match resolver.addresses(&domain).await {
            Ok(addrs) => Ok(vec![Target {
                host: domain,
                addrs,
                port: mx_port,
                preference: 0,
                dnssec: RouteAuth::NotLooked,
            }]),
            Err(AddressFailure::Negative(Negative::NxDomain)) => {
                Err(RouteError::NxDomain { domain })
            }
            Err(AddressFailure::Negative(Negative::NoRecords)) => {
                Err(RouteError::NoRecords { domain })
            }
            Err(AddressFailure::Lookup(detail)) => Err(RouteError::Lookup {
                name: domain,
                record: "A/AAAA",
                detail,
            }),
        };
    };
    shuffle_equal_preferences(&mut mxs);

    let mut targets = Vec::with_capacity(mxs.len());
    let mut first_error = None;
    for (preference, host) in mxs {
        match resolver.addresses(&host).await {
            Ok(addrs) => targets.push(Target {
                host,
                addrs,
                port: mx_port,
                preference,
                dnssec: RouteAuth::NotLooked,
            }),
            Err(failure) => {
                first_error.get_or_insert_with(|| failure.for_host(&host));
            }
        }
    }
    match (targets.is_empty(), first_error) {
        (true, Some(error)) => Err(error),
        (true, None) => Err(RouteError::NoRecords { domain }),
        (false, _) => Ok(targets),
    }
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3).
fn address_literal(domain: &str) -> Option<IpAddr> {
    let inner = domain.strip_prefix('[')?.strip_suffix(']')?;
    let inner = inner
        .strip_prefix("ipv6:")
        .or_else(|| inner.strip_prefix("IPv6:"))
        .unwrap_or(inner);
    inner.parse().ok()
}

/// RFC 5321 §5.1: hosts of equal preference are tried in random order.
/// `mxs` must be sorted by preference.
fn shuffle_equal_preferences(mxs: &mut [(u16, String)]) {
    let mut rng = rand::rng();
    let mut start = 0;
    while start < mxs.len() {
        let preference = mxs[start].0;
        let end = mxs[start..]
            .iter()
            .position(|(p, _)| *p != preference)
            .map_or(mxs.len(), |n| start + n);
        mxs[start..end].shuffle(&mut rng);
        start = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_keeps_preference_order() {
        let mut mxs: Vec<(u16, String)> = vec![
            (10, "a".into()),
            (10, "b".into()),
            (10, "c".into()),
            (20, "d".into()),
            (30, "e".into()),
            (30, "f".into()),
        ];
        for _ in 0..20 {
            shuffle_equal_preferences(&mut mxs);
            let prefs: Vec<u16> = mxs.iter().map(|m| m.0).collect();
            assert_eq!(prefs, [10, 10, 10, 20, 30, 30]);
            assert_eq!(mxs[3].1, "d");
        }
    }

    #[test]
    fn address_literals() {
        assert_eq!(address_literal("[192.0.2.1]"), "192.0.2.1".parse().ok());
        assert_eq!(
            address_literal("[ipv6:2001:db8::1]"),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(address_literal("192.0.2.1"), None);
        assert_eq!(address_literal("[nope]"), None);
    }
}
