//! The session driver: input buffering, the phase machine, and the action queue.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;
use postern_config::Settings;
use postern_proto::{take_line, BdatReceiver, Command, DataReceiver, LineError, Reply};

use crate::replies;

/// Longest command line accepted, without CRLF. RFC 5321 asks for 512 with
/// CRLF; ESMTP parameters and UTF-8 addresses need more, 4 KiB is plenty.
pub const MAX_COMMAND_LINE: usize = 4096;
/// Errors (syntax, sequence, refused commands) before the session is closed.
pub const MAX_ERRORS: u32 = 10;
/// NOOP/RSET/VRFY/HELP/EHLO beyond this count as errors (command floods).
pub const MAX_JUNK_COMMANDS: u32 = 100;
/// Message bytes handed to the listener at a time ([`Action::MessageData`]).
/// The session never holds more than twice this of a message, whatever its
/// size: the body goes to disk as it arrives.
pub const BODY_CHUNK: usize = 64 * 1024;

/// Input buffer capacity kept while waiting for the next command.
const IDLE_INPUT_CAPACITY: usize = 1024;

/// What the session needs to know about its listener and the settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our name in the banner, EHLO reply and `Received:` header.
    pub hostname: String,
    /// A snapshot of the shared settings, taken when the connection starts.
    pub settings: Arc<Settings>,
    /// Clients in these networks may relay to any domain.
    pub trusted_networks: Arc<Vec<IpNet>>,
    /// Whether a server certificate is loaded, so STARTTLS can work.
    pub tls_available: bool,
}

/// The negotiated TLS parameters of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// IANA-style suite name, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    pub client_cert: Option<ClientCert>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub subject: String,
    /// Whether it chains to one of `tls.inbound.trusted_client_ca`.
    pub verified: bool,
}

impl ClientCert {
    /// How the mail log shows it: `CN=client (verified)`.
    pub fn log_label(&self) -> String {
        let verified = if self.verified {
            "verified"
        } else {
            "not verified"
        };
        format!("{} ({verified})", self.subject)
    }
}

/// The envelope of a message whose body is arriving: everything the
/// listener needs to start storing it (the body follows in
/// [`Action::MessageData`] and [`Action::Enqueue`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<String>,
    pub helo: String,
    pub peer: SocketAddr,
    pub tls: Option<TlsInfo>,
    /// `7BIT`, `8BITMIME` or `BINARYMIME`.
    pub body: &'static str,
    pub smtputf8: bool,
    /// `MAIL FROM:<..> REQUIRETLS` was given (RFC 8689), in a TLS session.
    pub requiretls: bool,
    /// `ESMTP`, `ESMTPS`, `SMTP`, `UTF8SMTPS`… (RFC 3848) for `Received:`.
    pub protocol: &'static str,
}

/// Things worth a line in the mail log that are not visible in the actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A recipient was refused (relay, limits, syntax of the address).
    RecipientRejected {
        sender: String,
        recipient: String,
        reply: Reply,
    },
    /// A whole message was refused at end of data or at MAIL.
    MessageRejected {
        sender: String,
        recipients: Vec<String>,
        reply: Reply,
    },
}

/// What the listener must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Queue this reply for sending (flush before reading or closing).
    Reply(Reply),
    /// Flush queued replies, then read more input and call `receive`.
    NeedInput,
    /// Flush the queued replies (the last is `220`), then run the TLS
    /// handshake on the raw socket and call `tls_established`. Buffered
    /// plaintext has already been discarded.
    StartTls,
    /// A message body starts (after `354`, or with the first BDAT chunk):
    /// prepare to store a message with this envelope. Its bytes follow.
    BeginMessage(Box<Delivery>),
    /// The next bytes of the message begun (CRLF line ends, dots unstuffed),
    /// about [`BODY_CHUNK`] at a time: append them to what is stored.
    MessageData(Vec<u8>),
    /// The message is complete; these are its last bytes (maybe none).
    /// Store it durably, then call `enqueued` with the outcome.
    Enqueue(Vec<u8>),
    /// Forget the message begun: it is refused or abandoned, and nothing
    /// of it was acknowledged.
    DiscardMessage,
    /// Something for the mail log.
    Log(SessionEvent),
    /// Flush queued replies and close the connection.
    Close,
}

/// Counters for the connection's line in the mail log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub accepted: u32,
    pub rejected: u32,
    pub errors: u32,
    pub commands: u32,
}

