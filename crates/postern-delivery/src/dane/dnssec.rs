//! DNS answers with their DNSSEC status (SPEC §10 `[dns] dnssec`).
//!
//! [`SecureDns::query`] answers one question with the records and whether
//! they are authenticated:
//!
//! * `validate`: hickory's in-process validation from the root trust
//!   anchor. Whether the name servers serve DNSSEC at all is checked first
//!   (the root DNSKEY must validate against the built-in anchor). When they
//!   do not — a resolver that strips DNSSEC records, or a test server for an
//!   unsigned zone — every answer is *unauthenticated*, logged once, and the
//!   plain answer is used: DNSSEC never stops mail by itself. When they do,
//!   an answer whose signatures fail is *bogus*.
//! * `trust-ad`: our own stub query with AD set (RFC 6840 §5.7), so a
//!   validating resolver says in the answer's AD bit whether it validated.
//!   A validating resolver answers bogus data with SERVFAIL.
//!
//! Answers are cached for their TTL (the `validate` resolver caches inside
//! hickory, the stub here), so a delivery on a reused connection asks the
//! network nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::Proof;
use hickory_resolver::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use postern_config::Dnssec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

use crate::policy::Authenticity;

/// One answer: the records of the asked type (empty for NXDOMAIN/NODATA)
/// and whether the answer was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub authenticity: Authenticity,
    pub records: Vec<RData>,
}

/// Why a question got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryFailure {
    /// Signatures present and failing validation.
    Bogus(String),
    /// SERVFAIL, timeout, network.
    Failed(String),
}

impl std::fmt::Display for QueryFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryFailure::Bogus(detail) => write!(f, "DNSSEC validation failed (bogus): {detail}"),
            QueryFailure::Failed(detail) => f.write_str(detail),
        }
    }
}

/// How long the result of the "do the name servers serve DNSSEC" check
/// holds before it is made again.
const ROOT_CHECK_INTERVAL: Duration = Duration::from_secs(600);
/// How long the root DNSKEY probe may take.
const ROOT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bounds for cached stub answers.
const MAX_CACHE_TTL: Duration = Duration::from_secs(3600);
const NEGATIVE_CACHE_TTL: Duration = Duration::from_secs(60);
const MAX_CACHE_ENTRIES: usize = 10_000;
/// Each name server is asked this often before the next one.
const STUB_ATTEMPTS: usize = 2;

pub struct SecureDns {
    how: How,
    /// Logged once: the name servers cannot serve DNSSEC.
    warned: AtomicBool,
}

enum How {
    Validate {
        validating: Box<TokioResolver>,
        plain: Box<TokioResolver>,
        root: Mutex<Option<(Instant, bool)>>,
    },
    TrustAd(Stub),
}

impl SecureDns {
    /// `None` for `dnssec = off`. `validating` must be built with hickory's
    /// `validate` option, `plain` without.
    pub(crate) fn new(
        mode: Dnssec,
        validating: Option<TokioResolver>,
        plain: TokioResolver,
        nameservers: Vec<SocketAddr>,
        per_query: Duration,
    ) -> Option<SecureDns> {
        let how = match (mode, validating) {
            (Dnssec::Off, _) => return None,
            (Dnssec::Validate, Some(validating)) => How::Validate {
                validating: Box::new(validating),
                plain: Box::new(plain),
                root: Mutex::new(None),
            },
            (Dnssec::Validate, None) => return None,
            (Dnssec::TrustAd, _) => How::TrustAd(Stub {
                nameservers,
                per_query,
                cache: Mutex::new(HashMap::new()),
            }),
        };
        Some(SecureDns {
            how,
            warned: AtomicBool::new(false),
        })
    }

    /// Records of `rtype` at `name` with their DNSSEC status.
    pub async fn query(&self, name: &str, rtype: RecordType) -> Result<Answer, QueryFailure> {
        let name = fqdn(name)?;
        match &self.how {
            How::TrustAd(stub) => stub.query(&name, rtype).await,
            How::Validate {
                validating,
                plain,
                root,
            } => {
                if self.serves_dnssec(validating, root).await {
                    validated(validating, name, rtype).await
                } else {
                    unvalidated(plain, name, rtype).await
                }
            }
        }
    }

