//! Writing one message into the spool while it arrives.
//!
//! A [`MessageWriter`] holds a file that has no name in `queue/` yet: an
//! unnamed file (`O_TMPFILE`) in `queue/`, or `tmp/<ID>` where the kernel
//! or file system cannot do that. The header goes first with a zero SIZE,
//! the message bytes are appended as they come, and [`MessageWriter::commit`]
//! fills in the SIZE, appends the checksum trailer, fsyncs the file, gives
//! it its name in `queue/` and fsyncs `queue/`. Until then nothing in
//! `queue/` shows the message; dropping the writer discards it (an unnamed
//! file vanishes with its descriptor, a `tmp/` file is unlinked).
//!
//! Where `free/` has a file of a removed message, the writer overwrites that
//! one instead (see [`crate::pool`]): it is renamed into `queue/` at commit,
//! and an abandoned one goes back to the pool.

use std::fs::{self, File};
use std::io::{self, IoSlice, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::SpoolError;
use crate::format::MessageHeader;
use crate::group_sync::GroupSync;
use crate::id::QueueId;
use crate::pool::FilePool;

/// Attempts at finding a free name before giving up.
pub(crate) const NAME_ATTEMPTS: u32 = 16;

/// Where the file being written lives until it is committed.
#[derive(Debug)]
pub(crate) enum Place {
    /// `O_TMPFILE` in `queue/`: linked under a fresh id at commit.
    Unnamed,
    /// `tmp/<id>`, renamed to `queue/<id>` at commit.
    Tmp { id: QueueId, path: PathBuf },
    /// A recycled file `free/<name>`, renamed to `queue/<ID>` at commit;
    /// `old_len` is its length before, cut back to the new message's.
    Reused { path: PathBuf, old_len: u64 },
}

/// What a writer needs of its spool.
#[derive(Debug, Clone)]
pub(crate) struct Dirs {
    pub tmp: PathBuf,
    pub queue: PathBuf,
    pub queue_sync: Arc<GroupSync>,
    /// Set once unnamed files turned out not to be linkable here.
    pub unnamed_unsupported: Arc<AtomicBool>,
    /// Recycled files; `None` for a spool without `free/`.
    pub pool: Option<Arc<FilePool>>,
}

/// One message being stored; see the module documentation.
#[derive(Debug)]
pub struct MessageWriter {
    file: File,
    place: Place,
    dirs: Dirs,
    header: MessageHeader,
    header_written: bool,
    crc: crc32fast::Hasher,
    size: u64,
    committed: bool,
}

/// Header, message and trailer: the file's length once committed.
fn file_len(header: &MessageHeader, size: u64) -> u64 {
    (header.bytes().len() + crate::format::TRAILER_LEN) as u64 + size
}

impl MessageWriter {
    pub(crate) fn new(file: File, place: Place, dirs: Dirs, header: MessageHeader) -> Self {
        Self {
            file,
            place,
            dirs,
            header,
            header_written: false,
            crc: crc32fast::Hasher::new(),
            size: 0,
            committed: false,
        }
    }

    /// Message bytes stored so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append message bytes (the first call also writes the header).
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let result = if self.header_written {
            write_all_vectored(&mut self.file, &mut [IoSlice::new(bytes)])
        } else {
            write_all_vectored(
                &mut self.file,
                &mut [IoSlice::new(self.header.bytes()), IoSlice::new(bytes)],
            )
        };
        result.map_err(|e| SpoolError::io("write message in", self.location(), e))?;
        self.header_written = true;
        self.crc.update(bytes);
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Append `last` (maybe empty), finish the file and make it durable
    /// under a fresh id in `queue/`. Returns only after the file and
    /// `queue/` are fsync'd: then, and only then, the gateway may answer
    /// 250. On any error nothing is left in `queue/`.
    pub fn commit(mut self, last: &[u8]) -> Result<QueueId, SpoolError> {
        self.crc.update(last);
        self.size += last.len() as u64;
        let digits = self.header.set_size(self.size);
        let trailer = self.header.trailer(&self.crc);
        let location = self.location();
        let written = if self.header_written {
            write_all_vectored(
                &mut self.file,
                &mut [IoSlice::new(last), IoSlice::new(&trailer)],
            )
            .and_then(|()| {
                let at = self.header.size_offset() as u64;
                self.file.write_all_at(&digits, at)
            })
        } else {
            write_all_vectored(
                &mut self.file,
                &mut [
                    IoSlice::new(self.header.bytes()),
                    IoSlice::new(last),
                    IoSlice::new(&trailer),
                ],
            )
        };
        written.map_err(|e| SpoolError::io("write message in", &location, e))?;
        if let Place::Reused { old_len, .. } = &self.place {
            // The old message was longer: its end must not stay behind ours.
            let len = file_len(&self.header, self.size);
            if *old_len > len {
                self.file
                    .set_len(len)
                    .map_err(|e| SpoolError::io("truncate message in", &location, e))?;
            }
        }
        // With whole-filesystem rounds, the round after the rename below
        // writes this file's data too.
        if !self.dirs.queue_sync.covers_file_data() {
            if let Place::Reused { .. } = &self.place {
                // Data and length (fdatasync(2) flushes a size change, from
                // writing or ftruncate); the inode's times need not be durable.
                self.file
                    .sync_data()
                    .map_err(|e| SpoolError::io("fsync message in", &location, e))?;
            } else {
                self.file
                    .sync_all()
                    .map_err(|e| SpoolError::io("fsync message in", &location, e))?;
            }
        }
        let id = match &self.place {
            Place::Unnamed => self.link_unnamed()?,
            Place::Reused { path, .. } => rename_into_queue(path, &self.dirs.queue)?,
            Place::Tmp { id, path } => {
                let final_path = self.dirs.queue.join(id.as_str());
                fs::rename(path, &final_path)
                    .map_err(|e| SpoolError::io("rename into queue", path, e))?;
                id.clone()
            }
        };
        self.committed = true;
        let final_path = self.dirs.queue.join(id.as_str());
        if let Err(e) = self.dirs.queue_sync.sync() {
            // Not durable, so not acknowledged: take it back, or a client
            // retrying after our 451 would make a duplicate.
            let _ = fs::remove_file(&final_path);
            return Err(e);
        }
        Ok(id)
    }

    /// Give the unnamed file a name: a link never replaces an existing
    /// name, so a taken id just means another try. Linking by descriptor
    /// needs CAP_DAC_READ_SEARCH (AT_EMPTY_PATH); through /proc it needs
    /// nothing. Without /proc the finished file is copied to `tmp/` and
    /// renamed, and later messages go to `tmp/` from the start.
    fn link_unnamed(&mut self) -> Result<QueueId, SpoolError> {
        use rustix::fs::{linkat, AtFlags, CWD};
        use rustix::io::Errno;
        use std::os::fd::AsRawFd;

        let by_fd = format!("/proc/self/fd/{}", self.file.as_raw_fd());
        let mut last_err = None;
        for _ in 0..NAME_ATTEMPTS {
            let id = QueueId::generate();
            let final_path = self.dirs.queue.join(id.as_str());
            match linkat(
                CWD,
                by_fd.as_str(),
                CWD,
                &final_path,
                AtFlags::SYMLINK_FOLLOW,
            ) {
                Ok(()) => return Ok(id),
                Err(Errno::EXIST) => last_err = Some(Errno::EXIST),
                Err(
                    Errno::NOENT | Errno::ACCESS | Errno::PERM | Errno::XDEV | Errno::OPNOTSUPP,
                ) => {
                    self.dirs.unnamed_unsupported.store(true, Ordering::Relaxed);
                    return self.copy_to_tmp_and_rename();
                }
                Err(e) => return Err(SpoolError::io("link into queue", final_path, e.into())),
            }
        }
        let e = last_err.map_or_else(
            || io::Error::from(io::ErrorKind::AlreadyExists),
            io::Error::from,
        );
        Err(SpoolError::io(
            "find a free queue id in",
            &self.dirs.queue,
            e,
        ))
    }

    fn copy_to_tmp_and_rename(&mut self) -> Result<QueueId, SpoolError> {
        let (id, path, mut copy) = create_tmp_message(&self.dirs)?;
        let result = (|| {
            self.file
                .seek(SeekFrom::Start(0))
                .and_then(|_| io::copy(&mut &self.file, &mut copy))
                .map_err(|e| SpoolError::io("copy message to", &path, e))?;
            copy.sync_all()
                .map_err(|e| SpoolError::io("fsync", &path, e))?;
            let final_path = self.dirs.queue.join(id.as_str());
            fs::rename(&path, &final_path)
                .map_err(|e| SpoolError::io("rename into queue", &path, e))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&path);
        }
        result.map(|()| id)
    }

    fn location(&self) -> PathBuf {
        match &self.place {
            Place::Unnamed => self.dirs.queue.clone(),
            Place::Tmp { path, .. } | Place::Reused { path, .. } => path.clone(),
        }
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        // Not committed (aborted, or commit failed before the rename): the
        // `tmp/` file must go, a recycled one goes back to the pool; an
        // unnamed file goes with its descriptor.
        if self.committed {
            return;
        }
        match (&self.place, &self.dirs.pool) {
            (Place::Tmp { path, .. }, _) => {
                let _ = fs::remove_file(path);
            }
            (Place::Reused { path, .. }, Some(pool)) => pool.give_back(path),
            _ => {}
        }
    }
}

/// Rename `from` to `queue/<ID>` under a fresh id; a rename never replaces
/// an existing name, so a taken id just means another try.
fn rename_into_queue(
    from: &std::path::Path,
    queue: &std::path::Path,
) -> Result<QueueId, SpoolError> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    use rustix::io::Errno;

    for _ in 0..NAME_ATTEMPTS {
        let id = QueueId::generate();
        let to = queue.join(id.as_str());
        match renameat_with(CWD, from, CWD, &to, RenameFlags::NOREPLACE) {
            Ok(()) => return Ok(id),
            Err(Errno::EXIST) => continue,
            // No RENAME_NOREPLACE on this file system: a link never
            // replaces either.
            Err(Errno::INVAL | Errno::NOSYS) => match fs::hard_link(from, &to) {
                Ok(()) => {
                    fs::remove_file(from)
                        .map_err(|e| SpoolError::io("unlink reused file", from, e))?;
                    return Ok(id);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(SpoolError::io("link into queue", from, e)),
            },
            Err(e) => return Err(SpoolError::io("rename into queue", from, e.into())),
        }
    }
    Err(SpoolError::io(
        "find a free queue id in",
        queue,
        io::Error::from(io::ErrorKind::AlreadyExists),
    ))
}

/// Reserve a fresh id: `tmp/<ID>` created exclusively, and no `queue/<ID>`.
/// Holding `tmp/<ID>` keeps any other writer from taking the same id
/// until it is renamed into `queue/`.
pub(crate) fn create_tmp_message(dirs: &Dirs) -> Result<(QueueId, PathBuf, File), SpoolError> {
    let mut last_err = None;
    for _ in 0..NAME_ATTEMPTS {
        let id = QueueId::generate();
        let tmp_path = dirs.tmp.join(id.as_str());
        let file = match crate::spool::create_new(&tmp_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(SpoolError::io("create", tmp_path, e)),
        };
        match fs::symlink_metadata(dirs.queue.join(id.as_str())) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((id, tmp_path, file)),
            Ok(_) => last_err = Some(io::Error::from(io::ErrorKind::AlreadyExists)),
            Err(e) => last_err = Some(e),
        }
        drop(file);
        let _ = fs::remove_file(&tmp_path);
    }
    let e = last_err.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists));
    Err(SpoolError::io("find a free queue id in", &dirs.tmp, e))
}

/// Write every buffer, in as few `writev` calls as the kernel allows.
pub(crate) fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
