//! An `https:` report (RFC 8460 §5.2): the gzipped JSON POSTed as
//! `application/tlsrpt+gzip`; any 2xx is success. Same limits as the
//! MTA-STS fetch: our rustls config (certificate checked against
//! `tls.outbound.trusted_ca`), addresses from our resolver, no redirects,
//! no proxy, bounded time. The port is the URL's, or `[delivery]
//! https_port` when it names none.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use postern_delivery::{ClientTls, Resolver};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const TOTAL_TIMEOUT: Duration = Duration::from_secs(60);

/// POST `body` to `url`: the status on 2xx, otherwise why not.
pub async fn post(
    tls: &ClientTls,
    resolver: &Resolver,
    url: &str,
    https_port: u16,
    body: Vec<u8>,
) -> Result<u16, String> {
    let mut parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("{url}: only https: reports are sent"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if parsed.port().is_none() {
        let _ = parsed.set_port(Some(https_port));
    }
    let port = parsed.port().unwrap_or(https_port);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => resolver
            .host_addresses(&host)
            .await?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
    };
    let client = reqwest::Client::builder()
        .use_preconfigured_tls((*tls.https_config()).clone())
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(TOTAL_TIMEOUT)
        .resolve_to_addrs(&host, &addrs)
        .user_agent(concat!("Postern/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTPS client: {e}"))?;
    let response = client
        .post(parsed)
        .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
        .body(body)
        .send()
        .await
        .map_err(|e| describe(&e))?;
    let status = response.status();
    if status.is_success() {
        Ok(status.as_u16())
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// The whole error chain: reqwest's top message alone hides the cause.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
