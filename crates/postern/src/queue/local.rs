//! Messages Postern writes itself (an alert mail, a TLS-RPT report):
//! stored in the spool like an accepted message — durable before anything
//! else happens — and handed to the runner at once.

use postern_spool::{Envelope, QueueId, Spool, SpoolError};

use super::QueueRunner;
use crate::context::unix_now;

/// Queue a message Postern wrote itself (TLS-RPT report, alert mail): durable in the spool, then handed to the runner like an accepted one.
///
/// Blocking (the spool's fsyncs): call it from `spawn_blocking`.
pub fn submit_local(
    spool: &Spool,
    runner: &QueueRunner,
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
        helo: "postern".into(),
        tls: None,
        body: if message.is_ascii() {
            "7BIT"
        } else {
            "8BITMIME"
        }
        .into(),
        smtputf8: false,
        message_id: None,
        requiretls: false,
        tls_required_no,
    };
    let id = spool.store(&envelope, message)?;
    runner.schedule(id.clone(), 0);
    Ok(id)
}
