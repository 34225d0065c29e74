//! DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030): receiving the message and
//! handing it over for durable storage. The `250` comes only from
//! [`Session::enqueued`], after the listener has stored the message.

use postern_proto::{BdatReceiver, DataOutcome, DataReceiver, Reply};

use crate::replies;
use crate::session::{Action, Delivery, Phase, Session, SessionEvent};

impl Session {
    fn max_size(&self) -> usize {
        usize::try_from(self.config.settings.mta.max_message_size).unwrap_or(usize::MAX)
    }

    /// Why DATA/BDAT cannot start now, if it cannot.
    fn data_refusal(&self) -> Option<Reply> {
        if let Some(reply) = self.transaction_refusal() {
            return Some(reply);
        }
        match &self.transaction {
            None => Some(replies::need_mail()),
            Some(t) if t.recipients.is_empty() => Some(replies::need_rcpt()),
            Some(_) => None,
        }
    }

    pub(crate) fn data(&mut self) {
        if let Some(reply) = self.data_refusal() {
            return self.error(reply);
        }
        if self
            .transaction
            .as_ref()
            .is_some_and(|t| t.chunks.is_some())
        {
            return self.error(replies::data_after_bdat());
        }
        self.reply(replies::start_data());
        self.phase = Phase::Data(DataReceiver::new(self.max_size()));
    }

    pub(crate) fn bdat(&mut self, size: u64, last: bool) {
        // The chunk's bytes follow the command whatever we answer, so a
        // refused BDAT still reads (and drops) them to stay in sync.
        if let Some(reply) = self.data_refusal() {
            self.stats.errors += 1;
            self.phase = Phase::Chunk {
                size,
                last,
                discard: Some((size, reply)),
            };
            return;
        }
        let max = self.max_size();
        if let Some(transaction) = &mut self.transaction {
            let receiver = transaction
                .chunks
                .get_or_insert_with(|| BdatReceiver::new(max));
            receiver.begin_chunk(size);
        }
        self.phase = Phase::Chunk {
            size,
            last,
            discard: None,
        };
    }

    /// Feed buffered input into the current chunk; false when more is needed.
    pub(crate) fn continue_chunk(&mut self) -> bool {
        let Phase::Chunk {
            size,
            last,
            discard,
        } = &mut self.phase
        else {
            return false;
        };
        let (size, last) = (*size, *last);
        if let Some((remaining, _)) = discard {
            let take = usize::try_from(*remaining)
                .unwrap_or(usize::MAX)
                .min(self.input.len());
            self.input.drain(..take);
            *remaining -= take as u64;
            if *remaining > 0 {
                return false;
            }
            if let Phase::Chunk {
                discard: Some((_, reply)),
                ..
            } = std::mem::replace(&mut self.phase, Phase::Command)
            {
                self.reply(reply);
            }
            return true;
        }
        let Some(receiver) = self.transaction.as_mut().and_then(|t| t.chunks.as_mut()) else {
            self.phase = Phase::Command;
            return true;
        };
        let consumed = receiver.feed(&self.input);
        self.input.drain(..consumed);
        if receiver.remaining() > 0 {
            return false;
        }
        self.phase = Phase::Command;
        let too_big = receiver.is_too_big();
        if last || too_big {
            let outcome = match self.transaction.as_mut().and_then(|t| t.chunks.take()) {
                Some(receiver) if !too_big => receiver.finish(),
                _ => DataOutcome::TooBig,
            };
            self.end_of_data(outcome);
        } else {
            self.reply(replies::chunk_ok(size));
        }
        true
    }

    /// The whole message is in: hand it over, or refuse it.
    pub(crate) fn end_of_data(&mut self, outcome: DataOutcome) {
        self.phase = Phase::Command;
        let Some(transaction) = self.transaction.take() else {
            return self.error(replies::need_mail());
        };
        let message = match outcome {
            DataOutcome::Complete(message) => message,
            DataOutcome::TooBig | DataOutcome::BareLineEnding => {
                let reply = if outcome == DataOutcome::TooBig {
                    replies::message_too_big()
                } else {
                    replies::bare_line_ending()
                };
                self.stats.rejected += 1;
                self.log(SessionEvent::MessageRejected {
                    sender: transaction.sender,
                    recipients: transaction.recipients,
                    reply: reply.clone(),
                });
                return self.reply(reply);
            }
        };
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        let delivery = Delivery {
            protocol: protocol_name(esmtp, self.tls.is_some(), transaction.smtputf8),
            sender: transaction.sender,
            recipients: transaction.recipients,
            message,
            helo: self
                .helo
                .as_ref()
                .map(|h| h.name.clone())
                .unwrap_or_default(),
            peer: self.peer,
            tls: self.tls.clone(),
            body: transaction.body,
            smtputf8: transaction.smtputf8,
        };
        self.phase = Phase::AwaitingStore;
        self.actions.push_back(Action::Enqueue(Box::new(delivery)));
    }

    /// The listener's answer to [`Action::Enqueue`]: the queue ID once the
    /// message is durable, or an error (nothing was acknowledged).
    pub fn enqueued(&mut self, result: Result<String, String>) {
        if !matches!(self.phase, Phase::AwaitingStore) {
            return;
        }
        self.phase = Phase::Command;
        match result {
            Ok(id) => {
                self.stats.accepted += 1;
                self.reply(replies::queued(&id));
            }
            Err(_) => {
                self.stats.rejected += 1;
                self.reply(replies::storage_failed());
            }
        }
    }
}

/// RFC 3848 / RFC 6531 protocol names for the `with` clause of `Received:`.
fn protocol_name(esmtp: bool, tls: bool, smtputf8: bool) -> &'static str {
    match (esmtp, tls, smtputf8) {
        (false, false, _) => "SMTP",
        (false, true, _) => "SMTPS",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "UTF8SMTP",
        (true, true, true) => "UTF8SMTPS",
    }
}