#[derive(Debug)]
pub(crate) struct Helo {
    pub name: String,
    pub esmtp: bool,
}

/// The envelope being built between MAIL and end of data.
#[derive(Debug)]
pub(crate) struct Transaction {
    pub sender: String,
    pub body: &'static str,
    pub smtputf8: bool,
    pub requiretls: bool,
    pub recipients: Vec<String>,
    /// Set once a BDAT chunk was received: DATA is then out of sequence.
    pub chunks: Option<BdatReceiver>,
}

#[derive(Debug)]
pub(crate) enum Phase {
    Command,
    /// Skipping the rest of an over-long command line.
    DiscardLine,
    Data(DataReceiver),
    /// Reading a BDAT chunk; `last` marks the final one. Without a
    /// transaction the bytes are read and thrown away (RFC 3030 §2).
    Chunk {
        size: u64,
        last: bool,
        discard: Option<(u64, Reply)>,
    },
    AwaitingTls,
    AwaitingStore,
    Closed,
}

/// One inbound SMTP session.
#[derive(Debug)]
pub struct Session {
    pub(crate) config: SessionConfig,
    pub(crate) peer: SocketAddr,
    pub(crate) trusted_peer: bool,
    pub(crate) tls: Option<TlsInfo>,
    pub(crate) helo: Option<Helo>,
    pub(crate) transaction: Option<Transaction>,
    pub(crate) phase: Phase,
    pub(crate) input: Vec<u8>,
    pub(crate) actions: VecDeque<Action>,
    pub(crate) stats: SessionStats,
    pub(crate) junk_commands: u32,
    /// Message bytes not yet handed over (less than 2 × [`BODY_CHUNK`]).
    pub(crate) body: Vec<u8>,
    /// `BeginMessage` was sent, and neither `Enqueue` nor `DiscardMessage`.
    pub(crate) message_open: bool,
}

impl Session {
    /// A new session. `tls` is `Some` on implicit-TLS listeners.
    pub fn new(config: SessionConfig, peer: SocketAddr, tls: Option<TlsInfo>) -> Self {
        let trusted_peer = config
            .trusted_networks
            .iter()
            .any(|net| net.contains(&peer.ip()));
        Self {
            config,
            peer,
            trusted_peer,
            tls,
            helo: None,
            transaction: None,
            phase: Phase::Command,
            input: Vec::new(),
            actions: VecDeque::new(),
            stats: SessionStats::default(),
            junk_commands: 0,
            body: Vec::new(),
            message_open: false,
        }
    }

    /// The `220` greeting.
    pub fn greeting(&self) -> Reply {
        Reply::plain(
            220,
            vec![self.config.settings.banner(&self.config.hostname)],
        )
    }

    /// Bytes received from the client.
    pub fn receive(&mut self, bytes: &[u8]) {
        if !matches!(self.phase, Phase::AwaitingTls | Phase::Closed) {
            self.input.extend_from_slice(bytes);
        }
    }

