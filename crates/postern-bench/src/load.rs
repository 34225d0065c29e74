//! `postern-bench load`: C concurrent connections, M messages each, size S.
//!
//! Each message carries a unique token (`Subject: postern-bench
//! pb.RUN.CONN.MSG`, also in its Message-ID). Measured: accepted msg/s
//! (messages answered 250 / time from start to the last 250), the latency
//! from the end of DATA (the final dot written) to the 250, and TLS
//! connection setup time. With `--sink-control` it then waits until the
//! sink has every accepted message, and checks that each arrived exactly
//! once and intact (delivered msg/s: accepted / time from start to the
//! last arrival). With `--watch-pid` it also measures the CPU seconds and
//! peak memory of the MTA (see `procwatch`), until its queue is empty when
//! `--queue-dir` is given.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _, Result};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::client::{one_line, Client, Mode, Options};
use crate::procwatch::{Sampler, Watch};

#[derive(clap::Args, Debug)]
pub struct LoadArgs {
    /// The MTA's SMTP address.
    #[arg(long)]
    target: SocketAddr,
    #[arg(long, value_enum, default_value = "plain")]
    mode: Mode,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 10)]
    connections: u32,
    /// Messages per connection.
    #[arg(long, short = 'm', default_value_t = 100)]
    messages: u32,
    /// Message size in bytes (suffix k/K = KiB, m/M = MiB), headers included.
    #[arg(long, short = 's', default_value = "4k", value_parser = parse_size)]
    size: usize,
    /// A new connection (and TLS handshake) for every message.
    #[arg(long)]
    new_connection_per_message: bool,
    /// No TLS session resumption (every handshake is a full one).
    #[arg(long)]
    no_resume: bool,
    /// Offered load in messages per second over all connections (open
    /// loop: message k of connection i is due at (k·C + i)/RATE seconds),
    /// so latency can be compared at the same throughput. 0: as fast as
    /// the MTA answers (closed loop).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Send no new message after this many seconds from the start (0: no
    /// limit): bounds an open-loop run against an MTA that cannot keep up.
    /// Messages not sent by then are counted as `not_sent`.
    #[arg(long, default_value_t = 0.0)]
    deadline: f64,
    /// Token prefix identifying this run at the sink (no dots).
    #[arg(long)]
    run: Option<String>,
    #[arg(long, default_value = "bench@load.bench")]
    from: String,
    #[arg(long, default_value = "user@sink.bench")]
    rcpt: String,
    #[arg(long, default_value = "load.bench")]
    helo: String,
    /// The sink's control socket: wait for delivery and verify it.
    #[arg(long)]
    sink_control: Option<SocketAddr>,
    /// How long to wait for delivery after the last 250 (seconds).
    #[arg(long, default_value_t = 300.0)]
    delivery_timeout: f64,
    /// Measure CPU and memory of this process and its process group.
    #[arg(long)]
    watch_pid: Option<i32>,
    /// Before the final CPU reading, wait until no file is left under this
    /// directory (the MTA's queue). Repeatable.
    #[arg(long)]
    queue_dir: Vec<PathBuf>,
    /// Per-operation timeout (seconds).
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// A label copied into the JSON output.
    #[arg(long, default_value = "")]
    label: String,
}

pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1024),
        Some((i, 'm' | 'M')) => (&s[..i], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<usize>()
        .map(|n| n * mult)
        .map_err(|e| format!("size {s:?}: {e}"))
}

fn epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The body: lines of 76 letters + CRLF (never a leading dot), `len` bytes.
fn make_body(len: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(len + 80);
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut i = 0usize;
    while body.len() + 2 < len {
        let line_len = (len - body.len() - 2).min(76);
        for _ in 0..line_len {
            body.push(alphabet[i % alphabet.len()]);
            i += 7;
        }
        body.extend_from_slice(b"\r\n");
    }
    if body.is_empty() {
        body.extend_from_slice(b"x\r\n");
    }
    body
}

struct Template {
    from: String,
    rcpt: String,
    run: String,
    body: Vec<u8>,
}

impl Template {
    fn new(args: &LoadArgs, run: &str) -> Self {
        // Headers take ~300 bytes; the body makes up the rest of --size.
        let body = make_body(args.size.saturating_sub(300).max(3));
        Self {
            from: args.from.clone(),
            rcpt: args.rcpt.clone(),
            run: run.to_string(),
            body,
        }
    }

