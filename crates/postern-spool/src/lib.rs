//! Postern's durable mail spool: the only code that writes queue files.
//!
//! A spool is a directory with `tmp/`, `queue/`, `corrupt/` and `free/`
//! (all mode 0700, files 0600). Each accepted message is one file
//! `queue/<ID>`, written once and never modified while it has that name;
//! its per-recipient delivery state lives beside it in `queue/<ID>.state`,
//! replaced atomically after each attempt. A removed message's file is
//! renamed into `free/` and overwritten by a later message, so the file
//! system does not allocate an inode per message (see `pool.rs`). The format
//! is described for operators in `docs/queue-format.md`.
//!
//! # Guarantees
//!
//! - **No acknowledgement before durability.** A message is written while
//!   it arrives ([`Spool::create_message`], [`MessageWriter`]) into a file
//!   with no name in `queue/`; [`MessageWriter::commit`] (and
//!   [`Spool::store`], for a message in memory) returns `Ok` only after the
//!   file is fsync'd, named in `queue/`, and `queue/` itself is fsync'd
//!   (one directory fsync shared by all writers that arrive together; with
//!   [`SyncMode::Filesystem`], one `syncfs(2)` that does both). A
//!   crash at any moment loses no message that was acknowledged; an
//!   unacknowledged one is at most a leftover in `tmp/`, removed by the
//!   next [`Spool::open`].
//! - **Bounded memory.** Neither writing nor reading holds a message: the
//!   writer appends as bytes come, and [`Spool::load`] verifies the file
//!   and returns a [`MessageFile`] to read from.
//! - **Files check themselves.** Every file starts with a magic and version
//!   line and ends with a CRC32 and an `END` marker; the length is checked
//!   against the header. Truncation, bit flips, unknown versions and foreign
//!   files are detected, never trusted.
//! - **Damaged files are kept.** [`Spool::recover`] moves them to `corrupt/`
//!   with a `.reason` file next to them; the spool never deletes a file it
//!   cannot read.
//! - **No silent duplicate delivery.** A damaged state file is not replaced
//!   by "all pending": the message and its state go to `corrupt/` together,
//!   for an operator to decide. `remove` unlinks the message before its state.
//! - **Removals are durable soon, or now.** [`Spool::remove`] returns after
//!   the `queue/` fsync (an operator's delete must not come back);
//!   [`Spool::remove_delivered`] returns before it, and the next fsync —
//!   a store's, or the flush thread's within 20 ms — makes it durable: a
//!   machine crash in between delivers the message again, never loses it.
//! - **One writer.** [`Spool::open`] takes a lock on the directory; all
//!   methods take `&self` and may run on many threads at once. Queue ids are
//!   time-ordered, so `list` returns messages oldest first.
//!
//! All I/O is blocking `std::fs`; async callers use `spawn_blocking`.

mod body;
mod error;
mod format;
mod group_sync;
mod id;
mod pool;
mod spool;
mod sync_mode;
mod types;
mod writer;

pub use body::MessageFile;
pub use error::SpoolError;
pub use id::{InvalidQueueId, QueueId, QUEUE_ID_LEN};
pub use spool::Spool;
pub use sync_mode::{filesystem_sync_supported, is_own_filesystem, SyncMode};
pub use types::{
    DeliveryState, Envelope, QueuedEnvelope, QueuedMessage, RecipientState, RecoveryReport,
};
pub use writer::MessageWriter;

#[cfg(test)]
mod tests {
    /// The gateway shares one `Spool` across threads (`Arc<Spool>`).
    #[test]
    fn spool_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<crate::Spool>();
        check::<crate::SpoolError>();
    }
}
