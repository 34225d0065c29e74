//! `postern-bench sink`: an SMTP receiver that accepts everything, keeps
//! nothing on disk, and counts messages by the token the load generator
//! puts in each Subject (`Subject: postern-bench pb.RUN.CONN.MSG`).
//!
//! Listeners: `--listen` (plaintext only) and `--listen-tls` (STARTTLS
//! offered with `--cert`/`--key`). Control socket (`--control`, one
//! command per line, one JSON object per line back):
//!
//! * `stats RUN` — received, unique, duplicates, corrupt, first/last arrival
//!   (unix seconds), messages over TLS
//! * `wait RUN N SECS` — like `stats`, once RUN has N unique messages or
//!   after SECS
//! * `list RUN` — `{"tokens": [[conn, msg, copies], ...]}` for exact checks
//! * `forget RUN`, `total` (all runs plus messages without a token)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use rustls::ServerConfig;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;

#[derive(clap::Args, Debug)]
pub struct SinkArgs {
    /// Plaintext SMTP listener (no STARTTLS offered). Repeatable.
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// SMTP listener offering STARTTLS (needs --cert/--key). Repeatable.
    #[arg(long)]
    listen_tls: Vec<SocketAddr>,
    /// Certificate chain (PEM) for STARTTLS: RSA or ECDSA.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Control socket (TCP, loopback).
    #[arg(long)]
    control: SocketAddr,
    /// Exit after this many messages (0: run until SIGTERM/Ctrl-C), printing `total` JSON.
    #[arg(long, default_value_t = 0)]
    exit_after: u64,
}

#[derive(Default)]
struct RunStats {
    copies: HashMap<(u32, u32), u32>,
    received: u64,
    corrupt: u64,
    over_tls: u64,
    first: f64,
    last: f64,
}

#[derive(Default)]
struct Counts {
    runs: HashMap<String, RunStats>,
    total: u64,
    foreign: u64,
}

struct Sink {
    counts: Mutex<Counts>,
    /// SMTP connections accepted, STARTTLS handshakes done, of which resumed.
    connections: AtomicU64,
    tls_handshakes: AtomicU64,
    tls_resumed: AtomicU64,
    arrived: Notify,
    exit_after: u64,
    done: Notify,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Sink {
    fn record(&self, message: &[u8], tls: bool) {
        let parsed = parse_token(message);
        let t = now();
        let total = {
            let Ok(mut c) = self.counts.lock() else {
                return;
            };
            c.total += 1;
            match parsed {
                Some(tok) => {
                    let run = c.runs.entry(tok.run).or_default();
                    run.received += 1;
                    if run.first == 0.0 {
                        run.first = t;
                    }
                    run.last = t;
                    if tls {
                        run.over_tls += 1;
                    }
                    if !tok.intact {
                        run.corrupt += 1;
                    }
                    *run.copies.entry((tok.conn, tok.msg)).or_insert(0) += 1;
                }
                None => c.foreign += 1,
            }
            c.total
        };
        self.arrived.notify_waiters();
        if self.exit_after > 0 && total >= self.exit_after {
            self.done.notify_one();
        }
    }

    fn stats(&self, run: &str) -> serde_json::Value {
        let Ok(c) = self.counts.lock() else {
            return json!({"error": "poisoned"});
        };
        match c.runs.get(run) {
            None => json!({"run": run, "received": 0, "unique": 0, "duplicates": 0,
                           "corrupt": 0, "over_tls": 0, "first": null, "last": null}),
            Some(r) => json!({
                "run": run,
                "received": r.received,
                "unique": r.copies.len(),
                "duplicates": r.received - r.copies.len() as u64,
                "corrupt": r.corrupt,
                "over_tls": r.over_tls,
                "first": r.first,
                "last": r.last,
            }),
        }
    }

    fn unique(&self, run: &str) -> usize {
        self.counts
            .lock()
            .ok()
            .and_then(|c| c.runs.get(run).map(|r| r.copies.len()))
            .unwrap_or(0)
    }

    fn total(&self) -> serde_json::Value {
        let Ok(c) = self.counts.lock() else {
            return json!({"error": "poisoned"});
        };
        let runs: serde_json::Map<String, serde_json::Value> = c
            .runs
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    json!({"received": r.received, "unique": r.copies.len(),
                           "duplicates": r.received - r.copies.len() as u64, "corrupt": r.corrupt}),
                )
            })
            .collect();
        json!({"total": c.total, "foreign": c.foreign, "runs": runs,
               "connections": self.connections.load(Ordering::Relaxed),
               "tls_handshakes": self.tls_handshakes.load(Ordering::Relaxed),
               "tls_resumed": self.tls_resumed.load(Ordering::Relaxed),
               "cpu_micros": crate::procwatch::own_cpu_micros()})
    }
}

