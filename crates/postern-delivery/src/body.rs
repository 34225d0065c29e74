//! The message a delivery sends: its first bytes in memory, the rest read
//! from the queue file in bounded chunks while it is sent, so delivering a
//! large message does not hold it in memory.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Bytes kept in memory of a large message: its head (the header section,
/// for the SMTPUTF8 check and bounces).
pub const HEAD_BYTES: usize = 64 * 1024;
/// A message up to this size is read whole, in one read: no reads from
/// the file while it is sent. The runner has at most 64 messages in
/// flight, so this bounds delivery's message memory to 16 MiB.
pub const WHOLE_BYTES: usize = 256 * 1024;
/// Bytes read from the file at a time while sending.
pub const READ_CHUNK: usize = 64 * 1024;

/// A message to send: CRLF line ends, not dot-stuffed (as the spool keeps it).
#[derive(Debug, Clone)]
pub struct MessageBody {
    len: u64,
    eight_bit: bool,
    head: Vec<u8>,
    /// The bytes after `head`, when there are any.
    rest: Option<FileRange>,
}

#[derive(Debug, Clone)]
struct FileRange {
    file: Arc<File>,
    /// Where the bytes after `head` start in the file.
    offset: u64,
    len: u64,
}

impl MessageBody {
    /// A message held in memory (bounces, tests).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            len: bytes.len() as u64,
            eight_bit: bytes.iter().any(|b| *b >= 0x80),
            head: bytes,
            rest: None,
        }
    }

    /// The `len` bytes at `offset` of `file` (a verified queue file, never
    /// modified). Reads the head and scans the rest once for 8-bit bytes,
    /// in bounded chunks: blocking, call it from `spawn_blocking`.
    pub fn from_file(file: File, offset: u64, len: u64) -> io::Result<Self> {
        let head_len = match usize::try_from(len) {
            Ok(n) if n <= WHOLE_BYTES => n,
            _ => HEAD_BYTES,
        };
        let mut head = vec![0u8; head_len];
        file.read_exact_at(&mut head, offset)?;
        let mut eight_bit = head.iter().any(|b| *b >= 0x80);
        let rest = FileRange {
            file: Arc::new(file),
            offset: offset + head_len as u64,
            len: len - head_len as u64,
        };
        let mut pos = 0;
        while !eight_bit && pos < rest.len {
            let chunk = rest.read_blocking(pos, READ_CHUNK)?;
            eight_bit = chunk.iter().any(|b| *b >= 0x80);
            pos += chunk.len() as u64;
        }
        Ok(Self {
            len,
            eight_bit,
            head,
            rest: (rest.len > 0).then_some(rest),
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any byte is 8-bit (`BODY=8BITMIME`).
    pub fn has_8bit(&self) -> bool {
        self.eight_bit
    }

    /// The first bytes: the whole message when it has at most
    /// [`WHOLE_BYTES`], else [`HEAD_BYTES`] of it.
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The message in pieces of at most about [`READ_CHUNK`] bytes, in
    /// order: pass the last piece returned; `None` after the end.
    pub(crate) async fn next_piece(&self, pos: u64) -> io::Result<Option<Vec<u8>>> {
        let head_len = self.head.len() as u64;
        if pos < head_len {
            let start = usize::try_from(pos).unwrap_or(usize::MAX);
            let end = start.saturating_add(READ_CHUNK).min(self.head.len());
            return Ok(self.head.get(start..end).map(<[u8]>::to_vec));
        }
        let Some(rest) = &self.rest else {
            return Ok(None);
        };
        let at = pos - head_len;
        if at >= rest.len {
            return Ok(None);
        }
        let rest = rest.clone();
        let piece = tokio::task::spawn_blocking(move || rest.read_blocking(at, READ_CHUNK))
            .await
            .map_err(io::Error::other)??;
        Ok(Some(piece))
    }
}

impl FileRange {
    fn read_blocking(&self, pos: u64, max: usize) -> io::Result<Vec<u8>> {
        let left = self.len.saturating_sub(pos);
        let n = usize::try_from(left).map_or(max, |left| left.min(max));
        let mut buf = vec![0u8; n];
        self.file.read_exact_at(&mut buf, self.offset + pos)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file that is gone from the directory as soon as it is open.
    fn scratch(name: &str) -> File {
        let path = std::env::temp_dir().join(format!("postern-body-{}-{name}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    async fn collect(body: &MessageBody) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(piece) = body.next_piece(out.len() as u64).await.unwrap() {
            assert!(!piece.is_empty() && piece.len() <= READ_CHUNK);
            out.extend_from_slice(&piece);
        }
        out
    }

    #[tokio::test]
    async fn file_range_reads_back_in_bounded_pieces() {
        let message: Vec<u8> = (0..300_000u32).map(|i| (i % 127) as u8).collect();
        let mut file = scratch("a");
        file.write_all(b"HEADER").unwrap();
        file.write_all(&message).unwrap();
        file.write_all(b"TRAILER").unwrap();
        let body = MessageBody::from_file(file, 6, message.len() as u64).unwrap();
        assert_eq!(body.len(), message.len() as u64);
        assert_eq!(body.head().len(), HEAD_BYTES);
        assert!(!body.has_8bit());
        assert_eq!(collect(&body).await, message);

        let mut eight = message.clone();
        eight[299_999] = 0xc3;
        let mut file = scratch("b");
        file.write_all(&eight).unwrap();
        let body = MessageBody::from_file(file, 0, eight.len() as u64).unwrap();
        assert!(body.has_8bit(), "8-bit byte past the head is found");

        let mut file = scratch("c");
        file.write_all(&message[..200_000]).unwrap();
        let body = MessageBody::from_file(file, 0, 200_000).unwrap();
        assert_eq!(
            body.head(),
            &message[..200_000],
            "a small message is read whole"
        );
        assert_eq!(collect(&body).await, &message[..200_000]);

        let small = MessageBody::from_bytes(b"a\r\n".to_vec());
        assert_eq!(collect(&small).await, b"a\r\n");
        assert!(collect(&MessageBody::from_bytes(Vec::new()))
            .await
            .is_empty());
    }
}
