//! A minimal SMTP client for the load generator: connect (plaintext,
//! STARTTLS or implicit TLS), EHLO, pipelined MAIL/RCPT/DATA, QUIT.
//! Replies are parsed with Postern's own `postern_proto::Reply::parse`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use postern_delivery::client::Stream;
use postern_proto::Reply;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsConnector;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No TLS (STARTTLS is not used even when offered).
    Plain,
    /// STARTTLS after the first EHLO.
    Starttls,
    /// TLS from the first byte (RFC 8314).
    ImplicitTls,
}

pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
    pub pipelining: bool,
    pub tls: Option<TlsInfo>,
    limit: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub resumed: bool,
}

pub struct Options {
    pub target: SocketAddr,
    /// Connect from this address (bind before connect; the port is the
    /// kernel's choice). One source address to one listener gets at most
    /// the ephemeral port range (~28,000 ports here): more connections
    /// need more source addresses (`idle --sources`).
    pub source: Option<IpAddr>,
    pub mode: Mode,
    pub helo: String,
    pub tls: Option<Arc<ClientConfig>>,
    /// Each read, write, connect and handshake.
    pub limit: Duration,
    /// Just the greeting (a server at its process limit may never send one).
    pub greeting_limit: Duration,
}

async fn connect(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(target).await;
    };
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(target).await
}

async fn tls_wrap(tcp: TcpStream, config: &Arc<ClientConfig>, limit: Duration) -> Result<Stream> {
    let connector = TlsConnector::from(Arc::clone(config));
    let stream = timeout(limit, connector.connect(crate::tls::server_name(), tcp))
        .await
        .map_err(|_| anyhow!("TLS handshake timeout"))??;
    Ok(Stream::Tls(Box::new(stream)))
}

fn tls_info(stream: &Stream) -> Option<TlsInfo> {
    match stream {
        Stream::Plain(_) => None,
        Stream::Tls(s) => {
            let (_, conn) = s.get_ref();
            Some(TlsInfo {
                version: conn
                    .protocol_version()
                    .map_or("?".into(), |v| format!("{v:?}")),
                resumed: matches!(conn.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
            })
        }
    }
}

impl Client {
    /// Connect, read the greeting, EHLO (and STARTTLS + EHLO): ready for MAIL.
    pub async fn open(opts: &Options) -> Result<Client> {
        let tcp = timeout(opts.limit, connect(opts.target, opts.source))
            .await
            .map_err(|_| anyhow!("connect timeout"))??;
        tcp.set_nodelay(true)?;
        let tls_config = || {
            opts.tls
                .as_ref()
                .ok_or_else(|| anyhow!("TLS mode without a TLS configuration"))
        };
        let stream = match opts.mode {
            Mode::ImplicitTls => tls_wrap(tcp, tls_config()?, opts.limit).await?,
            _ => Stream::Plain(tcp),
        };
        let mut client = Client {
            stream,
            buf: Vec::with_capacity(1024),
            pipelining: false,
            tls: None,
            limit: opts.limit,
        };
        let greeting = client.reply_within(opts.greeting_limit).await?;
        if greeting.code != 220 {
            bail!("greeting: {}", one_line(&greeting));
        }
        client.ehlo(&opts.helo).await?;
        if opts.mode == Mode::Starttls {
            client.send(b"STARTTLS\r\n").await?;
            let r = client.reply().await?;
            if r.code != 220 {
                bail!("STARTTLS: {}", one_line(&r));
            }
            if !client.buf.is_empty() {
                bail!("data after the STARTTLS reply");
            }
            let Stream::Plain(tcp) = client.stream else {
                bail!("STARTTLS on a TLS stream");
            };
            client.stream = tls_wrap(tcp, tls_config()?, opts.limit).await?;
            client.ehlo(&opts.helo).await?;
        }
        client.tls = tls_info(&client.stream);
        Ok(client)
    }

    async fn ehlo(&mut self, helo: &str) -> Result<()> {
        self.send(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let r = self.reply().await?;
        if r.code != 250 {
            bail!("EHLO: {}", one_line(&r));
        }
        self.pipelining = r
            .lines
            .iter()
            .skip(1)
            .any(|l| l.eq_ignore_ascii_case("PIPELINING"));
        Ok(())
    }

    pub async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        timeout(self.limit, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| anyhow!("write timeout"))??;
        Ok(())
    }

    pub async fn reply(&mut self) -> Result<Reply> {
        self.reply_within(self.limit).await
    }

    async fn reply_within(&mut self, limit: Duration) -> Result<Reply> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some((reply, used)) =
                Reply::parse(&self.buf).map_err(|e| anyhow!("bad reply: {e}"))?
            {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| anyhow!("reply timeout"))??;
            if n == 0 {
                bail!("connection closed by the server");
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }

    /// NOOP round trip (is the connection still held?).
    pub async fn noop(&mut self) -> Result<()> {
        self.send(b"NOOP\r\n").await?;
        let r = self.reply().await?;
        if r.code != 250 {
            bail!("NOOP: {}", one_line(&r));
        }
        Ok(())
    }

    /// QUIT, read the 221 (briefly), close.
    pub async fn quit(mut self) {
        if self.send(b"QUIT\r\n").await.is_ok() {
            let _ = self.reply_within(Duration::from_secs(2)).await;
        }
        let _ = timeout(Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

pub fn one_line(r: &Reply) -> String {
    let mut s = r.code.to_string();
    if let Some(e) = r.enhanced {
        s.push_str(&format!(" {e}"));
    }
    if let Some(l) = r.lines.first() {
        s.push(' ');
        s.push_str(l);
    }
    s
}