struct Token {
    run: String,
    conn: u32,
    msg: u32,
    /// The body length matches the X-Bench-Body-Length header.
    intact: bool,
}

const SUBJECT: &[u8] = b"\nSubject: postern-bench pb.";
const BODY_LEN: &[u8] = b"\nX-Bench-Body-Length: ";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn header_value<'a>(head: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let at = find(head, name)? + name.len();
    let rest = head.get(at..)?;
    let end = rest.iter().position(|&b| b == b'\r' || b == b'\n')?;
    rest.get(..end)
}

/// `message` is the unstuffed content ending in CRLF (without the final dot).
fn parse_token(message: &[u8]) -> Option<Token> {
    let head_end = find(message, b"\r\n\r\n")?;
    // Search from the CRLF before the first header too.
    let mut head = Vec::with_capacity(head_end + 3);
    head.push(b'\n');
    head.extend_from_slice(message.get(..head_end + 2)?);
    let token = std::str::from_utf8(header_value(&head, SUBJECT)?).ok()?;
    let mut parts = token.rsplitn(3, '.');
    let msg = parts.next()?.parse().ok()?;
    let conn = parts.next()?.parse().ok()?;
    let run = parts.next()?.to_string();
    let body = message.get(head_end + 4..).unwrap_or_default();
    let intact = header_value(&head, BODY_LEN)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n == body.len());
    Some(Token {
        run,
        conn,
        msg,
        intact,
    })
}

pub async fn run(args: SinkArgs) -> Result<()> {
    let tls = match (&args.cert, &args.key) {
        (Some(c), Some(k)) => Some(crate::tls::server_config(c, k)?),
        _ => None,
    };
    if !args.listen_tls.is_empty() && tls.is_none() {
        anyhow::bail!("--listen-tls needs --cert and --key");
    }
    let sink = Arc::new(Sink {
        counts: Mutex::new(Counts::default()),
        connections: AtomicU64::new(0),
        tls_handshakes: AtomicU64::new(0),
        tls_resumed: AtomicU64::new(0),
        arrived: Notify::new(),
        exit_after: args.exit_after,
        done: Notify::new(),
    });
    for (addrs, offer_tls) in [(&args.listen, false), (&args.listen_tls, true)] {
        for addr in addrs {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            let tls = if offer_tls { tls.clone() } else { None };
            eprintln!(
                "sink: SMTP on {addr}{}",
                if tls.is_some() { " (STARTTLS)" } else { "" }
            );
            tokio::spawn(accept_loop(listener, tls, Arc::clone(&sink)));
        }
    }
    let control = TcpListener::bind(args.control)
        .await
        .with_context(|| format!("binding control {}", args.control))?;
    eprintln!("sink: control on {}", args.control);
    tokio::spawn(control_loop(control, Arc::clone(&sink)));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        () = sink.done.notified() => {}
    }
    println!("{}", sink.total());
    Ok(())
}

