//! SMTP grammar without I/O (RFC 5321, 1870, 2920, 3030, 3207, 6152, 6531, 2034).
//!
//! Bytes in, typed values out. Nothing here reads a socket or knows about
//! tokio, so every rule can be tested (and fuzzed) as plain data:
//!
//! * [`line`] — splitting the input into CRLF-terminated command lines.
//! * [`address`] — the mailbox grammar, shared by the command parser and
//!   the outbound client (what one accepts, the other can send).
//! * [`command`] — a command line into a typed [`Command`], or a
//!   [`SyntaxError`] that says what was expected.
//! * [`reply`] — [`Reply`] values with enhanced status codes, rendered to
//!   wire form; [`reply_parse`] parses them back for the outbound client.
//! * [`data`] — the DATA receiver: dot-unstuffing, strict CRLF framing (a
//!   bare CR or LF is never end of data: no SMTP smuggling), size limit.
//! * [`bdat`] — the CHUNKING (BDAT) receiver with the same rules.

pub mod address;
pub mod bdat;
pub mod command;
pub mod data;
pub mod line;
pub mod reply;
pub mod reply_parse;

pub use bdat::BdatReceiver;
pub use command::{Address, Body, Command, MailParams, RcptParams, ReversePath, SyntaxError};
pub use data::{DataOutcome, DataReceiver};
pub use line::{take_line, LineError};
pub use reply::{EnhancedCode, Reply};
pub use reply_parse::ReplyError;
