//! The `[alerts]` settings (SPEC §12): where alerts go besides the mail
//! log, `/metrics` and the store — an https webhook that receives each as
//! JSON, and addresses that receive each as a mail.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::domain::is_domain_name;
use crate::ConfigError;

/// Longest webhook URL: far above any real one, and a bound on what we keep.
const MAX_URL_CHARS: usize = 2048;
/// Most alert addresses: an alert list, not a mailing list.
pub const MAX_ALERT_ADDRESSES: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// `https://` URL that each alert is POSTed to as JSON; empty: none.
    pub webhook: String,
    /// Addresses that receive each alert as a mail.
    pub email: Vec<String>,
}

/// Where the webhook is, as the sender needs it: the host to resolve and
/// to verify the certificate for, and the port to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    /// The URL as configured.
    pub url: String,
    /// Lower-case host name, or an IP address (without brackets).
    pub host: String,
    pub port: u16,
}

impl AlertSettings {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.webhook.is_empty() {
            parse_webhook(&self.webhook).map_err(|m| ConfigError::new("alerts.webhook", m))?;
        }
        if self.email.len() > MAX_ALERT_ADDRESSES {
            return Err(ConfigError::new(
                "alerts.email",
                format!(
                    "at most {MAX_ALERT_ADDRESSES} addresses (got {}); use a list address",
                    self.email.len()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for address in &self.email {
            if !crate::tlsrpt::is_address(address) {
                return Err(ConfigError::new(
                    "alerts.email",
                    format!(
                        "{:?} is not a mail address: give local@domain (e.g. \
                         \"postmaster@example.com\")",
                        address.chars().take(64).collect::<String>()
                    ),
                ));
            }
            if !seen.insert(address.to_ascii_lowercase()) {
                return Err(ConfigError::new(
                    "alerts.email",
                    format!("{address:?} is listed twice"),
                ));
            }
        }
        Ok(())
    }

    /// The webhook, when one is set (and valid: settings are validated
    /// before they are applied).
    pub fn webhook_url(&self) -> Option<WebhookUrl> {
        if self.webhook.is_empty() {
            return None;
        }
        parse_webhook(&self.webhook).ok()
    }
}

/// `https://host[:port][/path][?query]`, nothing else: no other scheme,
/// no user name or password (they would end up in logs; put a token in
/// the path), no fragment, no spaces or control characters.
fn parse_webhook(url: &str) -> Result<WebhookUrl, String> {
    let shown = || url.chars().take(64).collect::<String>();
    if url.chars().count() > MAX_URL_CHARS {
        return Err(format!("must be at most {MAX_URL_CHARS} characters"));
    }
    if let Some(bad) = url.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{:?}: spaces and control characters are not allowed (U+{:04X}); \
             percent-encode them",
            shown(),
            u32::from(bad)
        ));
    }
    let rest = url
        .get(..8)
        .filter(|scheme| scheme.eq_ignore_ascii_case("https://"))
        .map(|_| &url[8..])
        .ok_or_else(|| {
            format!(
                "{:?} is not an https URL: alerts are sent over TLS only \
                 (e.g. \"https://hooks.example.com/postern\")",
                shown()
            )
        })?;
    if rest.contains('#') {
        return Err(format!("{:?}: a URL fragment (#...) is not sent", shown()));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.contains('@') {
        return Err(format!(
            "{:?}: no user name or password in the URL (it would be logged); \
             put a secret token in the path instead",
            shown()
        ));
    }
    let (host, port) = split_host_port(authority).ok_or_else(|| {
        format!(
            "{:?}: the host must be a domain name or an IP address, with an \
             optional port 1 to 65535",
            shown()
        )
    })?;
    let path_ok = path.is_empty() || path.starts_with('/') || path.starts_with('?');
    if !path_ok {
        return Err(format!("{:?}: malformed path", shown()));
    }
    Ok(WebhookUrl {
        url: url.to_string(),
        host,
        port,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`.
fn split_host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']')?;
        let ip: IpAddr = v6.parse().ok()?;
        if !ip.is_ipv6() {
            return None;
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (v6.to_ascii_lowercase(), port)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        let host = host.to_ascii_lowercase();
        let is_v4 = host.parse::<std::net::Ipv4Addr>().is_ok();
        let is_name = is_domain_name(&host) && !host.ends_with('.');
        if !is_v4 && !is_name {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None => 443,
        Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0)?,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Settings;

    #[test]
    fn defaults_and_spec_block() {
        let s = Settings::from_toml("[alerts]\nwebhook = \"\"\nemail = []\n").expect("SPEC §12");
        assert_eq!(s.alerts, AlertSettings::default());
        assert_eq!(s.alerts.webhook_url(), None);
    }

    #[test]
    fn webhook_forms() {
        #[rustfmt::skip]
        type Row<'a> = (&'a str, Result<(&'a str, u16), &'a str>);
        let rows: &[Row<'_>] = &[
            (
                "https://hooks.example.com/postern",
                Ok(("hooks.example.com", 443)),
            ),
            (
                "HTTPS://Hooks.Example.com:8443/a?b=c",
                Ok(("hooks.example.com", 8443)),
            ),
            ("https://127.0.0.1:9443/hook", Ok(("127.0.0.1", 9443))),
            ("https://[::1]:9443/hook", Ok(("::1", 9443))),
            ("https://[::1]", Ok(("::1", 443))),
            (
                "https://hooks.example.com?token=x",
                Ok(("hooks.example.com", 443)),
            ),
            ("http://hooks.example.com/", Err("is not an https URL")),
            ("hooks.example.com", Err("is not an https URL")),
            (
                "https://user:pw@hooks.example.com/",
                Err("no user name or password"),
            ),
            (
                "https://hooks.example.com:0/",
                Err("optional port 1 to 65535"),
            ),
            (
                "https://hooks.example.com:99999/",
                Err("optional port 1 to 65535"),
            ),
            (
                "https://hooks example.com/",
                Err("spaces and control characters"),
            ),
            (
                "https://hooks.example.com/\n",
                Err("spaces and control characters"),
            ),
            ("https:///path", Err("must be a domain name")),
            ("https://[127.0.0.1]/", Err("must be a domain name")),
            ("https://bad_host!/", Err("must be a domain name")),
            ("https://hooks.example.com/#x", Err("fragment")),
        ];
        for (url, want) in rows {
            match (parse_webhook(url), want) {
                (Ok(got), Ok((host, port))) => {
                    assert_eq!((got.host.as_str(), got.port), (*host, *port), "{url}");
                }
                (Err(got), Err(part)) => assert!(got.contains(part), "{url}: {got}"),
                (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
            }
        }
        let long = format!("https://h.example/{}", "a".repeat(MAX_URL_CHARS));
        assert!(parse_webhook(&long).unwrap_err().contains("at most 2048"));
    }

    #[test]
    fn validation_names_the_key() {
        #[rustfmt::skip]
        let rows: &[(&str, &str, Option<&str>)] = &[
            ("alerts.webhook", "https://hooks.example.com/x", None),
            ("alerts.webhook", "", None),
            ("alerts.webhook", "http://hooks.example.com/x", Some("alerts.webhook: \"http://hooks.example.com/x\" is not an https URL")),
            ("alerts.email", "postmaster@example.com, tls-team@example.org", None),
            ("alerts.email", "", None),
            ("alerts.email", "postmaster", Some("alerts.email: \"postmaster\" is not a mail address")),
            ("alerts.email", "a@example.com, A@example.com", Some("alerts.email: \"A@example.com\" is listed twice")),
        ];
        for (key, value, want) in rows {
            let got = Settings::default().with(key, value);
            match want {
                None => assert!(got.is_ok(), "{key}={value:?}: {got:?}"),
                Some(msg) => {
                    let err = got.expect_err(key).to_string();
                    assert!(err.contains(msg), "{key}={value:?}: {err}");
                }
            }
        }
        let many: Vec<String> = (0..=MAX_ALERT_ADDRESSES)
            .map(|i| format!("a{i}@example.com"))
            .collect();
        let err = Settings::default()
            .with("alerts.email", &many.join(","))
            .expect_err("too many");
        assert!(
            err.to_string().contains("at most 20 addresses (got 21)"),
            "{err}"
        );
        let s = Settings::default()
            .with("alerts.webhook", "https://127.0.0.1:9443/h")
            .expect("ok");
        assert_eq!(
            s.alerts.webhook_url().map(|w| (w.host, w.port)),
            Some(("127.0.0.1".to_string(), 9443))
        );
    }
}