    /// The message with its end-of-data line, into `out`.
    fn write(&self, conn: u32, msg: u32, out: &mut Vec<u8>) {
        out.clear();
        let token = format!("pb.{}.{conn}.{msg}", self.run);
        out.extend_from_slice(
            format!(
                "From: Bench <{from}>\r\nTo: <{rcpt}>\r\nSubject: postern-bench {token}\r\n\
                 Message-ID: <{token}@load.bench>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\
                 MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\
                 X-Bench-Body-Length: {len}\r\n\r\n",
                from = self.from,
                rcpt = self.rcpt,
                len = self.body.len()
            )
            .as_bytes(),
        );
        out.extend_from_slice(&self.body);
        out.extend_from_slice(b".\r\n");
    }
}

#[derive(Default)]
struct ConnResult {
    accepted: Vec<u32>,
    latencies_us: Vec<u32>,
    /// Under `--rate`: how late each message started (now − due).
    behind_us: Vec<u32>,
    /// Under `--rate`: from when the message was due to its 250 (the
    /// open-loop response time, including any wait behind earlier ones).
    due_to_ok_us: Vec<u32>,
    not_sent: u32,
    setup_us: Vec<u32>,
    failed: u32,
    errors: Vec<String>,
    last_ok: Option<Instant>,
    tls_versions: HashMap<String, u32>,
    resumed: u32,
}

impl ConnResult {
    fn fail(&mut self, what: String) {
        self.failed += 1;
        if self.errors.len() < 5 {
            self.errors.push(what);
        }
    }
}

/// When message `msg` of connection `index` is due under `--rate`.
#[derive(Clone, Copy)]
struct Pace {
    start: tokio::time::Instant,
    connections: u32,
    rate: f64,
    /// No new message after this (`--deadline`).
    stop: Option<tokio::time::Instant>,
}

impl Pace {
    fn due(&self, index: u32, msg: u32) -> Option<tokio::time::Instant> {
        (self.rate > 0.0).then(|| {
            let slot = f64::from(msg) * f64::from(self.connections) + f64::from(index);
            self.start + Duration::from_secs_f64(slot / self.rate)
        })
    }
}

