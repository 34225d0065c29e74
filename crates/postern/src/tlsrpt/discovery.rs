//! Where a domain wants its reports: the `_smtp._tls.<domain>` TXT record
//! (RFC 8460 §3), looked up through the delivery resolver and parsed by
//! mail-auth.

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use postern_delivery::Resolver;

/// One `rua` destination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// The mail address (without `mailto:` and any `?` fields).
    Mail(String),
    /// The `https:` URL.
    Https(String),
}

impl Destination {
    /// As the record gave it: `mailto:a@b`, `https://...`.
    pub fn uri(&self) -> String {
        match self {
            Destination::Mail(address) => format!("mailto:{address}"),
            Destination::Https(url) => url.clone(),
        }
    }
}

/// What the domain publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Published {
    Rua(Vec<Destination>),
    /// No usable record, and why (in words).
    Nothing(String),
}

/// Look up and parse `_smtp._tls.<domain>`; `Err` when the lookup itself
/// failed (try again later).
pub async fn lookup(resolver: &Resolver, domain: &str) -> Result<Published, String> {
    let name = format!("_smtp._tls.{domain}");
    let records = resolver.txt(&name).await?;
    Ok(choose(&name, &records))
}

/// RFC 8460 §3: records not starting with `v=TLSRPTv1` are discarded; not
/// exactly one left means the domain does not do TLS-RPT.
pub fn choose(name: &str, records: &[String]) -> Published {
    let ours: Vec<&String> = records
        .iter()
        .filter(|r| r.trim_start().starts_with("v=TLSRPTv1"))
        .collect();
    let record = match ours.as_slice() {
        [] => return Published::Nothing(format!("{name} has no v=TLSRPTv1 record")),
        [one] => one,
        _ => {
            return Published::Nothing(format!(
                "{name} has {} v=TLSRPTv1 records; RFC 8460 §3 says none of them applies",
                ours.len()
            ))
        }
    };
    let parsed = match TlsRpt::parse(record.as_bytes()) {
        Ok(parsed) => parsed,
        Err(e) => return Published::Nothing(format!("{name}: {record:?} does not parse: {e}")),
    };
    let rua: Vec<Destination> = parsed
        .rua
        .into_iter()
        .filter_map(|uri| match uri {
            ReportUri::Mail(address) => {
                let address = address.split('?').next().unwrap_or_default().trim();
                address
                    .contains('@')
                    .then(|| Destination::Mail(address.to_string()))
            }
            ReportUri::Http(url) if url.to_ascii_lowercase().starts_with("https://") => {
                Some(Destination::Https(url))
            }
            // Plain http: reports would travel unprotected; RFC 8460 §3
            // allows only https.
            ReportUri::Http(_) => None,
        })
        .collect();
    if rua.is_empty() {
        return Published::Nothing(format!("{name}: {record:?} names no mailto: or https: rua"));
    }
    Published::Rua(rua)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rua(list: &[&str]) -> Published {
        Published::Rua(
            list.iter()
                .map(|d| match d.strip_prefix("mailto:") {
                    Some(a) => Destination::Mail(a.to_string()),
                    None => Destination::Https(d.to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn records_are_chosen_as_rfc_8460_says() {
        let name = "_smtp._tls.r.test";
        let rows: Vec<(Vec<&str>, Result<Published, &str>)> = vec![
            (
                vec!["v=TLSRPTv1; rua=mailto:tlsrpt@r.test"],
                Ok(rua(&["mailto:tlsrpt@r.test"])),
            ),
            (
                vec![
                    "some other text",
                    "v=TLSRPTv1;rua=mailto:a@r.test,https://rpt.r.test/v1",
                ],
                Ok(rua(&["mailto:a@r.test", "https://rpt.r.test/v1"])),
            ),
            (vec![], Err("has no v=TLSRPTv1 record")),
            (vec!["v=spf1 -all"], Err("has no v=TLSRPTv1 record")),
            (
                vec![
                    "v=TLSRPTv1; rua=mailto:a@r.test",
                    "v=TLSRPTv1; rua=mailto:b@r.test",
                ],
                Err("has 2 v=TLSRPTv1 records"),
            ),
            (
                vec!["v=TLSRPTv1; rua=http://rpt.r.test/v1"],
                Err("does not parse"),
            ),
        ];
        for (records, expected) in rows {
            let records: Vec<String> = records.iter().map(|r| r.to_string()).collect();
            let got = choose(name, &records);
            match (expected, got) {
                (Ok(want), got) => assert_eq!(got, want, "{records:?}"),
                (Err(why), Published::Nothing(text)) => {
                    assert!(text.contains(why), "{records:?}: {text}")
                }
                (Err(why), got) => panic!("{records:?}: expected {why}, got {got:?}"),
            }
        }
    }
}
