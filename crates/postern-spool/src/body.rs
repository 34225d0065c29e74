//! The message bytes of a verified queue file, read from disk on demand.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use crate::pool::OpenGuard;

/// The message of a queued file: an open descriptor and where in the file
/// the message lies. The file was verified (checksum, length) when it was
/// opened, and queue files are never modified, so positional reads return
/// the verified bytes without holding them in memory.
///
/// While it exists, `Spool::remove` of its message unlinks the file instead
/// of recycling it, so the bytes cannot change under it.
#[derive(Debug)]
pub struct MessageFile {
    file: File,
    offset: u64,
    len: u64,
    _reading: OpenGuard,
}

impl MessageFile {
    pub(crate) fn new(file: File, offset: u64, len: u64, reading: OpenGuard) -> Self {
        Self {
            file,
            offset,
            len,
            _reading: reading,
        }
    }

    /// Message size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Read message bytes starting at `pos` (within the message) into
    /// `buf`; returns how many, 0 at the end of the message.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(pos);
        let n = usize::try_from(left).map_or(buf.len(), |left| left.min(buf.len()));
        let Some(target) = buf.get_mut(..n) else {
            return Ok(0);
        };
        if target.is_empty() {
            return Ok(0);
        }
        let at = self.offset.saturating_add(pos);
        self.file.read_exact_at(target, at)?;
        Ok(n)
    }

    /// The whole message in memory: for small messages and tests only.
    pub fn read_to_vec(&self) -> io::Result<Vec<u8>> {
        let len = usize::try_from(self.len)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "message too large"))?;
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, self.offset)?;
        Ok(buf)
    }

    /// The descriptor, and the message's offset and length in the file.
    /// The descriptor alone no longer keeps the file from being recycled:
    /// read it only while the message cannot be removed (the queue runner
    /// holds it in flight).
    pub fn into_parts(self) -> (File, u64, u64) {
        (self.file, self.offset, self.len)
    }
}
