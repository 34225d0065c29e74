//! One mail transaction on an open connection: local checks (addresses,
//! SMTPUTF8, SIZE), MAIL and RCPT (pipelined when offered, RFC 2920), DATA
//! with dot-stuffing (RFC 5321 §4.5.2), and per-recipient outcomes. The
//! body streams from the queue file in bounded chunks, never whole.

use std::time::Duration;

use postern_proto::Reply;

use super::{AttemptError, Connection, Outgoing, RecipientOutcome, RecipientResult};
use crate::body::{MessageBody, READ_CHUNK};
use crate::classify::{Failure, FailureKind, MessageProblem, Stage};
use crate::dsn::header_section;
use crate::policy::TlsPolicyFailure;

impl Connection {
    /// Send one message. `Ok` carries one outcome per recipient, in order
    /// (some may have failed); `Err` means the connection failed and the
    /// message was not delivered to anyone on it.
    pub async fn send(
        &mut self,
        message: &Outgoing<'_>,
    ) -> Result<Vec<RecipientOutcome>, AttemptError> {
        if !self.usable {
            return Err(self.error(FailureKind::Local(
                "connection is no longer usable after an earlier failure".into(),
            )));
        }
        if message.recipients.is_empty() {
            return Ok(Vec::new());
        }
        if message.requiretls && !(self.record.is_tls() && self.caps.requiretls) {
            // The requirement already refused such a host; this keeps the
            // promise even if a connection was opened for another one.
            let failure = Failure::new(
                Some(self.host.clone()),
                FailureKind::TlsPolicy(TlsPolicyFailure::RequireTlsNotOffered),
            )
            .under("REQUIRETLS".into());
            return Ok(all_failed(message.recipients, &failure));
        }
        if let Some(problem) = self.refusal(message) {
            let failure = Failure::new(Some(self.host.clone()), FailureKind::Message(problem));
            return Ok(all_failed(message.recipients, &failure));
        }
        match self.transaction(message).await {
            Ok(outcomes) => Ok(outcomes),
            Err(kind) => {
                self.usable = false;
                Err(self.error(kind))
            }
        }
    }

    /// Reasons not to send the message to this server at all.
    fn refusal(&self, message: &Outgoing<'_>) -> Option<MessageProblem> {
        if !is_clean_address(message.sender) {
            return Some(MessageProblem::InvalidAddress(message.sender.to_string()));
        }
        if let Some(bad) = message
            .recipients
            .iter()
            .find(|r| r.is_empty() || !is_clean_address(r))
        {
            return Some(MessageProblem::InvalidAddress(bad.clone()));
        }
        if needs_smtputf8(message) && !self.caps.smtputf8 {
            return Some(MessageProblem::SmtpUtf8NotOffered);
        }
        let size = message.message.len();
        if let Some(limit) = self.caps.size.filter(|limit| *limit > 0) {
            if size > limit {
                return Some(MessageProblem::TooBig { size, limit });
            }
        }
        None
    }

    async fn transaction(
        &mut self,
        message: &Outgoing<'_>,
    ) -> Result<Vec<RecipientOutcome>, FailureKind> {
        let limit = self.timeouts.command;
        let mail = self.mail_command(message);
        let rcpts: Vec<String> = message
            .recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>\r\n"))
            .collect();

        // MAIL, every RCPT and DATA: in one write when the server pipelines
        // (RFC 2920 §3.1: DATA may end the group), one round trip.
        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        let mut data_reply = None;
        let mail_reply = if self.caps.pipelining {
            let mut batch = mail.into_bytes();
            for rcpt in &rcpts {
                batch.extend_from_slice(rcpt.as_bytes());
            }
            batch.extend_from_slice(b"DATA\r\n");
            self.io.write(&batch, limit, Stage::MailFrom).await?;
            let mail_reply = self.read(limit, Stage::MailFrom).await?;
            for _ in &rcpts {
                rcpt_replies.push(self.read(limit, Stage::RcptTo).await?);
            }
            data_reply = Some(self.read(limit, Stage::Data).await?);
            mail_reply
        } else {
            let mail_reply = self.command(&mail, Stage::MailFrom).await?;
            if mail_reply.is_positive() {
                for rcpt in &rcpts {
                    rcpt_replies.push(self.command(rcpt, Stage::RcptTo).await?);
                }
            }
            mail_reply
        };

        if mail_reply.code / 100 != 2 {
            self.end_unwanted_data(data_reply.as_ref()).await?;
            self.rset().await?;
            let failure = self.reply_failure(Stage::MailFrom, mail_reply);
            return Ok(all_failed(message.recipients, &failure));
        }

        let mut outcomes: Vec<Option<RecipientResult>> = vec![None; message.recipients.len()];
        let mut accepted = Vec::new();
        for (i, reply) in rcpt_replies.into_iter().enumerate() {
            if reply.code / 100 == 2 {
                accepted.push(i);
            } else if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(RecipientResult::Failed(
                    self.reply_failure(Stage::RcptTo, reply),
                ));
            }
        }
        if accepted.is_empty() {
            self.end_unwanted_data(data_reply.as_ref()).await?;
            self.rset().await?;
            return Ok(finish(message.recipients, outcomes));
        }

