//! The alert webhook: each alert POSTed as one JSON object over https
//! (our rustls configuration: the certificate is checked against
//! `tls.outbound.trusted_ca`), any 2xx is success, anything else is tried
//! again after [`RETRY_AFTER`] — five tries over about ten minutes, on
//! a task of its own, so nothing waits for a slow or broken receiver.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_config::WebhookUrl;
use postern_delivery::https::{self, Limits};
use serde_json::json;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::destinations::Destinations;
use super::Raised;

/// The pause before the second, third, ... try.
const RETRY_AFTER: [Duration; 4] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(420),
];

const LIMITS: Limits = Limits {
    connect_timeout: Duration::from_secs(10),
    total_timeout: Duration::from_secs(30),
    // The answer is not read; a receiver may say a little.
    max_body: 64 * 1024,
};

/// The JSON body of one alert.
pub fn body(raised: &Raised, node: &str, hostname: &str) -> serde_json::Value {
    let alert = &raised.alert;
    let at = OffsetDateTime::from_unix_timestamp(alert.at)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    json!({
        "kind": alert.kind.as_str(),
        "subject": alert.subject,
        "host": alert.host,
        "detail": alert.detail,
        "at": at,
        "node": node,
        "gateway": hostname,
    })
}

/// POST `raised` to `hook`, trying up to five times; the outcome goes to
/// the mail log (`alert-webhook ... result=sent|retrying|failed`).
pub async fn send(dest: &Destinations, hook: &WebhookUrl, raised: &Raised) {
    let payload = body(raised, &dest.node, &dest.hostname).to_string();
    let kind = raised.alert.kind.as_str();
    let tries = RETRY_AFTER.len() + 1;
    for attempt in 1..=tries {
        let outcome = post(dest, hook, payload.clone().into_bytes()).await;
        let attempt_text = attempt.to_string();
        let (result, reason) = match &outcome {
            Ok(()) => ("sent", String::new()),
            Err(reason) if attempt < tries => ("retrying", reason.clone()),
            Err(reason) => ("failed", reason.clone()),
        };
        dest.maillog.write(
            "alert-webhook",
            &[
                ("kind", kind),
                ("domain", &raised.alert.subject),
                ("host", &raised.alert.host),
                ("webhook", &hook.host),
                ("try", &attempt_text),
                ("result", result),
                ("reason", &reason),
            ],
        );
        match outcome {
            Ok(()) => return,
            Err(reason) if attempt == tries => {
                tracing::warn!(
                    "alert webhook {}: gave up after {tries} tries: {reason}",
                    hook.host
                );
            }
            Err(_) => {
                if let Some(pause) = RETRY_AFTER.get(attempt - 1) {
                    tokio::time::sleep(*pause).await;
                }
            }
        }
    }
}

/// One POST; `Err` in words.
async fn post(dest: &Destinations, hook: &WebhookUrl, body: Vec<u8>) -> Result<(), String> {
    let ips = match hook.host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => dest.resolver.host_addresses(&hook.host).await?,
    };
    let addrs: Vec<SocketAddr> = ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, hook.port))
        .collect();
    let tls = std::sync::Arc::clone(&dest.live.get().client_tls);
    let response = https::post(
        &tls,
        &hook.url,
        &hook.host,
        &addrs,
        LIMITS,
        "application/json",
        body,
    )
    .await
    .map_err(|e| e.to_string())?;
    if (200..300).contains(&response.status) {
        Ok(())
    } else {
        Err(format!("HTTP status {}", response.status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::Condition;
    use postern_store::{Alert, AlertKind};

    #[test]
    fn body_names_every_field_with_an_rfc3339_time() {
        let raised = Raised {
            condition: Condition::new(
                AlertKind::HandshakeFailures,
                "partner.test",
                "mx.partner.test",
            ),
            alert: Alert {
                kind: AlertKind::HandshakeFailures,
                subject: "partner.test".into(),
                host: "mx.partner.test".into(),
                detail: "3 TLS handshake failures \"quoted\"".into(),
                at: 1_796_256_000,
            },
        };
        let value = body(&raised, "gw1", "mail.example.com");
        assert_eq!(
            value,
            json!({
                "kind": "handshake-failures",
                "subject": "partner.test",
                "host": "mx.partner.test",
                "detail": "3 TLS handshake failures \"quoted\"",
                "at": "2026-12-03T00:00:00Z",
                "node": "gw1",
                "gateway": "mail.example.com",
            })
        );
    }

    #[test]
    fn five_tries_over_about_ten_minutes() {
        let total: Duration = RETRY_AFTER.iter().sum();
        assert_eq!(RETRY_AFTER.len() + 1, 5);
        assert!(total >= Duration::from_secs(9 * 60) && total <= Duration::from_secs(11 * 60));
    }
}
