//! Fetching a domain's policy file (RFC 8461 §3.3): from
//! `https://mta-sts.<domain>:<https_port>/.well-known/mta-sts.txt`, with a
//! certificate valid for that name, no redirects, status 200 and
//! `text/plain` only, at most 64 KiB, in bounded time.

use std::net::SocketAddr;
use std::time::Duration;

use super::parse::{parse_policy, ParsedPolicy};
use super::StsFailure;
use crate::https::{self, FetchError, Limits};
use crate::policy::ResultType;
use crate::route::Resolver;
use crate::tls_client::ClientTls;

/// RFC 8461 §3.3 suggests 64 KiB as the largest policy worth reading.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// RFC 8461 §3.3: "a reasonable timeout" — the delivery waits for it.
const LIMITS: Limits = Limits {
    connect_timeout: Duration::from_secs(10),
    total_timeout: Duration::from_secs(30),
    max_body: MAX_POLICY_BYTES,
};

/// The policy URL of `domain`.
pub fn policy_url(domain: &str, port: u16) -> String {
    let host = policy_host(domain);
    if port == 443 {
        format!("https://{host}/.well-known/mta-sts.txt")
    } else {
        format!("https://{host}:{port}/.well-known/mta-sts.txt")
    }
}

fn policy_host(domain: &str) -> String {
    format!(
        "mta-sts.{}",
        domain.trim_end_matches('.').to_ascii_lowercase()
    )
}

/// Fetch and parse the policy of `domain`; the policy and its text.
pub async fn fetch(
    resolver: &Resolver,
    tls: &ClientTls,
    domain: &str,
    port: u16,
) -> Result<(ParsedPolicy, String), StsFailure> {
    let host = policy_host(domain);
    let url = policy_url(domain, port);
    let fetch_error = |detail: String| StsFailure {
        result_type: ResultType::StsPolicyFetchError,
        detail: format!("{url}: {detail}"),
    };
    let addrs: Vec<SocketAddr> = resolver
        .host_addresses(&host)
        .await
        .map_err(fetch_error)?
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    let response =
        https::get(tls, &url, &host, &addrs, LIMITS)
            .await
            .map_err(|error| match error {
                FetchError::Certificate(detail) => StsFailure {
                    result_type: ResultType::StsWebpkiInvalid,
                    detail: format!("{url}: certificate not valid for {host}: {detail}"),
                },
                FetchError::Transport(detail) => fetch_error(detail),
            })?;
    if response.status != 200 {
        let redirect = response
            .location
            .as_deref()
            .filter(|_| (300..400).contains(&response.status))
            .map(|to| format!(" (redirect to {to}; MTA-STS does not follow redirects)"))
            .unwrap_or_default();
        return Err(fetch_error(format!(
            "HTTP status {}{redirect}, not 200",
            response.status
        )));
    }
    let invalid = |detail: String| StsFailure {
        result_type: ResultType::StsPolicyInvalid,
        detail: format!("{url}: {detail}"),
    };
    match response.media_type() {
        Some(media) if media == "text/plain" => {}
        other => {
            return Err(invalid(format!(
                "media type is {}, not text/plain",
                other.map_or("missing".to_string(), |m| format!("\"{m}\""))
            )))
        }
    }
    let text = String::from_utf8(response.body)
        .map_err(|_| invalid("the policy is not UTF-8 text".into()))?;
    let policy = parse_policy(&text).map_err(|e| invalid(e.0))?;
    Ok((policy, text))
}