    /// Whether the root DNSKEY validates against the trust anchor: without
    /// it nothing can be authenticated, and a failed chain says nothing
    /// about the answer (SPEC §10: unauthenticated, logged once).
    async fn serves_dnssec(
        &self,
        validating: &TokioResolver,
        root: &Mutex<Option<(Instant, bool)>>,
    ) -> bool {
        if let Ok(guard) = root.lock() {
            if let Some((at, ok)) = *guard {
                if at.elapsed() < ROOT_CHECK_INTERVAL {
                    return ok;
                }
            }
        }
        // Bounded: a resolver that drops DNSKEY queries must not hold up
        // deliveries for the resolver's whole retry schedule.
        let result = match timeout(
            ROOT_PROBE_TIMEOUT,
            validating.lookup(Name::root(), RecordType::DNSKEY),
        )
        .await
        {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "no answer to the root DNSKEY query within {} s",
                ROOT_PROBE_TIMEOUT.as_secs()
            )),
        };
        let ok = match &result {
            Ok(lookup) => {
                !lookup.answers().is_empty()
                    && lookup
                        .answers()
                        .iter()
                        .filter(|r| r.record_type() == RecordType::DNSKEY)
                        .all(|r| r.proof == Proof::Secure)
            }
            Err(_) => false,
        };
        if !ok && !self.warned.swap(true, Ordering::Relaxed) {
            let why = match &result {
                Ok(_) => "the root DNSKEY answer is not validated".to_string(),
                Err(e) => e.clone(),
            };
            tracing::warn!(
                "dns.dnssec = validate: the name servers do not serve DNSSEC ({why}); \
                 DNS answers are treated as unauthenticated, so DANE does not apply"
            );
        }
        if let Ok(mut guard) = root.lock() {
            *guard = Some((Instant::now(), ok));
        }
        ok
    }
}

fn fqdn(name: &str) -> Result<Name, QueryFailure> {
    let text = format!("{}.", name.trim_end_matches('.'));
    Name::from_ascii(&text)
        .map_err(|e| QueryFailure::Failed(format!("\"{name}\" is not a DNS name: {e}")))
}

fn of_type(records: &[hickory_resolver::proto::rr::Record], rtype: RecordType) -> Vec<RData> {
    records
        .iter()
        .filter(|r| r.record_type() == rtype)
        .map(|r| r.data.clone())
        .collect()
}

async fn validated(
    resolver: &TokioResolver,
    name: Name,
    rtype: RecordType,
) -> Result<Answer, QueryFailure> {
    match resolver.lookup(name, rtype).await {
        Ok(lookup) => {
            let wanted: Vec<_> = lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == rtype)
                .collect();
            let secure = !wanted.is_empty() && wanted.iter().all(|r| r.proof == Proof::Secure);
            Ok(Answer {
                authenticity: if secure {
                    Authenticity::Authenticated
                } else {
                    Authenticity::Unauthenticated
                },
                records: of_type(lookup.answers(), rtype),
            })
        }
        Err(NetError::Dns(DnsError::DnssecBogus)) => {
            Err(QueryFailure::Bogus(format!("{rtype} answer")))
        }
        Err(NetError::Dns(DnsError::Nsec {
            proof: Proof::Bogus,
            ..
        })) => Err(QueryFailure::Bogus(format!("{rtype} denial of existence"))),
        Err(e) => negative_or_failure(&e),
    }
}

async fn unvalidated(
    resolver: &TokioResolver,
    name: Name,
    rtype: RecordType,
) -> Result<Answer, QueryFailure> {
    match resolver.lookup(name, rtype).await {
        Ok(lookup) => Ok(Answer {
            authenticity: Authenticity::Unauthenticated,
            records: of_type(lookup.answers(), rtype),
        }),
        Err(e) => negative_or_failure(&e),
    }
}

/// NXDOMAIN and NODATA are answers (no records, unauthenticated: the
/// `validate` resolver reports a proven denial the same way); the rest is
/// a failure.
fn negative_or_failure(error: &NetError) -> Result<Answer, QueryFailure> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(_))
        | NetError::Dns(DnsError::ResponseCode(ResponseCode::NXDomain)) => Ok(Answer {
            authenticity: Authenticity::Unauthenticated,
            records: Vec::new(),
        }),
        NetError::Timeout => Err(QueryFailure::Failed("timeout".into())),
        NetError::Dns(DnsError::ResponseCode(code)) => Err(QueryFailure::Failed(rcode_name(*code))),
        other => Err(QueryFailure::Failed(other.to_string())),
    }
}

/// The RCODE as administrators know it from dig (`SERVFAIL`).
fn rcode_name(code: ResponseCode) -> String {
    match code {
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        other => other.to_string(),
    }
}

/// A minimal stub resolver for `trust-ad`: one question, AD set, UDP with
/// a TCP retry on truncation, each configured name server in turn.
struct Stub {
    nameservers: Vec<SocketAddr>,
    per_query: Duration,
    cache: Mutex<HashMap<(Name, RecordType), (Instant, Answer)>>,
}

