//! STARTTLS (RFC 3207) and the reset it causes.
//!
//! Anything the client pipelined after `STARTTLS` was sent in plaintext and
//! could have been injected by a man in the middle (CVE-2011-0411), so it is
//! thrown away; after the handshake the client starts again with EHLO.

use postern_config::InboundMode;

use crate::replies;
use crate::session::{Action, Phase, Session, TlsInfo};

impl Session {
    pub(crate) fn starttls(&mut self) {
        if self.tls.is_some() {
            return self.error(replies::tls_already_active());
        }
        if self.config.settings.tls.inbound.mode == InboundMode::None {
            return self.error(replies::starttls_disabled());
        }
        if !self.config.tls_available {
            return self.error(replies::tls_not_available());
        }
        if self.transaction.is_some() {
            return self.error(replies::starttls_in_transaction());
        }
        self.reply(replies::ready_for_tls());
        self.input.clear();
        self.phase = Phase::AwaitingTls;
        self.actions.push_back(Action::StartTls);
    }

    /// The handshake succeeded: forget everything said in plaintext.
    pub fn tls_established(&mut self, info: TlsInfo) {
        self.tls = Some(info);
        self.helo = None;
        self.reset_transaction();
        self.input.clear();
        self.phase = Phase::Command;
    }
}
