//! The socket (plaintext or TLS) with its read buffer: writes and reply
//! reads under a deadline, QUIT.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use postern_proto::Reply;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::client::TlsStream;

use super::Timeouts;
use crate::classify::{FailureKind, Stage};

/// The socket, plaintext or TLS, as one `AsyncRead + AsyncWrite` (also
/// used by the benchmark's load generator).
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The socket with its read buffer (replies are parsed from the buffer).
pub(super) struct Io {
    pub(super) stream: Stream,
    pub(super) buf: Vec<u8>,
}

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 8 * 1024;

impl Io {
    pub(super) fn new(stream: Stream) -> Self {
        Self {
            stream,
            buf: Vec::with_capacity(1024),
        }
    }

    pub(super) fn into_plain(self) -> Option<TcpStream> {
        match self.stream {
            Stream::Plain(tcp) => Some(tcp),
            Stream::Tls(_) => None,
        }
    }

    pub(super) async fn write(
        &mut self,
        bytes: &[u8],
        limit: Duration,
        stage: Stage,
    ) -> Result<(), FailureKind> {
        let stream = &mut self.stream;
        match timeout(limit, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        {
            Err(_) => Err(FailureKind::Timeout(stage)),
            Ok(Err(_)) => Err(FailureKind::ConnectionLost(stage)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Read one complete reply within `limit`.
    pub(super) async fn read_reply(
        &mut self,
        limit: Duration,
        stage: Stage,
    ) -> Result<Reply, FailureKind> {
        let Io { stream, buf } = self;
        let read = async {
            let mut chunk = [0u8; READ_CHUNK];
            loop {
                match Reply::parse(buf) {
                    Ok(Some((reply, used))) => {
                        buf.drain(..used);
                        return Ok(reply);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        let context = match stage {
                            Stage::Greeting => "in the greeting".to_string(),
                            other => format!("in reply to {other}"),
                        };
                        return Err(FailureKind::Protocol(format!(
                            "invalid reply {context}: {e}"
                        )));
                    }
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return Err(FailureKind::ConnectionLost(stage)),
                    Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                }
            }
        };
        match timeout(limit, read).await {
            Err(_) => Err(FailureKind::Timeout(stage)),
            Ok(result) => result,
        }
    }

    pub(super) async fn command(
        &mut self,
        line: &str,
        limit: Duration,
        stage: Stage,
    ) -> Result<Reply, FailureKind> {
        self.write(line.as_bytes(), limit, stage).await?;
        self.read_reply(limit, stage).await
    }

    /// QUIT, wait briefly for the reply, close. Errors do not matter here.
    pub(super) async fn quit_quietly(&mut self, timeouts: &Timeouts) {
        let limit = timeouts.command.min(Duration::from_secs(5));
        if self.command("QUIT\r\n", limit, Stage::Quit).await.is_ok() {
            let _ = timeout(limit, self.stream.shutdown()).await;
        }
    }
}