        let data_reply = match data_reply {
            Some(reply) => reply,
            None => self.command("DATA\r\n", Stage::Data).await?,
        };
        let final_result = if data_reply.code != 354 {
            if data_reply.code / 100 == 2 {
                // 2xx to DATA is a protocol violation: we cannot know what
                // the server would make of the message now.
                return Err(FailureKind::Protocol(format!(
                    "unexpected reply to DATA: {data_reply}"
                )));
            }
            self.rset().await?;
            RecipientResult::Failed(self.reply_failure(Stage::Data, data_reply))
        } else {
            self.write_body(message.message).await?;
            let end = self.read(self.timeouts.data_end, Stage::DataEnd).await?;
            if end.code / 100 == 2 {
                RecipientResult::Delivered {
                    reply: end.to_string(),
                }
            } else {
                RecipientResult::Failed(self.reply_failure(Stage::DataEnd, end))
            }
        };
        for i in accepted {
            if let Some(slot) = outcomes.get_mut(i) {
                *slot = Some(final_result.clone());
            }
        }
        Ok(finish(message.recipients, outcomes))
    }

    fn mail_command(&self, message: &Outgoing<'_>) -> String {
        let mut command = format!("MAIL FROM:<{}>", message.sender);
        if self.caps.size.is_some() {
            command.push_str(&format!(" SIZE={}", message.message.len()));
        }
        if self.caps.eight_bit_mime && message.message.has_8bit() {
            command.push_str(" BODY=8BITMIME");
        }
        if self.caps.smtputf8 && (message.smtputf8 || needs_smtputf8(message)) {
            command.push_str(" SMTPUTF8");
        }
        if message.requiretls {
            // RFC 8689 §4.2: the next hop takes on the same obligation.
            command.push_str(" REQUIRETLS");
        }
        command.push_str("\r\n");
        command
    }

    fn reply_failure(&self, stage: Stage, reply: Reply) -> Failure {
        Failure::new(Some(self.host.clone()), FailureKind::Reply { stage, reply })
    }

    /// Read a reply; `421` (service closing) ends the connection.
    async fn read(&mut self, limit: Duration, stage: Stage) -> Result<Reply, FailureKind> {
        let reply = self.io.read_reply(limit, stage).await?;
        self.record.reply = reply.to_string();
        if reply.code == 421 {
            return Err(FailureKind::Reply { stage, reply });
        }
        Ok(reply)
    }

    async fn command(&mut self, line: &str, stage: Stage) -> Result<Reply, FailureKind> {
        let limit = self.timeouts.command;
        self.io.write(line.as_bytes(), limit, stage).await?;
        self.read(limit, stage).await
    }

    /// A pipelined DATA that the server accepted although MAIL or every
    /// RCPT failed: RFC 2920 §3.1 says to send a lone dot, so the server
    /// takes no message and reads commands again.
    async fn end_unwanted_data(&mut self, data_reply: Option<&Reply>) -> Result<(), FailureKind> {
        if data_reply.is_some_and(|r| r.code == 354) {
            self.io
                .write(b".\r\n", self.timeouts.command, Stage::DataEnd)
                .await?;
            self.read(self.timeouts.data_end, Stage::DataEnd).await?;
        }
        Ok(())
    }

    /// Abandon a transaction that did not reach the end of DATA.
    async fn rset(&mut self) -> Result<(), FailureKind> {
        let reply = self.command("RSET\r\n", Stage::Rset).await?;
        if reply.code / 100 != 2 {
            return Err(FailureKind::Reply {
                stage: Stage::Rset,
                reply,
            });
        }
        Ok(())
    }

    /// The message, dot-stuffed, then the end-of-data marker. The message
    /// is read a bounded chunk at a time; a read error ends the attempt
    /// before the final dot, so the server never takes a partial message.
    async fn write_body(&mut self, message: &MessageBody) -> Result<(), FailureKind> {
        let limit = self.timeouts.command;
        let mut out = Vec::with_capacity(READ_CHUNK + READ_CHUNK / 8);
        let mut at_line_start = true;
        let mut pos = 0u64;
        // The last two bytes sent, to know whether the message ends in CRLF.
        let mut tail = [0u8; 2];
        loop {
            let piece = match message.next_piece(pos).await {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                Err(e) => {
                    return Err(FailureKind::Local(format!(
                        "reading the queued message failed: {e}"
                    )))
                }
            };
            pos += piece.len() as u64;
            match piece.as_slice() {
                [.., a, b] => tail = [*a, *b],
                [b] => tail = [tail[1], *b],
                [] => {}
            }
            dot_stuff(&piece, &mut at_line_start, &mut out);
            // The last piece goes out with the end-of-data marker: one
            // write (one TCP segment) for a small message.
            if pos < message.len() {
                self.io.write(&out, limit, Stage::DataEnd).await?;
                out.clear();
            }
        }
        if !message.is_empty() && tail != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.io.write(&out, limit, Stage::DataEnd).await
    }
}

