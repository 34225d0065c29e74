//! EHLO and HELO (RFC 5321 §4.1.1.1), and the capabilities we advertise.

use postern_config::InboundMode;
use postern_proto::Reply;

use crate::session::{Helo, Session};

impl Session {
    pub(crate) fn ehlo(&mut self, name: String, esmtp: bool) {
        // A new EHLO resets the transaction (RFC 5321 §4.1.4).
        self.reset_transaction();
        if esmtp {
            let reply = self.capabilities(&name);
            self.reply(reply);
        } else {
            let text = format!("{} Hello {}", self.config.hostname, name);
            self.reply(Reply::plain(250, vec![text]));
        }
        self.helo = Some(Helo { name, esmtp });
    }

    fn capabilities(&self, name: &str) -> Reply {
        let settings = &self.config.settings;
        let mut lines = vec![
            format!("{} Hello {}", self.config.hostname, name),
            "PIPELINING".to_string(),
            format!("SIZE {}", settings.mta.max_message_size),
            "8BITMIME".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.offers_starttls() {
            lines.push("STARTTLS".to_string());
        }
        lines.push("SMTPUTF8".to_string());
        lines.push("CHUNKING".to_string());
        if self.offers_requiretls() {
            lines.push("REQUIRETLS".to_string());
        }
        Reply::plain(250, lines)
    }

    /// RFC 8689 §2: only inside TLS, so a man in the middle cannot strip
    /// the advertisement without also stripping STARTTLS (which the sender
    /// of REQUIRETLS mail refuses to do without).
    pub(crate) fn offers_requiretls(&self) -> bool {
        self.tls.is_some() && self.config.settings.mta.requiretls
    }

    pub(crate) fn offers_starttls(&self) -> bool {
        self.tls.is_none()
            && self.config.tls_available
            && self.config.settings.tls.inbound.mode != InboundMode::None
    }
}
