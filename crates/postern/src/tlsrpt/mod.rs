//! TLS-RPT sending (RFC 8460, SPEC §11): once per UTC day, for the
//! previous day, one aggregate report per recipient domain that publishes
//! `_smtp._tls`, built from the recorded attempts.
//!
//! Layout: `discovery` (the `_smtp._tls` record), `mail` (the report as a
//! `multipart/report` mail), `post` (the `https:` POST), `send` (plan a
//! period's reports, claim each in the store, deliver it, retry `https:`
//! failures), `daily` (the gateway's tasks: the daily run, retries, and the
//! socket `postern tlsrpt send` reaches them by). The aggregation itself
//! is pure and lives with the attempt types:
//! [`postern_store::tlsrpt::report`].

pub mod daily;
pub mod discovery;
pub mod mail;
pub mod post;
pub mod send;

use std::sync::Arc;

use postern_delivery::Resolver;
use postern_spool::Spool;
use postern_store::Store;

use crate::queue::QueueRunner;

/// What building and sending reports needs.
pub struct Reporter {
    pub store: Arc<dyn Store>,
    /// The delivery resolver (`[dns]`).
    pub resolver: Resolver,
    pub hostname: String,
    /// Names this node in claims and deliveries.
    pub node_name: String,
    /// `[delivery] https_port`.
    pub https_port: u16,
}

/// Where report mails are queued: the spool, and the runner when the
/// gateway runs in this process.
#[derive(Clone)]
pub struct LocalQueue {
    pub spool: Arc<Spool>,
    pub runner: Option<Arc<QueueRunner>>,
}
