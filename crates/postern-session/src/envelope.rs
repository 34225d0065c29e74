//! MAIL and RCPT (RFC 5321 §4.1.1.2–3): sender, recipients, relay control.

use postern_config::{ClientCertMode, InboundMode};
use postern_proto::{Address, Body, MailParams, RcptParams, Reply, ReversePath};

use crate::replies;
use crate::session::{Session, SessionEvent, Transaction};

impl Session {
    /// Refusal that applies to MAIL, RCPT, DATA and BDAT alike: no greeting,
    /// TLS required but absent, client certificate required but not verified.
    pub(crate) fn transaction_refusal(&self) -> Option<Reply> {
        if self.helo.is_none() {
            return Some(replies::need_helo());
        }
        let inbound = &self.config.settings.tls.inbound;
        if inbound.mode == InboundMode::Require && self.tls.is_none() {
            return Some(replies::must_starttls());
        }
        if inbound.client_certificate == ClientCertMode::Require {
            let verified = self
                .tls
                .as_ref()
                .and_then(|t| t.client_cert.as_ref())
                .is_some_and(|c| c.verified);
            if !verified {
                return Some(replies::client_cert_required());
            }
        }
        None
    }

    pub(crate) fn mail(&mut self, from: ReversePath, params: MailParams) {
        if let Some(reply) = self.transaction_refusal() {
            let sender = reverse_path_text(&from);
            self.log(SessionEvent::MessageRejected {
                sender,
                recipients: Vec::new(),
                reply: reply.clone(),
            });
            return self.error(reply);
        }
        if self.transaction.is_some() {
            return self.error(replies::nested_mail());
        }
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        if let Some((name, _)) = params.other.first() {
            return self.error(replies::unsupported_parameter(name));
        }
        if params.requiretls {
            if let Some(reply) = self.requiretls_refusal() {
                return self.error(reply);
            }
        }
        if !esmtp
            && (params.size.is_some()
                || params.body.is_some()
                || params.smtputf8
                || params.requiretls)
        {
            return self.error(replies::unsupported_parameter(
                "(ESMTP parameters need EHLO)",
            ));
        }
        let body = match params.body.unwrap_or_default() {
            Body::SevenBit => "7BIT",
            Body::EightBitMime => "8BITMIME",
            // Not advertised: we relay with DATA, which cannot carry binary.
            Body::BinaryMime => {
                return self.error(replies::unsupported_parameter("BODY=BINARYMIME"))
            }
        };
        let sender = reverse_path_text(&from);
        if !params.smtputf8 && !sender.is_ascii() {
            return self.error(replies::needs_smtputf8());
        }
        if params
            .size
            .is_some_and(|size| size > self.config.settings.mta.max_message_size)
        {
            let reply = replies::message_too_big();
            self.log(SessionEvent::MessageRejected {
                sender,
                recipients: Vec::new(),
                reply: reply.clone(),
            });
            self.stats.rejected += 1;
            return self.reply(reply);
        }
        self.transaction = Some(Transaction {
            sender,
            body,
            smtputf8: params.smtputf8,
            requiretls: params.requiretls,
            recipients: Vec::new(),
            chunks: None,
        });
        self.reply(replies::sender_ok());
    }

    /// Why `MAIL FROM:<..> REQUIRETLS` cannot be accepted, if it cannot:
    /// the promise of TLS on every hop means nothing if this hop is
    /// plaintext (RFC 8689 §4.1), and without `mta.requiretls` we do not
    /// offer the extension at all.
    fn requiretls_refusal(&self) -> Option<Reply> {
        if self.tls.is_none() {
            return Some(replies::requiretls_needs_tls());
        }
        if !self.config.settings.mta.requiretls {
            return Some(replies::unsupported_parameter(
                "REQUIRETLS (not offered: mta.requiretls = false)",
            ));
        }
        None
    }

    pub(crate) fn rcpt(&mut self, to: Address, params: RcptParams) {
        if let Some(reply) = self.transaction_refusal() {
            return self.error(reply);
        }
        let Some(transaction) = &self.transaction else {
            return self.error(replies::need_mail());
        };
        if transaction.chunks.is_some() {
            // The message is already being stored for the recipients so far.
            return self.error(replies::rcpt_after_bdat());
        }
        if let Some((name, _)) = params.other.first() {
            return self.error(replies::unsupported_parameter(name));
        }
        if to.domain.is_empty() {
            return self.reject_recipient(&to.to_string(), replies::no_local_postmaster());
        }
        let recipient = format!("{}@{}", to.local, to.domain.to_ascii_lowercase());
        if !transaction.smtputf8 && !recipient.is_ascii() {
            return self.error(replies::needs_smtputf8());
        }
        if !self.may_relay_to(&to.domain) {
            return self.reject_recipient(&recipient, replies::relay_denied());
        }
        let max = self.config.settings.mta.max_recipients as usize;
        let Some(transaction) = &mut self.transaction else {
            return self.error(replies::need_mail());
        };
        if transaction.recipients.contains(&recipient) {
            return self.reply(replies::recipient_ok());
        }
        if transaction.recipients.len() >= max {
            return self.reject_recipient(&recipient, replies::too_many_recipients());
        }
        transaction.recipients.push(recipient);
        self.reply(replies::recipient_ok());
    }

    /// SPEC §4 relay control: a domain marked `relay = true`, or a trusted client.
    fn may_relay_to(&self, domain: &str) -> bool {
        self.trusted_peer || self.config.settings.is_relay_domain(domain)
    }

    fn reject_recipient(&mut self, recipient: &str, reply: Reply) {
        let sender = self
            .transaction
            .as_ref()
            .map(|t| t.sender.clone())
            .unwrap_or_default();
        self.log(SessionEvent::RecipientRejected {
            sender,
            recipient: recipient.to_string(),
            reply: reply.clone(),
        });
        // 4xx/5xx for a recipient is a normal answer, not a protocol error,
        // but relay probing should still run into the error limit.
        if reply.code >= 500 {
            self.error(reply);
        } else {
            self.reply(reply);
        }
    }
}

fn reverse_path_text(path: &ReversePath) -> String {
    match path {
        ReversePath::Null => String::new(),
        ReversePath::Mailbox(address) => {
            format!("{}@{}", address.local, address.domain.to_ascii_lowercase())
        }
    }
}
