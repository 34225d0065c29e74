//! Storing an accepted message: `Received:` header, durable spool write,
//! mail log line and tracking event. The session answers `250` only after
//! this returns `Ok` — that is, after the spool has fsync'd the message.

use std::sync::Arc;

use postern_session::{message_id, received_header, Delivery};
use postern_spool::Envelope;
use postern_store::TrackingEvent;
use time::format_description::well_known::Rfc2822;
use time::OffsetDateTime;

use super::Shared;
use crate::context::unix_now;

pub async fn enqueue(shared: &Arc<Shared>, delivery: Delivery) -> Result<String, String> {
    let date = OffsetDateTime::now_utc()
        .format(&Rfc2822)
        .unwrap_or_default();
    let header = received_header(&delivery, &shared.hostname, &date);
    let mut message = Vec::with_capacity(header.len() + delivery.message.len());
    message.extend_from_slice(header.as_bytes());
    message.extend_from_slice(&delivery.message);
    let size = message.len();
    let tls = delivery
        .tls
        .as_ref()
        .map(|t| format!("{} {}", t.version, t.cipher));
    let envelope = Envelope {
        sender: delivery.sender.clone(),
        recipients: delivery.recipients.clone(),
        received_at: unix_now(),
        client_addr: delivery.peer.to_string(),
        helo: delivery.helo.clone(),
        tls: tls.clone(),
        body: delivery.body.to_string(),
        smtputf8: delivery.smtputf8,
        message_id: message_id(&delivery.message),
    };
    let spool = Arc::clone(&shared.spool);
    // Never closed, so this only waits; on a (theoretical) error, go on.
    let slot = shared.store_slots.acquire().await.ok();
    let stored = {
        let envelope = envelope.clone();
        tokio::task::spawn_blocking(move || spool.store(&envelope, &message)).await
    };
    drop(slot);
    let client = format!("[{}]", delivery.peer.ip());
    let id = match stored {
        Ok(Ok(id)) => {
            shared.metrics.message_received(delivery.tls.is_some());
            shared.runner.schedule(id.clone(), 0);
            id.to_string()
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
    let (cipher, cert) = match &delivery.tls {
        Some(t) => (
            t.cipher.clone(),
            t.client_cert.as_ref().map_or(String::new(), |c| {
                format!(
                    "{} ({})",
                    c.subject,
                    if c.verified {
                        "verified"
                    } else {
                        "not verified"
                    }
                )
            }),
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
            ("id", &id),
            ("client", &client),
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
    let event = TrackingEvent {
        queue_id: id.clone(),
        message_id: envelope.message_id.clone(),
        at: envelope.received_at,
        kind: "received".to_string(),
        detail: serde_json::json!({
            "client": delivery.peer.to_string(),
            "helo": delivery.helo,
            "protocol": delivery.protocol,
            "tls_version": delivery.tls.as_ref().map(|t| t.version.clone()),
            "cipher": delivery.tls.as_ref().map(|t| t.cipher.clone()),
            "client_certificate": delivery.tls.as_ref().and_then(|t| t.client_cert.as_ref()).map(|c| {
                serde_json::json!({ "subject": c.subject, "verified": c.verified })
            }),
            "sender": delivery.sender,
            "recipients": delivery.recipients,
            "size": size,
        }),
    };
    // Tracking is recorded after the message is safe; it never delays the 250.
    shared.tracker.record(event);
    Ok(id)
}