    /// Whether unprocessed input is buffered (the listener flushes replies
    /// when it is not: RFC 2920 §3.2).
    pub fn has_buffered_input(&self) -> bool {
        !self.input.is_empty()
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Bytes of buffer this session holds for input and message data (what
    /// an idle connection costs beyond its socket).
    pub fn buffered_capacity(&self) -> usize {
        self.input.capacity() + self.body.capacity()
    }

    /// Whether a message is being received (shutdown lets it finish).
    pub fn is_receiving_message(&self) -> bool {
        matches!(
            self.phase,
            Phase::Data(_) | Phase::Chunk { .. } | Phase::AwaitingStore
        )
    }

    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Action {
        loop {
            if let Some(action) = self.actions.pop_front() {
                return action;
            }
            match &mut self.phase {
                Phase::Closed | Phase::AwaitingTls | Phase::AwaitingStore => {
                    // The listener must report TLS or store outcomes first;
                    // closing is the only safe answer to a confused driver.
                    return Action::Close;
                }
                Phase::Command => {
                    if !self.next_command() {
                        return self.need_input();
                    }
                }
                Phase::DiscardLine => match self.input.iter().position(|&b| b == b'\n') {
                    Some(end) => {
                        self.input.drain(..=end);
                        self.phase = Phase::Command;
                    }
                    None => {
                        self.input.clear();
                        return self.need_input();
                    }
                },
                Phase::Data(_) => {
                    if !self.continue_data() {
                        return Action::NeedInput;
                    }
                }
                Phase::Chunk { .. } => {
                    if !self.continue_chunk() && self.actions.is_empty() {
                        return Action::NeedInput;
                    }
                }
            }
        }
    }

    /// Waiting for the client between messages: an empty input buffer that
    /// message data made large is given back, so an idle connection holds
    /// no large buffer.
    fn need_input(&mut self) -> Action {
        if self.input.is_empty() && self.input.capacity() > IDLE_INPUT_CAPACITY {
            self.input = Vec::new();
        }
        Action::NeedInput
    }

    /// Take and handle one command line; false when more input is needed.
    fn next_command(&mut self) -> bool {
        let parsed = match take_line(&self.input, MAX_COMMAND_LINE) {
            Ok(None) => return false,
            Ok(Some((line, consumed))) => {
                let parsed = (Command::parse(line), looks_like_http(line));
                self.input.drain(..consumed);
                Ok(parsed)
            }
            Err(LineError::TooLong { consumed }) => {
                let complete = consumed > 0 && self.input.get(consumed - 1) == Some(&b'\n');
                self.input.drain(..consumed);
                if !complete {
                    self.phase = Phase::DiscardLine;
                }
                Err(replies::line_too_long())
            }
            Err(LineError::BareLf { consumed }) => {
                self.input.drain(..consumed);
                Err(replies::bare_lf_in_command())
            }
        };
        self.stats.commands += 1;
        match parsed {
            Err(reply) => self.error(reply),
            Ok((_, true)) => {
                self.reply(replies::http_refused());
                self.close();
            }
            Ok((Err(syntax), false)) => self.error(replies::syntax(&syntax)),
            Ok((Ok(command), false)) => self.dispatch(command),
        }
        true
    }

    fn dispatch(&mut self, command: Command) {
        match command {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::StartTls => self.starttls(),
            Command::Rset => {
                self.junk();
                self.reset_transaction();
                self.reply(replies::ok());
            }
            Command::Noop => {
                self.junk();
                self.reply(replies::ok());
            }
            Command::Help => {
                self.junk();
                self.reply(replies::help());
            }
            Command::Vrfy(_) | Command::Expn(_) => {
                self.junk();
                self.error(replies::vrfy_disabled());
            }
            Command::Auth => self.error(replies::auth_not_enabled()),
            Command::Quit => {
                self.reply(replies::bye());
                self.close();
            }
        }
    }

    /// Queue a reply.
    pub(crate) fn reply(&mut self, reply: Reply) {
        self.actions.push_back(Action::Reply(reply));
    }

    /// Queue an error reply; too many errors end the session.
    pub(crate) fn error(&mut self, reply: Reply) {
        self.reply(reply);
        self.stats.errors += 1;
        if self.stats.errors >= MAX_ERRORS && !matches!(self.phase, Phase::Closed) {
            self.reply(replies::too_many_errors());
            self.close();
        }
    }

    /// Commands that do no work count; a flood of them is an error.
    fn junk(&mut self) {
        self.junk_commands += 1;
        if self.junk_commands > MAX_JUNK_COMMANDS {
            self.stats.errors += 1;
        }
    }

    pub(crate) fn close(&mut self) {
        self.discard_body();
        self.phase = Phase::Closed;
        self.input.clear();
        self.actions.push_back(Action::Close);
    }

    /// Forget the transaction and any message begun for it.
    pub(crate) fn reset_transaction(&mut self) {
        self.transaction = None;
        self.discard_body();
    }

    pub(crate) fn log(&mut self, event: SessionEvent) {
        self.actions.push_back(Action::Log(event));
    }

    /// The listener reports that the connection is going away (shutdown or
    /// timeout): the reply to send before closing.
    pub fn timeout_reply(&self) -> Reply {
        replies::timeout(&self.config.hostname)
    }

    pub fn shutdown_reply(&self) -> Reply {
        replies::shutting_down(&self.config.hostname)
    }
}

/// `GET / HTTP/1.1` and friends: a browser or proxy probe, not SMTP.
fn looks_like_http(line: &[u8]) -> bool {
    const VERBS: [&[u8]; 7] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"CONNECT ",
        b"OPTIONS ",
        b"DELETE ",
    ];
    VERBS
        .iter()
        .any(|verb| line.len() >= verb.len() && line[..verb.len()].eq_ignore_ascii_case(verb))
        || line.windows(7).any(|w| w.eq_ignore_ascii_case(b" HTTP/1"))
}
