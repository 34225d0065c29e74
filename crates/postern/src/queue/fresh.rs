//! Messages just received, handed from the listener to the queue runner
//! in memory, so their first attempt does not read back the file the
//! listener has just written and fsync'd (a blocking-pool task, two file
//! opens and a checksum per message, ~5% of the CPU per relayed message).
//!
//! The spool stays the truth: only the first attempt uses the copy, only
//! messages small enough to be read whole for delivery anyway, and only
//! within a memory bound; everything else is read from the spool as before.

use std::collections::HashMap;
use std::sync::Mutex;

use postern_delivery::MessageBody;
use postern_spool::{Envelope, QueueId, QueuedEnvelope, RecipientState};

/// A message larger than this is read from the spool (delivery reads up to
/// this much whole anyway: `postern_delivery::body::WHOLE_BYTES`).
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Bytes of message held here at most; beyond it, messages are read back.
const MAX_TOTAL: usize = 16 * 1024 * 1024;

/// A queued message opened for delivery: envelope with per-recipient
/// state, and the bytes to send (read from the file in bounded chunks
/// while it is sent, or held in memory).
pub struct Loaded {
    pub envelope: QueuedEnvelope,
    pub body: MessageBody,
}

#[derive(Default)]
pub struct Fresh {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    messages: HashMap<QueueId, Loaded>,
    bytes: usize,
}

impl Fresh {
    /// Keep `message`, just stored durably as `id` with `envelope`, for its
    /// first attempt. False (nothing kept) when it is too large or the
    /// bound is reached.
    pub fn keep(&self, id: &QueueId, envelope: Envelope, message: Vec<u8>) -> bool {
        let len = message.len();
        if len > MAX_MESSAGE {
            return false;
        }
        let Ok(mut held) = self.held.lock() else {
            return false;
        };
        if held.bytes + len > MAX_TOTAL {
            return false;
        }
        let recipients = envelope
            .recipients
            .iter()
            .map(|r| RecipientState::pending(r.as_str()))
            .collect();
        let ready = Loaded {
            envelope: QueuedEnvelope {
                id: id.clone(),
                envelope,
                recipients,
                size: len as u64,
            },
            body: MessageBody::from_bytes(message),
        };
        held.bytes += len;
        if let Some(old) = held.messages.insert(id.clone(), ready) {
            held.bytes -= old.body.len() as usize;
        }
        true
    }

    /// The message for its first attempt, if it is still held here.
    pub fn take(&self, id: &QueueId) -> Option<Loaded> {
        let mut held = self.held.lock().ok()?;
        let ready = held.messages.remove(id)?;
        held.bytes -= ready.body.len() as usize;
        Some(ready)
    }

    /// Forget `id` (deleted before its first attempt).
    pub fn forget(&self, id: &QueueId) {
        drop(self.take(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(recipients: &[&str]) -> Envelope {
        Envelope {
            sender: "a@example.com".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            received_at: 1,
            client_addr: "127.0.0.1:1".into(),
            helo: "c".into(),
            tls: None,
            body: "7BIT".into(),
            smtputf8: false,
            message_id: None,
            requiretls: false,
            tls_required_no: false,
        }
    }

    fn id(n: u8) -> QueueId {
        format!("0000000000000{n:03}").parse().expect("id")
    }

    #[test]
    fn a_kept_message_is_taken_once_with_every_recipient_pending() {
        let fresh = Fresh::default();
        assert!(fresh.keep(
            &id(1),
            envelope(&["b@x.test", "c@y.test"]),
            b"hi\r\n".to_vec()
        ));
        let ready = fresh.take(&id(1)).expect("kept");
        assert_eq!(ready.envelope.id, id(1));
        assert_eq!(ready.envelope.size, 4);
        assert_eq!(ready.body.head(), b"hi\r\n");
        let states: Vec<_> = ready
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(states, ["b@x.test", "c@y.test"]);
        assert!(ready
            .envelope
            .recipients
            .iter()
            .all(|r| !r.state.is_final() && r.next_attempt.is_none()));
        assert!(
            fresh.take(&id(1)).is_none(),
            "the second attempt reads the spool"
        );
    }

    #[test]
    fn large_messages_and_messages_beyond_the_bound_are_not_kept() {
        let fresh = Fresh::default();
        assert!(!fresh.keep(&id(1), envelope(&["b@x.test"]), vec![b'x'; MAX_MESSAGE + 1]));
        let mut kept = 0;
        for n in 0..=(MAX_TOTAL / MAX_MESSAGE) as u8 {
            kept +=
                usize::from(fresh.keep(&id(n), envelope(&["b@x.test"]), vec![b'x'; MAX_MESSAGE]));
        }
        assert_eq!(kept, MAX_TOTAL / MAX_MESSAGE);
        // Taking one frees its room.
        assert!(fresh.take(&id(0)).is_some());
        assert!(fresh.keep(&id(200), envelope(&["b@x.test"]), vec![b'x'; MAX_MESSAGE]));
    }

    #[test]
    fn a_forgotten_message_is_not_attempted_from_memory() {
        let fresh = Fresh::default();
        assert!(fresh.keep(&id(1), envelope(&["b@x.test"]), b"hi\r\n".to_vec()));
        fresh.forget(&id(1));
        assert!(fresh.take(&id(1)).is_none());
    }
}
