//! The gateway's TLS-RPT tasks: the daily run (when `tlsrpt.enabled`, the
//! previous UTC day's reports, from [`SEND_AFTER_SECS`] past midnight so the
//! last attempts of the day are recorded), the retry of `https:` reports
//! (always: a report once sent is seen through), and the socket
//! `postern tlsrpt send` reaches them by (the gateway holds the spool, so
//! the mails it queues must be queued here).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postern_store::tlsrpt::report::{self, DAY_SECS};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

use super::send::{self, Period};
use super::{LocalQueue, Reporter};
use crate::context::unix_now;
use crate::gateway::LiveConfig;

/// Reports of day D go out from D+1 00:10 UTC.
pub const SEND_AFTER_SECS: i64 = 600;
/// A daily run that failed (or whose lookups did) is tried again after this.
const RETRY_RUN_SECS: i64 = 300;
/// How often retries and the daily run are looked at.
const TICK: Duration = Duration::from_secs(2);
/// Reports (claims and delivery records) are kept this many days, then
/// deleted by the daily run: the TLS reports page and `/api/v1/tlsrpt`
/// show a quarter's history, and the tables do not grow without end.
pub const KEEP_DAYS: i64 = 90;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("tlsrpt.sock")
}

/// The start (00:00 UTC) of the day `now` is in.
fn midnight(now: i64) -> i64 {
    now - now.rem_euclid(DAY_SECS)
}

/// The day the daily run should have sent at `now`, once due.
pub fn due_day(now: i64) -> Option<String> {
    let today = midnight(now);
    (now >= today + SEND_AFTER_SECS).then(|| report::day_of(today - DAY_SECS))
}

/// The first day whose reports are kept at `now`: older ones are pruned.
pub fn first_kept_day(now: i64) -> String {
    report::day_of(midnight(now) - KEEP_DAYS * DAY_SECS)
}

/// Delete the reports older than [`KEEP_DAYS`]; a failure is only logged
/// (the next daily run tries again).
async fn prune(reporter: &Reporter) {
    let store = reporter.store.clone();
    let day = first_kept_day(unix_now());
    let pruned = tokio::task::spawn_blocking(move || store.tlsrpt().prune_reports(&day))
        .await
        .map_err(anyhow::Error::from)
        .and_then(|deleted| deleted.map_err(anyhow::Error::from));
    match pruned {
        Ok(0) => {}
        Ok(n) => tracing::info!("tlsrpt: deleted {n} report records older than {KEEP_DAYS} days"),
        Err(e) => tracing::warn!("tlsrpt: deleting old report records failed: {e:#}"),
    }
}

/// Start the tasks; abort them at shutdown.
pub fn start(
    reporter: Arc<Reporter>,
    live: Arc<LiveConfig>,
    queue: LocalQueue,
    data_dir: &Path,
) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(run_loop(
            Arc::clone(&reporter),
            Arc::clone(&live),
            queue.clone(),
        )),
        tokio::spawn(serve(socket_path(data_dir), reporter, live, queue)),
    ]
}

async fn run_loop(reporter: Arc<Reporter>, live: Arc<LiveConfig>, queue: LocalQueue) {
    // The day this process has sent (claims make a second pass harmless,
    // this only spares the DNS lookups).
    let mut done: Option<String> = None;
    // After a failed run or lookup: not before this (unix seconds).
    let mut not_before = 0;
    loop {
        tokio::time::sleep(TICK).await;
        let current = live.get();
        if let Err(e) = send::retry_due(&reporter, &current.settings, &current.client_tls).await {
            tracing::warn!("tlsrpt: retrying reports failed: {e}");
        }
        if !current.settings.tlsrpt.enabled {
            continue;
        }
        let Some(day) = due_day(unix_now()) else {
            continue;
        };
        if done.as_deref() == Some(day.as_str()) || unix_now() < not_before {
            continue;
        }
        let period = match Period::of(Some(&day), unix_now()) {
            Ok(period) => period,
            Err(e) => {
                tracing::warn!("tlsrpt: {e}");
                continue;
            }
        };
        match send::send(
            &reporter,
            &current.settings,
            &current.client_tls,
            &queue,
            &period,
            None,
        )
        .await
        {
            Ok(sent) => {
                for line in &sent.lines {
                    tracing::info!("tlsrpt: {line}");
                }
                if sent.incomplete {
                    tracing::warn!(
                        "tlsrpt: some _smtp._tls lookups failed; trying {day} again in 5 minutes"
                    );
                    not_before = unix_now() + RETRY_RUN_SECS;
                } else {
                    done = Some(day);
                    prune(&reporter).await;
                }
            }
            Err(e) => {
                tracing::warn!(
                    "tlsrpt: the daily run for {day} failed: {e}; trying again in 5 minutes"
                );
                not_before = unix_now() + RETRY_RUN_SECS;
            }
        }
    }
}

