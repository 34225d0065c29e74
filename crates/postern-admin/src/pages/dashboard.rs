//! The dashboard: messages received, delivered, deferred and bounced per
//! hour over the last day (an inline SVG chart drawn here, no scripts), the
//! share of TLS inbound and outbound, and the queue size; above them a
//! banner while any alert is unacknowledged.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use maud::{html, Markup};

use super::{failure, layout, render, trusted, Section};
use crate::api::{blocking, messages};
use crate::http::Principal;
use crate::views::{display_time, Stats, TlsShare};
use crate::Shared;

const SERIES: [(&str, &str); 4] = [
    ("received", "received"),
    ("delivered", "delivered"),
    ("deferred", "deferred"),
    ("bounced", "bounced"),
];

fn value(bucket: &crate::views::Bucket, series: &str) -> u64 {
    match series {
        "received" => bucket.received,
        "delivered" => bucket.delivered,
        "deferred" => bucket.deferred,
        _ => bucket.bounced,
    }
}

/// Grouped bars per hour, as SVG text (numbers and fixed words only).
fn chart(stats: &Stats) -> String {
    let (width, height, left, bottom, top) = (760.0_f64, 240.0_f64, 40.0_f64, 24.0_f64, 10.0_f64);
    let plot_w = width - left - 8.0;
    let plot_h = height - bottom - top;
    let max = stats
        .buckets
        .iter()
        .flat_map(|b| SERIES.iter().map(move |(s, _)| value(b, s)))
        .max()
        .unwrap_or(0)
        .max(1);
    let n = stats.buckets.len().max(1) as f64;
    let slot = plot_w / n;
    let bar = (slot - 2.0) / SERIES.len() as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="Messages per hour, last 24 hours">"#
    );
    // Axes and the y scale.
    let base = top + plot_h;
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{left}" y1="{base}" x2="{}" y2="{base}"/><line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{base}"/>"#,
        width - 8.0
    );
    let _ = write!(
        svg,
        r#"<text class="tick" x="{}" y="{}" text-anchor="end">{max}</text><text class="tick" x="{}" y="{base}" text-anchor="end">0</text>"#,
        left - 4.0,
        top + 8.0,
        left - 4.0
    );
    for (i, bucket) in stats.buckets.iter().enumerate() {
        let x0 = left + 1.0 + slot * i as f64;
        for (j, (series, class)) in SERIES.iter().enumerate() {
            let v = value(bucket, series);
            if v == 0 {
                continue;
            }
            let h = plot_h * v as f64 / max as f64;
            let _ = write!(
                svg,
                r#"<rect class="s-{class}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>{} UTC: {v} {series}</title></rect>"#,
                x0 + bar * j as f64,
                base - h,
                bar.max(1.0),
                h,
                display_time(bucket.start_unix)
            );
        }
        if i % 3 == 0 {
            let hour = display_time(bucket.start_unix);
            let label = hour.get(11..16).unwrap_or("");
            let _ = write!(
                svg,
                r#"<text class="tick" x="{:.1}" y="{}">{label}</text>"#,
                x0,
                height - 6.0
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A horizontal bar: the TLS share of a direction.
fn share(label: &str, unit: &str, share: &TlsShare) -> Markup {
    let percent = share.percent();
    let width = percent.unwrap_or(0) * 3;
    let svg = format!(
        r#"<svg class="share" viewBox="0 0 300 16" role="img" aria-label="{label}"><rect class="share-bg" x="0" y="0" width="300" height="16"/><rect class="share-tls" x="0" y="0" width="{width}" height="16"/></svg>"#
    );
    html! {
        div.share-row data-share=(label) {
            h3 { (label) }
            (trusted(svg))
            p {
                @match percent {
                    Some(p) => { strong { (p) " %" } " over TLS (" (share.tls) " of " (share.tls + share.plaintext) " " (unit) ")" }
                    None => { "no traffic in the last 24 hours" }
                }
            }
        }
    }
}

pub async fn page(
    State(state): State<Shared>,
    Extension(principal): Extension<Principal>,
) -> Response {
    let alerts = super::alerts::banner_facts(&state).await;
    let stats = match blocking(move || messages::stats_now(&state)).await {
        Ok(stats) => stats,
        Err(e) => return failure(&principal, &e),
    };
    let t = &stats.totals;
    let content = html! {
        h1 { "Dashboard" }
        @if let Some((count, newest)) = &alerts {
            (super::alerts::banner(*count, newest.as_ref()))
        }
        p.help { "Last 24 hours, from the message tracking records (times in UTC)." }
        div.cards {
            div.card data-card="queue" { span.num { (stats.queue.messages) } span.label { "messages in the queue" } }
            div.card data-card="deferred-now" { span.num { (stats.queue.recipients_deferred) } span.label { "recipients deferred now" } }
            div.card data-card="received" { span.num { (t.received) } span.label { "messages received" } }
            div.card data-card="delivered" { span.num { (t.delivered) } span.label { "recipients delivered" } }
            div.card data-card="deferred" { span.num { (t.deferred) } span.label { "deferrals" } }
            div.card data-card="bounced" { span.num { (t.bounced) } span.label { "recipients bounced" } }
        }
        section {
            h2 { "Messages per hour" }
            ul.legend {
                @for (_, class) in SERIES {
                    li { span class=(format!("swatch s-{class}")) {} (class) }
                }
            }
            (trusted(chart(&stats)))
        }
        section.shares {
            h2 { "TLS share" }
            (share("Inbound", "messages", &stats.tls_inbound))
            (share("Outbound", "delivery connections", &stats.tls_outbound))
        }
    };
    render(
        StatusCode::OK,
        layout("Dashboard", Section::Dashboard, &principal, content),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::{stats, QueueCounts};

    #[test]
    fn chart_is_svg_with_a_bar_per_value() {
        let events = vec![postern_store::TrackingEvent {
            queue_id: "Q".into(),
            message_id: None,
            at: 7200 + 10,
            kind: "received".into(),
            detail: serde_json::json!({}),
        }];
        let s = stats(&events, 0, 3600, 24, QueueCounts::default());
        let svg = chart(&s);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 1);
        assert!(svg.contains("1 received"));
    }
}
