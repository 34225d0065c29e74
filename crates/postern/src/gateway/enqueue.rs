//! Storing a message while it arrives: `Received:` header, the spool file
//! written as the body comes in, the durable commit, mail log line and
//! tracking event. The session answers `250` only after [`Incoming::commit`]
//! returns `Ok` — that is, after the spool has fsync'd the file and `queue/`.
//!
//! Memory stays bounded whatever the message size: the session hands over
//! the body in pieces of [`postern_session::BODY_CHUNK`], and each piece is
//! written to the spool's unnamed file and dropped. A message that fits in
//! two pieces is written in one go at the end (one write and one fsync, as
//! before streaming).

use std::sync::Arc;

use postern_session::{message_id, received_header, tls_required_no, Delivery};
use postern_spool::{Envelope, MessageWriter};
use postern_store::event::{ClientCertificate, Received};
use postern_store::{Event, TrackingEvent};
use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;
use tokio::sync::Semaphore;

use super::Shared;
use crate::context::unix_now;

/// Body pieces being written to the page cache at once. Writes are not
/// fsyncs (those are capped by `store_slots`), but under writeback
/// pressure they block: a bound keeps a thousand streaming sessions from
/// occupying a thousand blocking threads.
static BODY_WRITES: Semaphore = Semaphore::const_new(16);

/// One message being received and stored.
pub struct Incoming {
    delivery: Delivery,
    received: String,
    envelope: Envelope,
    /// The first piece, held until a second one shows the message is large.
    pending: Vec<u8>,
    writer: Option<MessageWriter>,
    /// Bytes of message (with the `Received:` header) so far.
    size: usize,
    /// A write failed: the rest is ignored and the message refused (451).
    failed: Option<String>,
}

impl Incoming {
    /// A message whose body starts now (the `Received:` date is now).
    pub fn begin(shared: &Shared, delivery: Delivery) -> Self {
        let date = OffsetDateTime::now_utc()
            .format(&Rfc2822)
            .unwrap_or_default();
        let received = received_header(&delivery, &shared.hostname, &date);
        let envelope = Envelope {
            sender: delivery.sender.clone(),
            recipients: delivery.recipients.clone(),
            received_at: unix_now(),
            client_addr: delivery.peer.to_string(),
            helo: delivery.helo.clone(),
            tls: delivery
                .tls
                .as_ref()
                .map(|t| format!("{} {}", t.version, t.cipher)),
            body: delivery.body.to_string(),
            smtputf8: delivery.smtputf8,
            message_id: None,
            requiretls: delivery.requiretls,
            tls_required_no: false,
        };
        Self {
            size: received.len(),
            delivery,
            received,
            envelope,
            pending: Vec::new(),
            writer: None,
            failed: None,
        }
    }

    /// The next piece of the body: written to the spool (from the second
    /// piece on; the first waits, so small messages need one write).
    pub async fn write(&mut self, shared: &Arc<Shared>, bytes: Vec<u8>) {
        self.size += bytes.len();
        if self.failed.is_some() {
            return;
        }
        if self.writer.is_none() && self.pending.is_empty() {
            self.read_header_section(&bytes);
            self.pending = bytes;
            return;
        }
        let writer = self.writer.take();
        let first = std::mem::take(&mut self.pending);
        let spool = Arc::clone(&shared.spool);
        let envelope = self.envelope.clone();
        let received = self.received.clone();
        // Never closed, so this only waits; on a (theoretical) error, go on.
        let permit = BODY_WRITES.acquire().await.ok();
        let written = tokio::task::spawn_blocking(move || {
            let mut writer = match writer {
                Some(writer) => writer,
                None => {
                    let mut writer = spool.create_message(&envelope)?;
                    writer.write(received.as_bytes())?;
                    writer.write(&first)?;
                    writer
                }
            };
            writer.write(&bytes)?;
            Ok::<_, postern_spool::SpoolError>(writer)
        })
        .await;
        drop(permit);
        match written {
            Ok(Ok(writer)) => self.writer = Some(writer),
            Ok(Err(e)) => self.fail(shared, e.to_string()),
            Err(e) => self.fail(shared, format!("spool task failed: {e}")),
        }
    }

    /// What the envelope records of the header section, read from the
    /// first piece of the message (at least 64 KiB) as it streams by.
    fn read_header_section(&mut self, first: &[u8]) {
        self.envelope.message_id = message_id(first);
        // RFC 8689 §4.1: REQUIRETLS on the envelope wins over the header.
        self.envelope.tls_required_no = !self.envelope.requiretls && tls_required_no(first);
    }

    fn fail(&mut self, shared: &Shared, error: String) {
        tracing::error!("spool write failed, the message will get 451: {error}");
        shared.maillog.write(
            "store-failed",
            &[
                ("client", &format!("[{}]", self.delivery.peer.ip())),
                ("error", &error),
            ],
        );
        self.failed = Some(error);
        self.pending = Vec::new();
        self.discard();
    }