async fn accept_loop(listener: TcpListener, tls: Option<Arc<ServerConfig>>, sink: Arc<Sink>) {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp, tls.clone(), Arc::clone(&sink)));
            }
            Err(e) => {
                eprintln!("sink: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

enum End {
    Closed,
    StartTls,
}

async fn serve(mut tcp: TcpStream, tls: Option<Arc<ServerConfig>>, sink: Arc<Sink>) {
    sink.connections.fetch_add(1, Ordering::Relaxed);
    if tcp
        .write_all(b"220 sink.bench ESMTP postern-bench sink\r\n")
        .await
        .is_err()
    {
        return;
    }
    let offer = tls.is_some();
    match session(&mut tcp, &sink, offer, false).await {
        Ok(End::StartTls) => {
            let Some(config) = tls else { return };
            let acceptor = TlsAcceptor::from(config);
            let Ok(Ok(mut stream)) =
                tokio::time::timeout(Duration::from_secs(60), acceptor.accept(tcp)).await
            else {
                return;
            };
            sink.tls_handshakes.fetch_add(1, Ordering::Relaxed);
            if matches!(
                stream.get_ref().1.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            ) {
                sink.tls_resumed.fetch_add(1, Ordering::Relaxed);
            }
            let _ = session(&mut stream, &sink, false, true).await;
            let _ = stream.shutdown().await;
        }
        Ok(End::Closed) | Err(_) => {}
    }
}

/// One SMTP session (pipelining-aware: replies are written when the input
/// buffer holds no further complete command).
async fn session<S>(stream: &mut S, sink: &Sink, offer_tls: bool, tls: bool) -> Result<End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    let mut in_data = false;
    // Where to resume searching for the end of data.
    let mut scan_from = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        // Consume every complete unit in the buffer.
        let mut consumed = 0usize;
        loop {
            let rest = buf.get(consumed..).unwrap_or_default();
            if in_data {
                let end = if rest.starts_with(b".\r\n") {
                    Some((0, 3))
                } else {
                    let from = scan_from.saturating_sub(consumed).saturating_sub(4);
                    rest.get(from..)
                        .and_then(|r| find(r, b"\r\n.\r\n"))
                        .map(|p| (from + p + 2, from + p + 5))
                };
                match end {
                    Some((content_end, next)) => {
                        sink.record(rest.get(..content_end).unwrap_or_default(), tls);
                        out.extend_from_slice(b"250 2.0.0 Ok: queued by sink\r\n");
                        consumed += next;
                        in_data = false;
                        scan_from = 0;
                    }
                    None => {
                        scan_from = buf.len();
                        break;
                    }
                }
            } else {
                let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                    break;
                };
                let line = rest.get(..nl).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let verb: Vec<u8> = line
                    .iter()
                    .take_while(|&&b| b != b' ')
                    .map(u8::to_ascii_uppercase)
                    .collect();
                consumed += nl + 1;
                match verb.as_slice() {
                    b"EHLO" => {
                        out.extend_from_slice(b"250-sink.bench\r\n250-PIPELINING\r\n250-SIZE 209715200\r\n250-8BITMIME\r\n");
                        if offer_tls {
                            out.extend_from_slice(b"250-STARTTLS\r\n");
                        }
                        out.extend_from_slice(b"250 ENHANCEDSTATUSCODES\r\n");
                    }
                    b"HELO" => out.extend_from_slice(b"250 sink.bench\r\n"),
                    b"MAIL" | b"RCPT" | b"RSET" | b"NOOP" => {
                        out.extend_from_slice(b"250 2.0.0 Ok\r\n")
                    }
                    b"DATA" => {
                        out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                        in_data = true;
                        scan_from = consumed;
                    }
                    b"QUIT" => {
                        out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        return Ok(End::Closed);
                    }
                    b"STARTTLS" if offer_tls => {
                        out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        return Ok(End::StartTls);
                    }
                    _ => out.extend_from_slice(b"502 5.5.1 Not implemented\r\n"),
                }
            }
        }
        if consumed > 0 {
            buf.drain(..consumed);
            scan_from = scan_from.saturating_sub(consumed);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
            out.clear();
        }
        let n = tokio::time::timeout(Duration::from_secs(600), stream.read(&mut chunk))
            .await
            .map_err(|_| anyhow::anyhow!("idle timeout"))??;
        if n == 0 {
            return Ok(End::Closed);
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

async fn control_loop(listener: TcpListener, sink: Arc<Sink>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            let (read, mut write) = tcp.into_split();
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = control(&sink, line.trim()).await;
                let mut text = reply.to_string();
                text.push('\n');
                if write.write_all(text.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn control(sink: &Sink, line: &str) -> serde_json::Value {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        ["stats", run] => sink.stats(run),
        ["wait", run, n, secs] => {
            let (Ok(n), Ok(secs)) = (n.parse::<usize>(), secs.parse::<f64>()) else {
                return json!({"error": "usage: wait RUN N SECS"});
            };
            let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs.max(0.0));
            loop {
                let notified = sink.arrived.notified();
                if sink.unique(run) >= n {
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    break;
                }
            }
            sink.stats(run)
        }
        ["list", run] => {
            let Ok(c) = sink.counts.lock() else {
                return json!({"error": "poisoned"});
            };
            let tokens: Vec<[u32; 3]> = c
                .runs
                .get(*run)
                .map(|r| r.copies.iter().map(|(&(a, b), &n)| [a, b, n]).collect())
                .unwrap_or_default();
            json!({"run": run, "tokens": tokens})
        }
        ["forget", run] => {
            if let Ok(mut c) = sink.counts.lock() {
                c.runs.remove(*run);
            }
            json!({"ok": true})
        }
        ["total"] => sink.total(),
        _ => {
            json!({"error": "commands: stats RUN | wait RUN N SECS | list RUN | forget RUN | total"})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_and_integrity() {
        let m = b"Received: x\r\nSubject: postern-bench pb.r1.3.7\r\nX-Bench-Body-Length: 5\r\n\r\nabc\r\n";
        let t = parse_token(m).expect("token");
        assert_eq!(
            (t.run.as_str(), t.conn, t.msg, t.intact),
            ("r1", 3, 7, true)
        );
        let m = b"Subject: postern-bench pb.r-x.0.12\r\nX-Bench-Body-Length: 9\r\n\r\nabc\r\n";
        let t = parse_token(m).expect("token");
        assert_eq!(
            (t.run.as_str(), t.conn, t.msg, t.intact),
            ("r-x", 0, 12, false)
        );
        assert!(parse_token(b"Subject: hello\r\n\r\nx\r\n").is_none());
    }
}