/// One request line (`send DAY [DOMAIN]`), one answer line: `ok ` and a
/// JSON array of result lines, or `error ` and why.
async fn serve(path: PathBuf, reporter: Arc<Reporter>, live: Arc<LiveConfig>, queue: LocalQueue) {
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("tlsrpt socket {} unavailable: {e}", path.display());
            return;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    }
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (reporter, live, queue) = (Arc::clone(&reporter), Arc::clone(&live), queue.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(1024));
            let answer =
                match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
                    .await
                {
                    Ok(Ok(_)) => handle(&reporter, &live, &queue, line.trim()).await,
                    _ => Err("no request".to_string()),
                };
            let reply = match answer {
                Ok(lines) => format!(
                    "ok {}\n",
                    serde_json::to_string(&lines).unwrap_or_else(|_| "[]".into())
                ),
                Err(text) => format!("error {}\n", text.replace('\n', " ")),
            };
            let _ = write.write_all(reply.as_bytes()).await;
        });
    }
}

async fn handle(
    reporter: &Reporter,
    live: &LiveConfig,
    queue: &LocalQueue,
    request: &str,
) -> Result<Vec<String>, String> {
    let words: Vec<&str> = request.split_whitespace().collect();
    let (day, domain) = match words.as_slice() {
        ["send", day] => (*day, None),
        ["send", day, domain] => (*day, Some(*domain)),
        _ => return Err(format!("unknown request {request:?}")),
    };
    let period = Period::of(Some(day), unix_now())?;
    let current = live.get();
    send::send(
        reporter,
        &current.settings,
        &current.client_tls,
        queue,
        &period,
        domain,
    )
    .await
    .map(|sent| sent.lines)
    .map_err(|e| e.to_string())
}

/// Client side: ask the running gateway to send. `None` when none listens.
pub fn request(
    data_dir: &Path,
    day: &str,
    domain: Option<&str>,
) -> Option<Result<Vec<String>, String>> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket_path(data_dir)).ok()?;
    // DNS lookups and https POSTs with their timeouts: allow for them.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let line = match domain {
        Some(domain) => format!("send {day} {domain}\n"),
        None => format!("send {day}\n"),
    };
    if stream.write_all(line.as_bytes()).is_err() {
        return Some(Err("tlsrpt socket write failed".into()));
    }
    let mut reply = String::new();
    if BufReader::new(stream).read_line(&mut reply).is_err() {
        return Some(Err("no answer from the gateway".into()));
    }
    let reply = reply.trim();
    Some(match reply.split_once(' ') {
        Some(("ok", json)) => serde_json::from_str(json).map_err(|e| e.to_string()),
        Some(("error", text)) => Err(text.to_string()),
        _ => Err(format!("unexpected answer {reply:?}")),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reports_are_kept_ninety_days() {
        // 2026-12-03 12:00 UTC
        let now = 1_796_299_200;
        assert_eq!(report::day_of(now), "2026-12-03");
        assert_eq!(first_kept_day(now), "2026-09-04");
    }

    #[test]
    fn the_previous_day_is_due_from_ten_past_midnight() {
        let midnight = report::day_start("2026-12-03").unwrap();
        assert_eq!(due_day(midnight), None);
        assert_eq!(due_day(midnight + SEND_AFTER_SECS - 1), None);
        assert_eq!(
            due_day(midnight + SEND_AFTER_SECS).as_deref(),
            Some("2026-12-02")
        );
        assert_eq!(
            due_day(midnight + DAY_SECS - 1).as_deref(),
            Some("2026-12-02")
        );
    }
}
