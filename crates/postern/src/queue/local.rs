//! Mail Postern writes itself (TLS-RPT reports, alert mails) enters the
//! queue like accepted mail: durable in the spool first, then scheduled.

use postern_spool::{Envelope, QueueId, Spool, SpoolError};

use super::QueueRunner;
use crate::context::unix_now;

/// Queue a message Postern wrote itself (TLS-RPT report, alert mail): durable in the spool, then handed to the runner like an accepted one.
///
/// `runner` is `None` when no gateway runs in this process (a CLI command
/// holding the spool lock): the message is delivered when the gateway
/// starts and recovers the spool. Blocking (fsync): call it from
/// `spawn_blocking` in async code.
pub fn submit_local(
    spool: &Spool,
    runner: Option<&QueueRunner>,
    sender: &str,
    recipients: &[String],
    message: &[u8],
    tls_required_no: bool,
) -> Result<QueueId, SpoolError> {
    let envelope = Envelope {
        sender: sender.to_string(),
        recipients: recipients.to_vec(),
        received_at: unix_now(),
        client_addr: "local".into(),
        helo: "localhost".into(),
        tls: None,
        body: if message.is_ascii() {
            "7BIT"
        } else {
            "8BITMIME"
        }
        .into(),
        smtputf8: false,
        message_id: message_id(message),
        requiretls: false,
        tls_required_no,
    };
    let id = spool.store(&envelope, message)?;
    if let Some(runner) = runner {
        runner.schedule(id.clone(), 0);
    }
    Ok(id)
}

/// The Message-ID header's value, from the header section.
fn message_id(message: &[u8]) -> Option<String> {
    let head = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message, |end| &message[..end]);
    String::from_utf8_lossy(head)
        .split("\r\n")
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("Message-ID")
                .then(|| value.trim().to_string())
        })
}
