//! Prometheus metrics (text exposition format 0.0.4), served at `/metrics`.
//!
//! The gateway holds one [`Metrics`] and bumps its counters where things
//! happen (accepting a connection, a TLS handshake failing, a message being
//! stored, a recipient being delivered, deferred or bounced); the queue
//! size is read when the metrics are scraped. Plain atomics: incrementing
//! costs one relaxed add on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// What became of one recipient after a delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Deferred,
    Bounced,
}

/// Counters shared by the gateway and the admin server.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Accepted SMTP connections: [STARTTLS listeners, implicit-TLS listeners].
    connections: [AtomicU64; 2],
    connections_refused: AtomicU64,
    connections_active: AtomicI64,
    handshake_failures_inbound: AtomicU64,
    handshake_failures_outbound: AtomicU64,
    /// Messages accepted: [over TLS, plaintext].
    received: [AtomicU64; 2],
    /// Recipients per outcome [delivered, deferred, bounced] x [TLS, plaintext].
    outcomes: [[AtomicU64; 2]; 3],
    /// Alerts raised, by kind (SPEC §12), in `AlertKind::ALL` order.
    alerts: [AtomicU64; postern_store::AlertKind::ALL.len()],
}

/// An open connection for `postern_connections_active`; closes on drop.
#[derive(Debug)]
pub struct OpenConnection<'a>(&'a Metrics);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The queue as seen at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueGauge {
    pub messages: u64,
    pub recipients_pending: u64,
    pub recipients_deferred: u64,
}

fn tls_index(tls: bool) -> usize {
    usize::from(!tls)
}