impl Stub {
    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Answer, QueryFailure> {
        let key = (name.clone(), rtype);
        if let Ok(cache) = self.cache.lock() {
            if let Some((until, answer)) = cache.get(&key) {
                if Instant::now() < *until {
                    return Ok(answer.clone());
                }
            }
        }
        let mut last = QueryFailure::Failed("no name server configured ([dns] nameservers)".into());
        for server in &self.nameservers {
            for _ in 0..STUB_ATTEMPTS {
                match self.ask(*server, name, rtype).await {
                    Ok((answer, ttl)) => {
                        self.remember(key, answer.clone(), ttl);
                        return Ok(answer);
                    }
                    Err(failure) => last = failure,
                }
            }
        }
        Err(last)
    }

    fn remember(&self, key: (Name, RecordType), answer: Answer, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHE_ENTRIES {
                let now = Instant::now();
                cache.retain(|_, (until, _)| *until > now);
                if cache.len() >= MAX_CACHE_ENTRIES {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now() + ttl, answer));
        }
    }

    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        rtype: RecordType,
    ) -> Result<(Answer, Duration), QueryFailure> {
        let mut request = Message::query();
        request.metadata.id = rand::random();
        request.metadata.recursion_desired = true;
        // RFC 6840 §5.7: AD in a query asks for AD in the answer.
        request.metadata.authentic_data = true;
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        request.set_edns(edns);
        request.add_query(Query::query(name.clone(), rtype));
        let wire = request
            .to_vec()
            .map_err(|e| QueryFailure::Failed(format!("cannot encode the query: {e}")))?;

        let mut response = match timeout(self.per_query, udp_exchange(server, &wire)).await {
            Err(_) => return Err(QueryFailure::Failed("timeout".into())),
            Ok(result) => result?,
        };
        if response.metadata.id != request.metadata.id
            || response.queries.first().map(|q| (q.name(), q.query_type())) != Some((name, rtype))
        {
            return Err(QueryFailure::Failed(
                "the answer does not match the question".into(),
            ));
        }
        if response.metadata.truncation {
            response = match timeout(self.per_query, tcp_exchange(server, &wire)).await {
                Err(_) => return Err(QueryFailure::Failed("timeout (TCP)".into())),
                Ok(result) => result?,
            };
            if response.metadata.id != request.metadata.id {
                return Err(QueryFailure::Failed(
                    "the TCP answer does not match the question".into(),
                ));
            }
        }
        let records = of_type(&response.answers, rtype);
        let ttl = match response.metadata.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => {
                if records.is_empty() {
                    NEGATIVE_CACHE_TTL.min(Duration::from_secs(
                        response
                            .authorities
                            .iter()
                            .map(|r| u64::from(r.ttl))
                            .min()
                            .unwrap_or(0),
                    ))
                } else {
                    Duration::from_secs(
                        response
                            .answers
                            .iter()
                            .map(|r| u64::from(r.ttl))
                            .min()
                            .unwrap_or(0),
                    )
                    .min(MAX_CACHE_TTL)
                }
            }
            code => return Err(QueryFailure::Failed(rcode_name(code))),
        };
        let authenticity = if response.metadata.authentic_data {
            Authenticity::Authenticated
        } else {
            Authenticity::Unauthenticated
        };
        Ok((
            Answer {
                authenticity,
                records,
            },
            ttl,
        ))
    }
}

async fn udp_exchange(server: SocketAddr, wire: &[u8]) -> Result<Message, QueryFailure> {
    let io = |e: std::io::Error| QueryFailure::Failed(format!("{server}: {e}"));
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(server).await.map_err(io)?;
    socket.send(wire).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    let n = socket.recv(&mut buf).await.map_err(io)?;
    Message::from_vec(&buf[..n])
        .map_err(|e| QueryFailure::Failed(format!("{server}: malformed answer: {e}")))
}

async fn tcp_exchange(server: SocketAddr, wire: &[u8]) -> Result<Message, QueryFailure> {
    let io = |e: std::io::Error| QueryFailure::Failed(format!("{server} (TCP): {e}"));
    let mut stream = TcpStream::connect(server).await.map_err(io)?;
    let len =
        u16::try_from(wire.len()).map_err(|_| QueryFailure::Failed("query too long".into()))?;
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(wire);
    stream.write_all(&framed).await.map_err(io)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.map_err(io)?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.map_err(io)?;
    Message::from_vec(&buf)
        .map_err(|e| QueryFailure::Failed(format!("{server} (TCP): malformed answer: {e}")))
}