async fn connection(
    index: u32,
    messages: u32,
    new_per_message: bool,
    pace: Pace,
    opts: Arc<Options>,
    template: Arc<Template>,
) -> ConnResult {
    let mut r = ConnResult::default();
    let mut client: Option<Client> = None;
    let mut out = Vec::with_capacity(template.body.len() + 512);
    let envelope = format!(
        "MAIL FROM:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
        template.from, template.rcpt
    );
    for msg in 0..messages {
        let due = pace.due(index, msg);
        if let Some(due) = due {
            tokio::time::sleep_until(due).await;
        }
        if pace
            .stop
            .is_some_and(|stop| tokio::time::Instant::now() >= stop)
        {
            r.not_sent += messages - msg;
            break;
        }
        if let Some(due) = due {
            r.behind_us.push(micros(due.elapsed()));
        }
        let mut c = match client.take() {
            Some(c) => c,
            None => {
                let t = Instant::now();
                match Client::open(&opts).await {
                    Ok(c) => {
                        r.setup_us
                            .push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                        if let Some(tls) = &c.tls {
                            *r.tls_versions.entry(tls.version.clone()).or_insert(0) += 1;
                            if tls.resumed {
                                r.resumed += 1;
                            }
                        }
                        c
                    }
                    Err(e) => {
                        r.fail(format!("connect: {e}"));
                        // Do not spin on a server that refuses.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            }
        };
        template.write(index, msg, &mut out);
        match send_one(&mut c, &envelope, &out).await {
            Ok(Sent::Accepted(latency)) => {
                r.accepted.push(msg);
                r.latencies_us
                    .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                r.last_ok = Some(Instant::now());
                if let Some(due) = due {
                    r.due_to_ok_us.push(micros(due.elapsed()));
                }
                if new_per_message {
                    c.quit().await;
                } else {
                    client = Some(c);
                }
            }
            Ok(Sent::Refused(why)) => {
                r.fail(why);
                c.quit().await;
            }
            Err(e) => r.fail(format!("{e:#}")),
        }
    }
    if let Some(c) = client {
        c.quit().await;
    }
    r
}

enum Sent {
    Accepted(Duration),
    Refused(String),
}

async fn send_one(c: &mut Client, envelope: &str, message: &[u8]) -> Result<Sent> {
    let mut replies = Vec::with_capacity(3);
    if c.pipelining {
        c.send(envelope.as_bytes()).await?;
        for _ in 0..3 {
            replies.push(c.reply().await?);
        }
    } else {
        for line in envelope.split_inclusive("\r\n") {
            c.send(line.as_bytes()).await?;
            let reply = c.reply().await?;
            let ok = reply.is_positive();
            replies.push(reply);
            if !ok {
                break;
            }
        }
    }
    let names = ["MAIL", "RCPT", "DATA"];
    for (i, reply) in replies.iter().enumerate() {
        let want_354 = i == 2;
        let ok = if want_354 {
            reply.code == 354
        } else {
            reply.code == 250
        };
        if !ok {
            return Ok(Sent::Refused(format!(
                "{}: {}",
                names.get(i).copied().unwrap_or("?"),
                one_line(reply)
            )));
        }
    }
    if replies.len() < 3 {
        return Ok(Sent::Refused("envelope refused".into()));
    }
    c.send(message).await?;
    let t = Instant::now();
    let reply = c.reply().await?;
    let latency = t.elapsed();
    if reply.code == 250 {
        Ok(Sent::Accepted(latency))
    } else {
        Ok(Sent::Refused(format!("end of data: {}", one_line(&reply))))
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

pub fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    f64::from(sorted.get(i).copied().unwrap_or(0))
}

fn queue_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += queue_files(&e.path()),
            Ok(_) => n += 1,
            Err(_) => {}
        }
    }
    n
}

/// CPU seconds per 1,000 messages (0 when none were accepted).
fn per_thousand(cpu_secs: f64, messages: usize) -> f64 {
    if messages == 0 {
        0.0
    } else {
        cpu_secs * 1000.0 / messages as f64
    }
}

async fn control(addr: SocketAddr, command: &str, limit: Duration) -> Result<serde_json::Value> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("sink control {addr}"))?;
    let (read, mut write) = tcp.into_split();
    write.write_all(format!("{command}\n").as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let line = tokio::time::timeout(limit, lines.next_line())
        .await
        .map_err(|_| anyhow!("sink control: no answer to {command:?}"))??
        .ok_or_else(|| anyhow!("sink control closed"))?;
    Ok(serde_json::from_str(&line)?)
}

