//! The outbound TLS policy engine (SPEC §6, §10; STYLE practice 10).
//!
//! Two steps, both pure:
//!
//! 1. [`requirement`] turns every policy source for one message, recipient
//!    domain and MX host — the administrator's rules ([`Base`]), the
//!    domain's MTA-STS policy, the host's DANE TLSA records with their
//!    DNSSEC status, the learned level, the message's REQUIRETLS flag and
//!    `TLS-Required: No` ([`Inputs`]) — into one typed [`Requirement`]:
//!    the level, how the certificate is authenticated, which MX hosts may
//!    be used, and which source set it. Sources only ever raise the base.
//! 2. [`decide`] (after EHLO), [`after_handshake`] (TLS is up) and
//!    [`after_tls_failure`] (STARTTLS refused or the handshake failed)
//!    apply a requirement to what the peer did; every refusal is a
//!    [`TlsPolicyFailure`] carrying its RFC 8460 result type.
//!
//! New sources are new fields of [`Inputs`] and new rows in the table
//! tests, never a new path through delivery. Layout: `inputs.rs` (what the
//! sources say), `requirement.rs` (the requirement and the function that
//! forms it), `verdict.rs` (applying it to a connection).

mod inputs;
mod requirement;
mod verdict;

pub use inputs::{
    Authenticity, Base, DaneInput, DomainRule, Inputs, LearnMode, LearnedLevel, MtaStsMode,
    MtaStsPolicy, RouteAuth, Tlsa,
};
pub use requirement::{requirement, CertAuth, Enforcement, MxRule, Requirement, Source, StsRef};
pub use verdict::{
    after_handshake, after_tls_failure, decide, CertFault, CertProblem, Fallback, Plan, ResultType,
    TlsFailure, TlsPolicyFailure,
};
