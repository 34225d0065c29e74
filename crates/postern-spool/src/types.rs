//! The records the spool stores: the SMTP envelope and the per-recipient
//! delivery state.

use serde::{Deserialize, Serialize};

use crate::QueueId;

/// The SMTP envelope of one accepted message, plus the facts about how it
/// arrived. Stored as one JSON line in the message file, so an operator can
/// read it with `head -2`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path without angle brackets; `""` is the null sender (bounces).
    pub sender: String,
    /// Forward paths, in the order the client gave them. Never empty.
    pub recipients: Vec<String>,
    /// When the message was accepted, unix seconds.
    pub received_at: i64,
    /// The client's address, e.g. `"203.0.113.5:51234"`.
    pub client_addr: String,
    /// The EHLO/HELO argument.
    pub helo: String,
    /// Protocol and cipher when the session used TLS, e.g.
    /// `"TLSv1.3 TLS13_AES_256_GCM_SHA384"`.
    pub tls: Option<String>,
    /// `"7BIT"`, `"8BITMIME"` or `"BINARYMIME"`.
    pub body: String,
    /// The client asked for SMTPUTF8.
    pub smtputf8: bool,
    /// The Message-ID header value, if the message had one.
    pub message_id: Option<String>,
    /// Received with `MAIL FROM:<..> REQUIRETLS` (RFC 8689): delivered only
    /// over authenticated TLS to a host that offers REQUIRETLS, or bounced.
    /// Absent (false) in version 1 and 2 files.
    #[serde(default, skip_serializing_if = "is_false")]
    pub requiretls: bool,
    /// The header section had `TLS-Required: No` (RFC 8689 §5) and the
    /// message came without REQUIRETLS: published and learned policies
    /// are ignored for it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls_required_no: bool,
}

impl Envelope {
    /// Whether an older reader (version 2) would lose something of this
    /// envelope: then the file is written as version 3, which such a
    /// reader refuses instead of delivering the message without it.
    pub(crate) fn needs_version_3(&self) -> bool {
        self.requiretls || self.tls_required_no
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Where delivery to one recipient stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not tried yet.
    Pending,
    /// Tried, failed temporarily; will be retried at `next_attempt`.
    Deferred,
    /// Accepted by the next hop.
    Delivered,
    /// Failed permanently (or the queue lifetime ended); a DSN was or will be sent.
    Bounced,
}

impl DeliveryState {
    /// Delivered or bounced: nothing more will be done for this recipient.
    pub fn is_final(self) -> bool {
        matches!(self, DeliveryState::Delivered | DeliveryState::Bounced)
    }
}

/// Delivery state of one recipient of a queued message.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RecipientState {
    /// The recipient, exactly as in [`Envelope::recipients`].
    pub address: String,
    pub state: DeliveryState,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// When to try next, unix seconds (for `Deferred`).
    pub next_attempt: Option<i64>,
    /// The last failure, naming the host and what failed.
    pub last_error: Option<String>,
}

impl RecipientState {
    /// The state of a recipient nobody has tried yet.
    pub fn pending(address: impl Into<String>) -> RecipientState {
        RecipientState {
            address: address.into(),
            state: DeliveryState::Pending,
            attempts: 0,
            next_attempt: None,
            last_error: None,
        }
    }
}

/// A queued message without its body: what listing and scheduling need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedEnvelope {
    pub id: QueueId,
    pub envelope: Envelope,
    /// One entry per envelope recipient, in the same order.
    pub recipients: Vec<RecipientState>,
    /// Size of the message (header and body as received), in bytes.
    pub size: u64,
}

/// A queued message, verified and open for reading, for delivery.
#[derive(Debug)]
pub struct QueuedMessage {
    pub envelope: QueuedEnvelope,
    /// The message exactly as received (CRLF line endings, dot-unstuffed),
    /// read from the queue file on demand.
    pub body: crate::MessageFile,
}

/// What [`Spool::recover`](crate::Spool::recover) found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Messages that verified and stay queued, oldest first.
    pub ok: Vec<QueueId>,
    /// Files moved to `corrupt/`: (file name in `queue/`, reason).
    pub quarantined: Vec<(String, String)>,
}
