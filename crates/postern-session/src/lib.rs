//! The inbound SMTP session as a pure state machine.
//!
//! No sockets, no tokio, no clock: the listener feeds received bytes in with
//! [`Session::receive`] and asks [`Session::poll`] what to do next. Every
//! [`Action`] is something the listener performs — write a reply, read more
//! input, start TLS, store a message, close — and reports back where the
//! outcome matters ([`Session::tls_established`], [`Session::enqueued`]).
//! A message body is handed over in pieces as it arrives
//! ([`Action::BeginMessage`], [`Action::MessageData`], [`Action::Enqueue`]
//! or [`Action::DiscardMessage`]), so a session holds at most a bounded
//! buffer of it, whatever the message size.
//! That keeps every protocol rule testable as a dialog without a network
//! (see `tests/dialog.rs`).
//!
//! Layout, one file per phase of a session:
//! `ehlo.rs` (greeting, EHLO/HELO), `envelope.rs` (MAIL, RCPT, relay control),
//! `data.rs` (DATA and BDAT), `starttls.rs` (STARTTLS and the reset it
//! causes), `received.rs` (the `Received:` header), `session.rs` (the driver).

mod data;
mod ehlo;
mod envelope;
mod received;
mod replies;
mod session;
mod starttls;

pub use received::{message_id, received_header, tls_required_no};
pub use session::{
    Action, ClientCert, Delivery, Session, SessionConfig, SessionEvent, SessionStats, TlsInfo,
    BODY_CHUNK,
};
