//! DATA (RFC 5321 §4.1.1.4) and BDAT (RFC 3030): receiving the message and
//! handing it over for durable storage as it arrives — `BeginMessage` when
//! the body starts, `MessageData` per [`BODY_CHUNK`], then `Enqueue` with
//! the last bytes, or `DiscardMessage` as soon as it is refused. The `250`
//! comes only from [`Session::enqueued`], after the listener has stored the
//! message durably.

use postern_proto::{BdatReceiver, DataOutcome, DataReceiver, Reply};

use crate::replies;
use crate::session::{Action, Delivery, Phase, Session, SessionEvent, BODY_CHUNK};

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
        self.begin_message();
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
        let first = self
            .transaction
            .as_ref()
            .is_some_and(|t| t.chunks.is_none());
        if first {
            self.begin_message();
        }
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

    /// Announce the message whose body starts now.
    fn begin_message(&mut self) {
        let Some(transaction) = &self.transaction else {
            return;
        };
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        let delivery = Delivery {
            protocol: protocol_name(esmtp, self.tls.is_some(), transaction.smtputf8),
            sender: transaction.sender.clone(),
            recipients: transaction.recipients.clone(),
            helo: self
                .helo
                .as_ref()
                .map(|h| h.name.clone())
                .unwrap_or_default(),
            peer: self.peer,
            tls: self.tls.clone(),
            body: transaction.body,
            smtputf8: transaction.smtputf8,
            requiretls: transaction.requiretls,
        };
        self.body.clear();
        self.message_open = true;
        self.actions
            .push_back(Action::BeginMessage(Box::new(delivery)));
    }

    /// Forget the message begun (refused or abandoned), once.
    pub(crate) fn discard_body(&mut self) {
        self.body = Vec::new();
        if std::mem::take(&mut self.message_open) {
            self.actions.push_back(Action::DiscardMessage);
        }
    }

    /// After bytes were added to `body`: hand a full buffer over, or drop
    /// everything once the message is certain to be refused.
    fn after_feed(&mut self, refused: bool) {
        if refused {
            self.discard_body();
        } else if self.body.len() >= BODY_CHUNK {
            let data = std::mem::replace(&mut self.body, Vec::with_capacity(BODY_CHUNK));
            self.actions.push_back(Action::MessageData(data));
        }
    }

    /// Feed buffered input into the DATA receiver, at most [`BODY_CHUNK`]
    /// at a time; false when more input is needed.
    pub(crate) fn continue_data(&mut self) -> bool {
        let Phase::Data(receiver) = &mut self.phase else {
            return false;
        };
        let take = self.input.len().min(BODY_CHUNK);
        let piece = self.input.get(..take).unwrap_or_default();
        let (consumed, outcome) = receiver.feed(piece, &mut self.body);
        let refused = receiver.is_refused();
        self.input.drain(..consumed);
        match outcome {
            Some(outcome) => {
                self.end_of_data(outcome);
                true
            }
            None => {
                self.after_feed(refused);
                !self.input.is_empty() || !self.actions.is_empty()
            }
        }
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
        let take = self.input.len().min(BODY_CHUNK);
        let piece = self.input.get(..take).unwrap_or_default();
        let consumed = receiver.feed(piece, &mut self.body);
        let refused = receiver.is_refused();
        let remaining = receiver.remaining();
        let too_big = receiver.is_too_big();
        self.input.drain(..consumed);
        if remaining > 0 {
            self.after_feed(refused);
            return !self.input.is_empty();
        }
        self.phase = Phase::Command;
        if last || too_big {
            let outcome = match self.transaction.as_mut().and_then(|t| t.chunks.take()) {
                Some(receiver) if !too_big => receiver.finish(&mut self.body),
                _ => DataOutcome::TooBig,
            };
            self.end_of_data(outcome);
        } else {
            self.after_feed(refused);
            self.reply(replies::chunk_ok(size));
        }
        true
    }

    /// The whole message is in: hand it over, or refuse it.
    pub(crate) fn end_of_data(&mut self, outcome: DataOutcome) {
        self.phase = Phase::Command;
        let Some(transaction) = self.transaction.take() else {
            self.discard_body();
            return self.error(replies::need_mail());
        };
        if outcome != DataOutcome::Complete || !self.message_open {
            self.discard_body();
            let reply = match outcome {
                DataOutcome::TooBig => replies::message_too_big(),
                DataOutcome::BareLineEnding => replies::bare_line_ending(),
                DataOutcome::Complete => replies::storage_failed(),
            };
            self.stats.rejected += 1;
            self.log(SessionEvent::MessageRejected {
                sender: transaction.sender,
                recipients: transaction.recipients,
                reply: reply.clone(),
            });
            return self.reply(reply);
        }
        self.message_open = false;
        self.phase = Phase::AwaitingStore;
        let last = std::mem::take(&mut self.body);
        self.actions.push_back(Action::Enqueue(last));
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
