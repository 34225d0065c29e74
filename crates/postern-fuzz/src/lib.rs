//! The bodies of Postern's fuzz targets, shared by the coverage-guided
//! fuzzer and the stable test suite.
//!
//! Every parser that reads bytes from outside — the network, an
//! administrator's file, the disk — has a target here. Each target is a
//! plain function `fn(&[u8])` that feeds the bytes to the parser and panics
//! when an invariant breaks (a panic inside the parser counts too):
//!
//! * `fuzz/fuzz_targets/<name>.rs` wraps it for cargo-fuzz (libFuzzer);
//!   `scripts/fuzz.sh` runs every target for a bounded time.
//! * `tests/corpus.rs` replays every file of `fuzz/corpus/<name>/` through
//!   the same function on stable Rust, so the seeds and every reproducer
//!   of a fixed crash run in `cargo test`.
//!
//! The targets check more than "does not panic": the DATA and BDAT
//! receivers are compared with a straightforward reference reader (so an
//! end of data can only ever be `CRLF.CRLF`, whatever the read splits), the
//! session is checked against the security rules a fuzzer can see (no mail
//! without TLS under `require`, no relaying for strangers, no plaintext
//! surviving STARTTLS, bounded output), and settings must survive an
//! export/import round trip.

mod input;

pub mod bdat_receiver;
pub mod command;
pub mod data_receiver;
pub mod dns_derived;
pub mod mta_sts;
pub mod node_config;
pub mod pem_import;
pub mod reply_parse;
pub mod session;
pub mod settings;
pub mod spool_file;

pub use input::{Input, Splits};

/// A target's body: feed it the fuzzer's bytes; it panics on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by name: the name of its `fuzz/fuzz_targets/<name>.rs` and
/// of its corpus directory `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("command", command::run),
    ("data_receiver", data_receiver::run),
    ("bdat_receiver", bdat_receiver::run),
    ("reply_parse", reply_parse::run),
    ("settings", settings::run),
    ("node_config", node_config::run),
    ("pem_import", pem_import::run),
    ("session", session::run),
    ("dns_derived", dns_derived::run),
    ("spool_file", spool_file::run),
    ("mta_sts", mta_sts::run),
];

/// Whether `bytes` has only CRLF line endings: every CR is followed by LF
/// and every LF follows a CR.
pub fn strict_crlf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes.get(i - 1) == Some(&b'\r'),
        _ => true,
    })
}

/// A receiver's outcome together with the bytes it passed on (kept only
/// for a complete message), as the targets compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Complete(Vec<u8>),
    TooBig,
    BareLineEnding,
}

impl Received {
    pub fn new(outcome: postern_proto::DataOutcome, message: Vec<u8>) -> Self {
        match outcome {
            postern_proto::DataOutcome::Complete => Received::Complete(message),
            postern_proto::DataOutcome::TooBig => Received::TooBig,
            postern_proto::DataOutcome::BareLineEnding => Received::BareLineEnding,
        }
    }
}