    /// Forget the message: the unnamed file (or `tmp/` file) goes away.
    fn discard(&mut self) {
        if let Some(writer) = self.writer.take() {
            // Freeing a large file's blocks can take a while: not here.
            tokio::task::spawn_blocking(move || drop(writer));
        }
    }

    /// The end of the body: append `last`, make the message durable, log
    /// it. `Ok(queue id)` only once the spool has fsync'd it.
    pub async fn commit(mut self, shared: &Arc<Shared>, last: Vec<u8>) -> Result<String, String> {
        if let Some(error) = self.failed.take() {
            return Err(error);
        }
        self.size += last.len();
        if self.writer.is_none() && self.pending.is_empty() {
            self.read_header_section(&last);
        }
        let writer = self.writer.take();
        let first = std::mem::take(&mut self.pending);
        let spool = Arc::clone(&shared.spool);
        let envelope = self.envelope.clone();
        let received = std::mem::take(&mut self.received);
        // Never closed, so this only waits; on a (theoretical) error, go on.
        let slot = shared.store_slots.acquire().await.ok();
        // A message stored in one go comes back with its bytes, for the
        // runner's first attempt (no read back of the file).
        let stored = tokio::task::spawn_blocking(move || match writer {
            Some(writer) => writer.commit(&last).map(|id| (id, None)),
            None => {
                let mut message = Vec::with_capacity(received.len() + first.len() + last.len());
                message.extend_from_slice(received.as_bytes());
                message.extend_from_slice(&first);
                message.extend_from_slice(&last);
                spool
                    .store(&envelope, &message)
                    .map(|id| (id, Some((envelope, message))))
            }
        })
        .await;
        drop(slot);
        let client = format!("[{}]", self.delivery.peer.ip());
        let id = match stored {
            Ok(Ok((id, stored))) => {
                shared.metrics.message_received(self.delivery.tls.is_some());
                let text = id.to_string();
                match stored {
                    Some((envelope, message)) => {
                        shared.runner.schedule_received(id, envelope, message);
                    }
                    None => shared.runner.schedule(id, 0),
                }
                text
            }
            Ok(Err(e)) => {
                tracing::error!("spool write failed, answering 451: {e}");
                shared.maillog.write(
                    "store-failed",
                    &[("client", &client), ("error", &e.to_string())],
                );
                return Err(e.to_string());
            }
            Err(e) => {
                tracing::error!("spool task failed, answering 451: {e}");
                return Err(e.to_string());
            }
        };
        self.log_accepted(shared, &id, &client);
        Ok(id)
    }

    fn log_accepted(&self, shared: &Shared, id: &str, client: &str) {
        let delivery = &self.delivery;
        let envelope = &self.envelope;
        let size = self.size;
        let (cipher, cert) = match &delivery.tls {
            Some(t) => (
                t.cipher.clone(),
                t.client_cert
                    .as_ref()
                    .map_or(String::new(), |c| c.log_label()),
            ),
            None => (String::new(), String::new()),
        };
        let to = delivery
            .recipients
            .iter()
            .map(|r| format!("<{r}>"))
            .collect::<Vec<_>>()
            .join(",");
        shared.maillog.write(
            "accepted",
            &[
                ("id", id),
                ("client", client),
                ("helo", &delivery.helo),
                ("from", &format!("<{}>", delivery.sender)),
                ("to", &to),
                ("size", &size.to_string()),
                ("message_id", envelope.message_id.as_deref().unwrap_or("")),
                ("proto", delivery.protocol),
                (
                    "tls",
                    delivery.tls.as_ref().map_or("", |t| t.version.as_str()),
                ),
                ("cipher", &cipher),
                ("client_cert", &cert),
            ],
        );
        let received = Event::Received(Received {
            client: delivery.peer.to_string(),
            helo: delivery.helo.to_string(),
            protocol: delivery.protocol.to_string(),
            tls_version: delivery.tls.as_ref().map(|t| t.version.clone()),
            cipher: delivery.tls.as_ref().map(|t| t.cipher.clone()),
            client_certificate: delivery
                .tls
                .as_ref()
                .and_then(|t| t.client_cert.as_ref())
                .map(|c| ClientCertificate {
                    subject: c.subject.clone(),
                    verified: c.verified,
                }),
            sender: delivery.sender.to_string(),
            recipients: delivery
                .recipients
                .iter()
                .map(ToString::to_string)
                .collect(),
            size: u64::try_from(size).unwrap_or(u64::MAX),
            requiretls: envelope.requiretls,
            tls_required_no: envelope.tls_required_no,
        });
        let event = TrackingEvent::new(
            id,
            envelope.message_id.clone(),
            envelope.received_at,
            &received,
        );
        // Tracking is recorded after the message is safe; it never delays the 250.
        shared.tracker.record(event);
    }
}

impl Drop for Incoming {
    /// Abandoned (refused, RSET, disconnect, timeout): nothing was
    /// acknowledged, and nothing of it may stay in the spool.
    fn drop(&mut self) {
        self.discard();
    }
}
