//! `postern trace ID`: every tracking event of a message, oldest first.
//!
//! Each event is one line — time, kind, queue id and the event's JSON (what
//! scripts read) — and a delivery attempt is followed by an indented line
//! that says in words what policy applied and what came of it: host, the
//! requirement and the source that set it, the verdict and, on failure,
//! the RFC 8460 result type.

use anyhow::{bail, Context as _, Result};
use postern_store::event::Attempt;
use postern_store::{Event, TrackingEvent};

use crate::commands::rfc3339;
use crate::context::Context;

pub fn trace(ctx: &Context, id: &str) -> Result<()> {
    let events = match ctx.store.events_for(id) {
        Ok(events) => events,
        // A cluster store outage: this node's own events wait in its
        // journal, and those at least can be shown.
        Err(postern_store::StoreError::Unreachable(why)) => {
            let journal = crate::journal::path_in(&ctx.node.data_dir);
            let events = crate::journal::events_for(&journal, id)
                .with_context(|| format!("reading {}", journal.display()))?;
            eprintln!(
                "postern: cluster store unreachable: {why}; showing only this node's events \
                 kept in {} until the store is back",
                journal.display()
            );
            if events.is_empty() {
                bail!(
                    "cluster store unreachable: {why}; and no events for \"{id}\" in this \
                     node's journal {}",
                    journal.display()
                );
            }
            events
        }
        Err(e) => return Err(e.into()),
    };
    if events.is_empty() {
        bail!("no events recorded for \"{id}\" (give a queue ID or a Message-ID)");
    }
    for event in &events {
        print!("{}", render(event));
    }
    Ok(())
}

/// The lines for one event.
fn render(event: &TrackingEvent) -> String {
    let mut out = format!(
        "{}  {:<9} {}  {}\n",
        rfc3339(event.at),
        event.kind,
        event.queue_id,
        event.detail
    );
    if let Some(Event::DeliveryAttempt(d)) = event.parse() {
        out.push_str("    ");
        out.push_str(&attempt_summary(&d.attempt));
        out.push('\n');
    }
    out
}

/// `mx1.partner.test 192.0.2.2:25: MTA-STS enforce (set by mta-sts):
/// failed, certificate-not-trusted; TLSv1.3 ...`.
fn attempt_summary(a: &Attempt) -> String {
    let mut text = format!("{}: ", a.peer());
    match a.source {
        Some(source) => {
            let requirement = if a.requirement.is_empty() {
                "?"
            } else {
                &a.requirement
            };
            text.push_str(&format!(
                "requirement {requirement} (set by {}), {}",
                source.as_str(),
                a.verdict().as_str()
            ));
        }
        // Recorded before the policy engine: the mode is all there is.
        None => text.push_str(&format!("mode {}", mode_name(a.mode))),
    }
    if let Some(result_type) = a.result_type {
        text.push_str(&format!(" ({})", result_type.as_str()));
    }
    match (&a.tls_version, &a.cipher) {
        (Some(version), Some(cipher)) => text.push_str(&format!("; {version} {cipher}")),
        (Some(version), None) => text.push_str(&format!("; {version}")),
        (None, _) if a.tls_fallback_plaintext => text.push_str("; plaintext after TLS failed"),
        (None, _) => text.push_str("; plaintext"),
    }
    match (a.cert_verified, &a.verify_error) {
        (Some(true), _) => text.push_str(", certificate verified"),
        (Some(false), Some(why)) => text.push_str(&format!(", certificate not verified: {why}")),
        (Some(false), None) => text.push_str(", certificate not verified"),
        (None, _) => {}
    }
    if let Some(sts) = &a.mta_sts {
        text.push_str(&format!("; MTA-STS policy {} ({})", sts.id, sts.mode));
    }
    if !a.tlsa.is_empty() {
        text.push_str(&format!("; TLSA {}", a.tlsa.join(", ")));
    }
    for w in &a.would_fail {
        text.push_str(&format!(
            "; report-only {} (set by {}) would be failed ({})",
            w.requirement,
            w.source.as_str(),
            w.result_type.as_str()
        ));
    }
    text
}

fn mode_name(mode: postern_config::OutboundMode) -> &'static str {
    match mode {
        postern_config::OutboundMode::None => "none",
        postern_config::OutboundMode::Opportunistic => "opportunistic",
        postern_config::OutboundMode::Require => "require",
        postern_config::OutboundMode::Verify => "verify",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn attempt_row(attempt: serde_json::Value) -> TrackingEvent {
        TrackingEvent {
            queue_id: "Q1".into(),
            message_id: None,
            at: 0,
            kind: "delivery_attempt".into(),
            detail: json!({"domain": "partner.test", "attempt": attempt, "node": "gw1"}),
        }
    }

    #[test]
    fn an_attempt_says_requirement_source_verdict_and_result_type() {
        let row = attempt_row(json!({
            "host": "mx1.partner.test", "ip": "192.0.2.2", "port": 25, "mode": "verify",
            "requirement": "MTA-STS enforce", "source": "mta-sts", "policy_type": "sts",
            "mta_sts": {"id": "20260101", "mode": "enforce"}, "verdict": "failed",
            "result_type": "certificate-not-trusted",
            "report_only": [{"requirement": "learned verify", "source": "learned",
                             "verdict": "failed", "result_type": "certificate-not-trusted"}],
            "starttls_offered": true, "cert_verified": false,
            "verify_error": "unknown issuer", "reply": "220 go ahead"}));
        let text = render(&row);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        // The first line stays what scripts parse: kind, id, JSON.
        assert!(lines[0].contains(" delivery_attempt Q1  {"), "{text}");
        assert!(!lines[1].contains(" delivery_attempt "), "{text}");
        assert_eq!(
            lines[1].trim(),
            "mx1.partner.test 192.0.2.2:25: requirement MTA-STS enforce (set by mta-sts), \
             failed (certificate-not-trusted); plaintext, certificate not verified: unknown issuer; \
             MTA-STS policy 20260101 (enforce); report-only learned verify (set by learned) \
             would be failed (certificate-not-trusted)"
        );
    }

    #[test]
    fn an_attempt_from_before_the_policy_engine_shows_its_mode() {
        let row = attempt_row(json!({
            "host": "mx.b.test", "ip": "192.0.2.1", "port": 25, "mode": "opportunistic",
            "starttls_offered": true, "tls_version": "TLSv1.3",
            "cipher": "TLS13_AES_256_GCM_SHA384", "cert_verified": true,
            "tls_fallback_plaintext": false, "reply": "250 ok"}));
        let text = render(&row);
        assert!(
            text.ends_with(
                "    mx.b.test 192.0.2.1:25: mode opportunistic; TLSv1.3 \
                 TLS13_AES_256_GCM_SHA384, certificate verified\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn other_events_are_one_line() {
        let row = TrackingEvent {
            queue_id: "Q1".into(),
            message_id: None,
            at: 0,
            kind: "deferred".into(),
            detail: json!({"recipient": "a@b.test", "relay": "", "detail": "timeout"}),
        };
        assert_eq!(render(&row).lines().count(), 1);
    }
}