fn add(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// A client connection was accepted (and got a slot); it counts as
    /// open until the returned guard is dropped.
    #[must_use = "the connection counts as open while the guard lives"]
    pub fn connection_opened(&self, implicit_tls: bool) -> OpenConnection<'_> {
        add(&self.connections[usize::from(implicit_tls)]);
        self.connections_active.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self)
    }

    /// A connection was refused over a connection limit.
    pub fn connection_refused(&self) {
        add(&self.connections_refused);
    }

    /// An inbound TLS handshake (STARTTLS or implicit) failed.
    pub fn inbound_handshake_failed(&self) {
        add(&self.handshake_failures_inbound);
    }

    /// An outbound STARTTLS or handshake failed.
    pub fn outbound_handshake_failed(&self) {
        add(&self.handshake_failures_outbound);
    }

    /// A message was durably queued; `tls`: it came over TLS.
    pub fn message_received(&self, tls: bool) {
        add(&self.received[tls_index(tls)]);
    }

    /// A recipient's delivery attempt ended so; `tls`: the last connection used TLS.
    pub fn recipient_outcome(&self, outcome: Outcome, tls: bool) {
        let row = match outcome {
            Outcome::Delivered => 0,
            Outcome::Deferred => 1,
            Outcome::Bounced => 2,
        };
        add(&self.outcomes[row][tls_index(tls)]);
    }

    /// An alert was raised (after its rate limit).
    pub fn alert_raised(&self, kind: postern_store::AlertKind) {
        if let Some(counter) = self.alerts.get(kind.index()) {
            add(counter);
        }
    }

    /// The exposition text.
    pub fn render(&self, queue: QueueGauge) -> String {
        let mut out = String::with_capacity(2048);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        };
        let tls_label = |i: usize| if i == 0 { "yes" } else { "no" };
        family(
            "postern_connections_total",
            "counter",
            "SMTP connections accepted, by listener kind.",
            &[
                (
                    "listener=\"starttls\"".into(),
                    get(&self.connections[0]).to_string(),
                ),
                (
                    "listener=\"implicit_tls\"".into(),
                    get(&self.connections[1]).to_string(),
                ),
            ],
        );
        family(
            "postern_connections_refused_total",
            "counter",
            "SMTP connections refused over a connection limit.",
            &[(String::new(), get(&self.connections_refused).to_string())],
        );
        family(
            "postern_connections_active",
            "gauge",
            "SMTP connections open now.",
            &[(
                String::new(),
                self.connections_active
                    .load(Ordering::Relaxed)
                    .max(0)
                    .to_string(),
            )],
        );
        family(
            "postern_tls_handshake_failures_total",
            "counter",
            "Failed TLS handshakes (inbound: clients; outbound: next hops).",
            &[
                (
                    "direction=\"inbound\"".into(),
                    get(&self.handshake_failures_inbound).to_string(),
                ),
                (
                    "direction=\"outbound\"".into(),
                    get(&self.handshake_failures_outbound).to_string(),
                ),
            ],
        );
        let mut messages = Vec::new();
        for (i, counter) in self.received.iter().enumerate() {
            messages.push((
                format!(
                    "direction=\"inbound\",outcome=\"received\",tls=\"{}\"",
                    tls_label(i)
                ),
                get(counter).to_string(),
            ));
        }
        for (row, name) in ["delivered", "deferred", "bounced"].iter().enumerate() {
            for (i, counter) in self.outcomes[row].iter().enumerate() {
                messages.push((
                    format!(
                        "direction=\"outbound\",outcome=\"{name}\",tls=\"{}\"",
                        tls_label(i)
                    ),
                    get(counter).to_string(),
                ));
            }
        }
        family(
            "postern_messages_total",
            "counter",
            "Inbound: messages accepted and queued. Outbound: recipients delivered, deferred or \
             bounced. tls: whether the connection used TLS.",
            &messages,
        );
        family(
            "postern_queue_messages",
            "gauge",
            "Messages in the queue.",
            &[(String::new(), queue.messages.to_string())],
        );
        family(
            "postern_queue_recipients",
            "gauge",
            "Recipients in the queue not yet delivered or bounced, by state.",
            &[
                (
                    "state=\"pending\"".into(),
                    queue.recipients_pending.to_string(),
                ),
                (
                    "state=\"deferred\"".into(),
                    queue.recipients_deferred.to_string(),
                ),
            ],
        );
        let alerts: Vec<(String, String)> = postern_store::AlertKind::ALL
            .iter()
            .zip(&self.alerts)
            .map(|(kind, n)| (format!("kind=\"{}\"", kind.as_str()), get(n).to_string()))
            .collect();
        family(
            "postern_alerts_total",
            "counter",
            "Alerts raised by this node, by kind (each condition at most once an hour).",
            &alerts,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_in_text_format() {
        let m = Metrics::new();
        let _a = m.connection_opened(false);
        let _b = m.connection_opened(false);
        drop(m.connection_opened(true));
        m.connection_refused();
        m.inbound_handshake_failed();
        m.message_received(true);
        m.message_received(false);
        m.message_received(true);
        m.recipient_outcome(Outcome::Delivered, true);
        m.recipient_outcome(Outcome::Deferred, false);
        m.outbound_handshake_failed();
        let text = m.render(QueueGauge {
            messages: 4,
            recipients_pending: 2,
            recipients_deferred: 3,
        });
        for line in [
            "postern_connections_total{listener=\"starttls\"} 2",
            "postern_connections_total{listener=\"implicit_tls\"} 1",
            "postern_connections_active 2",
            "postern_connections_refused_total 1",
            "postern_tls_handshake_failures_total{direction=\"inbound\"} 1",
            "postern_tls_handshake_failures_total{direction=\"outbound\"} 1",
            "postern_messages_total{direction=\"inbound\",outcome=\"received\",tls=\"yes\"} 2",
            "postern_messages_total{direction=\"inbound\",outcome=\"received\",tls=\"no\"} 1",
            "postern_messages_total{direction=\"outbound\",outcome=\"delivered\",tls=\"yes\"} 1",
            "postern_messages_total{direction=\"outbound\",outcome=\"deferred\",tls=\"no\"} 1",
            "postern_messages_total{direction=\"outbound\",outcome=\"bounced\",tls=\"yes\"} 0",
            "postern_queue_messages 4",
            "postern_queue_recipients{state=\"deferred\"} 3",
            "# TYPE postern_messages_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