pub async fn run(args: LoadArgs) -> Result<bool> {
    let run = args.run.clone().unwrap_or_else(|| {
        format!(
            "r{:x}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros())
                & 0xffff_ffff_ffff
        )
    });
    if run.contains('.') || run.contains(char::is_whitespace) {
        anyhow::bail!("--run must not contain dots or spaces");
    }
    let limit = Duration::from_secs_f64(args.timeout);
    let tls = match args.mode {
        Mode::Plain => None,
        _ => Some(crate::tls::client_config(!args.no_resume)?),
    };
    let opts = Arc::new(Options {
        target: args.target,
        source: None,
        mode: args.mode,
        helo: args.helo.clone(),
        tls,
        limit,
        greeting_limit: limit,
    });
    let template = Arc::new(Template::new(&args, &run));
    let message_bytes = {
        let mut v = Vec::new();
        template.write(0, 0, &mut v);
        v.len() - 3
    };
    let watch = args.watch_pid.map(Watch::new);
    if let Some(w) = &watch {
        if !w.alive() {
            anyhow::bail!("--watch-pid {}: no such process", w.leader);
        }
        w.reset_peak();
    }
    let sink_before = match args.sink_control {
        Some(ctl) => Some(control(ctl, "total", Duration::from_secs(10)).await?),
        None => None,
    };
    let cpu_before = watch.map(|w| w.cpu_seconds());
    let sampler = watch.map(|w| Sampler::start(w, Duration::from_millis(200)));

    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        anyhow::bail!("--rate must be a number of messages per second, 0 or more");
    }
    let own_cpu_before = crate::procwatch::own_cpu_micros();
    let start = Instant::now();
    let start_epoch = epoch();
    if !(args.deadline >= 0.0 && args.deadline.is_finite()) {
        anyhow::bail!("--deadline must be a number of seconds, 0 or more");
    }
    let pace_start = tokio::time::Instant::now();
    let pace = Pace {
        start: pace_start,
        connections: args.connections,
        rate: args.rate,
        stop: (args.deadline > 0.0).then(|| pace_start + Duration::from_secs_f64(args.deadline)),
    };
    let mut tasks = Vec::new();
    for index in 0..args.connections {
        tasks.push(tokio::spawn(connection(
            index,
            args.messages,
            args.new_connection_per_message,
            pace,
            Arc::clone(&opts),
            Arc::clone(&template),
        )));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap_or_default());
    }
    let load_secs = start.elapsed().as_secs_f64();
    // Sending only: not the wait for delivery and the checks below.
    let own_cpu = (crate::procwatch::own_cpu_micros() - own_cpu_before) as f64 / 1e6;
    let accepted: usize = results.iter().map(|r| r.accepted.len()).sum();
    let failed: u32 = results.iter().map(|r| r.failed).sum();
    let last_ok = results.iter().filter_map(|r| r.last_ok).max();
    let accept_secs = last_ok.map_or(load_secs, |t| (t - start).as_secs_f64());
    let mut lat: Vec<u32> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let sorted = |pick: fn(&ConnResult) -> &Vec<u32>| {
        let mut v: Vec<u32> = results
            .iter()
            .flat_map(|r| pick(r).iter().copied())
            .collect();
        v.sort_unstable();
        v
    };
    let behind = sorted(|r| &r.behind_us);
    let due_to_ok = sorted(|r| &r.due_to_ok_us);
    let not_sent: u32 = results.iter().map(|r| r.not_sent).sum();
    let mut setup: Vec<u32> = results
        .iter()
        .flat_map(|r| r.setup_us.iter().copied())
        .collect();
    setup.sort_unstable();
    let errors: Vec<String> = results
        .iter()
        .flat_map(|r| r.errors.iter().cloned())
        .take(10)
        .collect();
    let mut tls_versions: HashMap<String, u32> = HashMap::new();
    for r in &results {
        for (k, v) in &r.tls_versions {
            *tls_versions.entry(k.clone()).or_insert(0) += v;
        }
    }
    let resumed: u32 = results.iter().map(|r| r.resumed).sum();

    let mut out = json!({
        "label": args.label,
        "run": run,
        "target": args.target.to_string(),
        "mode": args.mode,
        "connections": args.connections,
        "messages_per_connection": args.messages,
        "message_bytes": message_bytes,
        "new_connection_per_message": args.new_connection_per_message,
        "resume": !args.no_resume,
        "rate": args.rate,
        "deadline": args.deadline,
        "sent": (u64::from(args.connections) * u64::from(args.messages)).saturating_sub(u64::from(not_sent)),
        "not_sent": not_sent,
        "accepted": accepted,
        "failed": failed,
        "errors": errors,
        "accept_secs": accept_secs,
        "accepted_per_sec": if accept_secs > 0.0 { accepted as f64 / accept_secs } else { 0.0 },
        "latency_ms": {
            "p50": percentile(&lat, 50.0) / 1000.0,
            "p90": percentile(&lat, 90.0) / 1000.0,
            "p99": percentile(&lat, 99.0) / 1000.0,
            "max": percentile(&lat, 100.0) / 1000.0,
        },
        // Open loop only (--rate): how late messages started, and due → 250.
        "behind_ms": {
            "p50": percentile(&behind, 50.0) / 1000.0,
            "p99": percentile(&behind, 99.0) / 1000.0,
            "max": percentile(&behind, 100.0) / 1000.0,
        },
        "due_to_250_ms": {
            "p50": percentile(&due_to_ok, 50.0) / 1000.0,
            "p99": percentile(&due_to_ok, 99.0) / 1000.0,
        },
        "setup_ms": {
            "count": setup.len(),
            "p50": percentile(&setup, 50.0) / 1000.0,
            "p99": percentile(&setup, 99.0) / 1000.0,
        },
        "tls_versions": tls_versions,
        "tls_resumed": resumed,
        // This load generator's own CPU while sending (it shares the
        // machine with the MTA and the sink).
        "load_cpu_secs": own_cpu,
        "load_cpu_secs_per_1000": per_thousand(own_cpu, accepted),
    });
    let mut ok = failed == 0;

    if let Some(ctl) = args.sink_control {
        let stats = control(
            ctl,
            &format!("wait {run} {accepted} {}", args.delivery_timeout),
            Duration::from_secs_f64(args.delivery_timeout + 30.0),
        )
        .await?;
        let listing = control(ctl, &format!("list {run}"), Duration::from_secs(60)).await?;
        let _ = control(ctl, &format!("forget {run}"), Duration::from_secs(10)).await;
        // Exactly once: every acknowledged message arrived once, nothing
        // arrived that was not acknowledged, nothing was altered.
        let mut acked: HashMap<(u32, u32), bool> = HashMap::with_capacity(accepted);
        for (i, r) in results.iter().enumerate() {
            let conn = u32::try_from(i).unwrap_or(u32::MAX);
            for &m in &r.accepted {
                acked.insert((conn, m), false);
            }
        }
        let mut duplicates = 0u64;
        let mut unexpected = 0u64;
        let mut examples: Vec<String> = Vec::new();
        for t in listing["tokens"].as_array().cloned().unwrap_or_default() {
            let get = |i: usize| {
                t.get(i)
                    .and_then(serde_json::Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0)
            };
            let (conn, msg, copies) = (get(0), get(1), get(2));
            if copies > 1 {
                duplicates += u64::from(copies - 1);
                if examples.len() < 5 {
                    examples.push(format!("duplicate pb.{run}.{conn}.{msg} x{copies}"));
                }
            }
            match acked.get_mut(&(conn, msg)) {
                Some(seen) => *seen = true,
                None => {
                    unexpected += 1;
                    if examples.len() < 5 {
                        examples.push(format!(
                            "not acknowledged but delivered pb.{run}.{conn}.{msg}"
                        ));
                    }
                }
            }
        }
        let missing = acked.values().filter(|seen| !**seen).count();
        for ((conn, msg), _) in acked.iter().filter(|(_, seen)| !**seen).take(5) {
            examples.push(format!("missing pb.{run}.{conn}.{msg}"));
        }
        let corrupt = stats["corrupt"].as_u64().unwrap_or(0);
        // What the MTA's outbound side did: connections to the sink and TLS
        // handshakes (full or resumed) during this run.
        let total = control(ctl, "total", Duration::from_secs(10)).await?;
        let delta = |key: &str| {
            let before = sink_before
                .as_ref()
                .and_then(|b| b[key].as_u64())
                .unwrap_or(0);
            total[key]
                .as_u64()
                .map(|after| after.saturating_sub(before))
        };
        let last = stats["last"].as_f64();
        let deliver_secs = last.map(|l| l - start_epoch);
        ok &= missing == 0 && duplicates == 0 && unexpected == 0 && corrupt == 0;
        out["delivery"] = json!({
            "received": stats["received"],
            "unique": stats["unique"],
            "over_tls": stats["over_tls"],
            "missing": missing,
            "duplicates": duplicates,
            "unexpected": unexpected,
            "corrupt": corrupt,
            "problems": examples,
            "deliver_secs": deliver_secs,
            "delivered_per_sec": deliver_secs.filter(|s| *s > 0.0).map(|s| accepted as f64 / s),
            "exactly_once": missing == 0 && duplicates == 0 && unexpected == 0 && corrupt == 0,
            "sink_connections": delta("connections"),
            "sink_tls_handshakes": delta("tls_handshakes"),
            "sink_tls_resumed": delta("tls_resumed"),
            // The sink's CPU from before the first message to after the
            // last arrived (it serves only this run meanwhile).
            "sink_cpu_secs_per_1000": delta("cpu_micros")
                .map(|micros| per_thousand(micros as f64 / 1e6, accepted)),
        });
    }

    if let Some(w) = watch {
        // The MTA's work for these messages ends when its queue is empty.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut queue_left = 0;
        for _ in 0..3000 {
            queue_left = args.queue_dir.iter().map(|d| queue_files(d)).sum::<usize>();
            if queue_left == 0 || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let cpu = w.cpu_seconds() - cpu_before.unwrap_or(0.0);
        let peak = match sampler {
            Some(s) => s.finish().await,
            None => Default::default(),
        };
        let hwm = Watch::status_kib(w.leader, "VmHWM");
        out["mta"] = json!({
            "pid": w.leader,
            "cpu_secs": cpu,
            "cpu_secs_per_1000": per_thousand(cpu, accepted),
            "leader_vmhwm_kib": hwm,
            "peak_processes": peak.processes,
            "peak_threads": peak.threads,
            "peak_rss_sum_kib": peak.rss_kib,
            "peak_pss_sum_kib": peak.pss_kib,
            "queue_files_left": queue_left,
        });
    }
    println!("{out}");
    Ok(ok)
}