/// Append `input` to `out` with a dot doubled at the start of every line
/// (after any LF, so a bare LF cannot end the data early anywhere).
pub fn dot_stuff(input: &[u8], at_line_start: &mut bool, out: &mut Vec<u8>) {
    out.reserve(input.len());
    // Whole lines at a time: only a line's first byte can need a dot.
    for line in input.split_inclusive(|&b| b == b'\n') {
        if *at_line_start && line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        *at_line_start = line.last() == Some(&b'\n');
    }
}

fn all_failed(recipients: &[String], failure: &Failure) -> Vec<RecipientOutcome> {
    recipients
        .iter()
        .map(|r| RecipientOutcome {
            recipient: r.clone(),
            result: RecipientResult::Failed(failure.clone()),
        })
        .collect()
}

fn finish(recipients: &[String], outcomes: Vec<Option<RecipientResult>>) -> Vec<RecipientOutcome> {
    recipients
        .iter()
        .zip(outcomes)
        .map(|(recipient, result)| RecipientOutcome {
            recipient: recipient.clone(),
            result: result.unwrap_or_else(|| {
                RecipientResult::Failed(Failure::new(
                    None,
                    FailureKind::Local("no result for recipient".into()),
                ))
            }),
        })
        .collect()
}

/// RFC 6531: non-ASCII addresses, or UTF-8 headers of a message that came
/// in with SMTPUTF8, need a server that offers it.
fn needs_smtputf8(message: &Outgoing<'_>) -> bool {
    !message.sender.is_ascii()
        || message.recipients.iter().any(|r| !r.is_ascii())
        || (message.smtputf8 && !header_section(message.message.head()).is_ascii())
}

/// The null sender, or a mailbox in the grammar the inbound side accepts
/// (so nothing it accepted bounces here): no line breaks, NUL or angle
/// brackets, nothing that could end or extend a command line.
fn is_clean_address(address: &str) -> bool {
    address.is_empty() || postern_proto::address::is_sendable(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuff(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = true;
        dot_stuff(input, &mut start, &mut out);
        out
    }

    #[test]
    fn dot_stuffing() {
        let rows: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b".\r\n", b"..\r\n"),
            (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n"),
            (b"a.b\r\n..c\r\n", b"a.b\r\n...c\r\n"),
            (b"x\n.y", b"x\n..y"),
            (b"x\r.y", b"x\r.y"),
        ];
        for (input, output) in rows {
            assert_eq!(
                stuff(input),
                *output,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        // Across chunk boundaries.
        let mut out = Vec::new();
        let mut start = true;
        dot_stuff(b"a\r\n", &mut start, &mut out);
        dot_stuff(b".b\r\n", &mut start, &mut out);
        assert_eq!(out, b"a\r\n..b\r\n");
    }

    #[test]
    fn addresses_cannot_inject_commands() {
        assert!(is_clean_address("user@example.test"));
        assert!(is_clean_address(""));
        assert!(is_clean_address("\"john doe\"@example.test"));
        assert!(!is_clean_address("a@b>\r\nRCPT TO:<c@d"));
        assert!(!is_clean_address("a@b\0"));
        // The inbound grammar: what RCPT refuses is never sent either.
        assert!(!is_clean_address("\"x<y>\"@relay.test"));
        assert!(!is_clean_address("a@relay.test@other.test"));
        assert!(!is_clean_address(&format!("{}@relay.test", "a".repeat(65))));
    }
}
