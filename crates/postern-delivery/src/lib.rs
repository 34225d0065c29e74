//! Outbound delivery for Postern (SPEC §4 outbound TLS and domains, §6).
//!
//! Everything between "a queued message for a recipient domain" and "the
//! next hop said 250" — as clean functions and types that the queue runner
//! in the binary drives; this crate keeps no queue and no schedule (only the
//! courier's idle connections).
//!
//! Layout, one step per module:
//!
//! * [`route`] — where mail for a domain goes: `[[domain]] next_hop`, MX
//!   records in preference order, the A/AAAA fallback, null MX (RFC 5321
//!   §5.1, RFC 7505), over a [`Resolver`] built from `[dns] nameservers`.
//! * [`policy`] — the outbound TLS policy engine: [`requirement`] forms one
//!   typed [`Requirement`] from every policy source; [`decide`],
//!   [`after_handshake`] and [`after_tls_failure`] apply it to a connection.
//! * [`tls_client`] — the shared rustls client configurations
//!   ([`ClientTls`]): verifying and accepting, with session resumption, and
//!   the per-connection DANE one.
//! * [`dane`] — DNSSEC status of MX, address and TLSA answers (`[dns]
//!   dnssec`), the TLSA lookup per MX host, and the DANE-EE/DANE-TA
//!   verifier (RFC 7672).
//! * [`client`] — the SMTP client (RFC 5321, 3207, 2920, 1870, 6152, 6531):
//!   a [`Connection`] carries one or more messages to one host, and records
//!   each attempt ([`AttemptRecord`]).
//! * [`mta_sts`] — the recipient domain's MTA-STS policy (RFC 8461):
//!   TXT discovery, the HTTPS fetch, the strict parser, the cache.
//! * [`https`] — one bounded HTTPS GET (no redirects, size and time
//!   limits) on the outbound trust anchors.
//! * [`courier`] — one message's recipients for one domain: route, the
//!   requirement per host, every MX and address in order, connection
//!   reuse; and `postern probe` over the same path.
//! * [`classify`] — the single temporary/permanent decision for every
//!   failure, with who is at fault and the `last_error` text.
//! * [`dsn`] — RFC 3464 bounces.
//! * [`requiretls`] — which failures of a REQUIRETLS message are definitive
//!   (RFC 8689: bounce with 5.7.30) and which only defer.
//! * [`backoff`] — retry times and queue lifetime.
//! * [`transition`] — what an attempt's result does to a recipient
//!   (delivered, deferred, bounced), with the clock passed in.
//!
//! Call [`postern_tls::install_crypto_provider`] at startup; this crate
//! only uses aws-lc-rs, and passes it explicitly.

pub mod backoff;
pub mod body;
pub mod classify;
pub mod client;
pub mod courier;
pub mod dane;
pub mod dsn;
pub mod https;
pub mod learning;
pub mod mta_sts;
pub mod policy;
pub mod requiretls;
pub mod route;
pub mod tls_client;
pub mod transition;

pub use backoff::{backoff_delay, expired, next_attempt};
pub use body::MessageBody;
pub use classify::{
    classify, Classification, Failure, FailureKind, Fault, HostRef, MessageProblem, Permanence,
    Stage,
};
pub use client::{
    deliver, AttemptError, AttemptRecord, BatchReport, Capabilities, Connection, Outgoing,
    RecipientOutcome, RecipientResult, ReportOnlyVerdict, Timeouts,
};
pub use courier::{would_deliver, Courier, DomainReport, Probe, ProbedAddress, ProbedHost};
pub use dsn::{bounce, header_section, should_bounce, Bounce, FailedRecipient};
pub use learning::LearnedLevels;
pub use policy::{
    after_handshake, after_tls_failure, decide, requirement, Base, CertAuth, CertFault,
    CertProblem, Inputs, Plan, Requirement, ResultType, Source, TlsFailure, TlsPolicyFailure,
};
pub use route::{resolve, Resolver, ResolverError, RouteError, Target};
pub use tls_client::{ClientTls, ServerCheck, TlsSetupError, TrustSources};
pub use transition::{transition, RetryPolicy, Transition};
