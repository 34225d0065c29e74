//! The control socket: how `postern queue retry|delete` reach a running
//! gateway (which holds the spool lock). A Unix socket in the data
//! directory, mode 0600: only the gateway's own user can use it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use postern_spool::QueueId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use super::runner::QueueRunner;

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("control.sock")
}

/// Serve control requests: one line in (`retry [ID]`, `delete ID`), one line out.
pub async fn serve(path: PathBuf, runner: Arc<QueueRunner>) {
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!("control socket {} unavailable: {e}", path.display());
            return;
        }
    };
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let runner = Arc::clone(&runner);
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut reader = tokio::io::BufReader::new(read.take(1024));
            let answer =
                match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line))
                    .await
                {
                    Ok(Ok(_)) => handle(&runner, line.trim()).await,
                    _ => Err("no request".into()),
                };
            let reply = match answer {
                Ok(text) => format!("ok {text}\n"),
                Err(text) => format!("error {text}\n"),
            };
            let _ = write.write_all(reply.as_bytes()).await;
        });
    }
}

async fn handle(runner: &QueueRunner, request: &str) -> Result<String, String> {
    let mut words = request.split_whitespace();
    let verb = words.next().unwrap_or_default();
    let id = words
        .next()
        .map(|w| w.parse::<QueueId>().map_err(|e| e.to_string()))
        .transpose()?;
    match (verb, id) {
        ("retry", id) => runner
            .retry(id)
            .await
            .map(|n| format!("{n} message(s) scheduled now")),
        ("delete", Some(id)) => runner
            .delete(id.clone())
            .await
            .map(|()| format!("{id} deleted")),
        _ => Err(format!("unknown request \"{request}\"")),
    }
}

/// Client side: send one request to the running gateway. `None` when no
/// gateway is listening.
pub fn request(data_dir: &Path, line: &str) -> Option<Result<String, String>> {
    let mut stream = UnixStream::connect(socket_path(data_dir)).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    if stream.write_all(format!("{line}\n").as_bytes()).is_err() {
        return Some(Err("control socket write failed".into()));
    }
    let mut reply = String::new();
    if BufReader::new(stream).read_line(&mut reply).is_err() {
        return Some(Err("no answer from the gateway".into()));
    }
    let reply = reply.trim();
    Some(match reply.split_once(' ') {
        Some(("ok", text)) => Ok(text.to_string()),
        Some(("error", text)) => Err(text.to_string()),
        _ => Err(format!("unexpected answer \"{reply}\"")),
    })
}
