//! `spool_file`: reading queue files back from disk ([`Spool::load`],
//! [`Spool::load_envelope`]) — after a crash, a full disk, a bit flip or an
//! operator's edit, the bytes in `queue/` can be anything.
//!
//! Input: two bytes giving the length of a state file (0: none), the state
//! file `queue/<ID>.state`, then the message file `queue/<ID>`. They are
//! written into a private spool under the temporary directory (`/dev/shm`
//! when there is one) and read back.
//!
//! Invariants: nothing panics; `load` and `load_envelope` agree; a loaded
//! message has the size its envelope says, at least one recipient, and one
//! state per recipient, in envelope order.
//!
//! Then the file, whatever it holds, is removed — so it is recycled into
//! `free/` — and a new message (the input's first bytes) is stored: it is
//! written over that file, and must read back exactly, whatever length and
//! content the old file had.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use postern_spool::{Envelope, QueueId, Spool, SpoolError};

use crate::Input;

/// The queue id every input is stored under.
const ID: &str = "01HF3K5Q8M0ABCDE";

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let state_len = usize::from(input.u16());
    let state = input.take(state_len);
    let message = input.rest();

    // One spool per process; inputs are read one at a time.
    static SPOOL: OnceLock<Mutex<Option<(PathBuf, Spool)>>> = OnceLock::new();
    let lock = SPOOL.get_or_init(|| Mutex::new(open_spool()));
    let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    let Some((queue, spool)) = guard.as_ref() else {
        panic!("cannot create a spool directory for the spool_file target");
    };
    let id: QueueId = ID.parse().expect("queue id");
    let state_path = queue.join(format!("{ID}.state"));
    std::fs::write(queue.join(ID), message).expect("write message file");
    if state_len == 0 {
        let _ = std::fs::remove_file(&state_path);
    } else {
        std::fs::write(&state_path, state).expect("write state file");
    }

    let full = spool.load(&id);
    let envelope = spool.load_envelope(&id);
    match (&full, &envelope) {
        (Ok(m), Ok(e)) => {
            assert_eq!(&m.envelope, e);
            assert_eq!(m.body.len(), e.size, "size disagrees with the bytes");
            let bytes = m.body.read_to_vec().expect("read verified message");
            assert_eq!(bytes.len() as u64, e.size, "size disagrees with the bytes");
            assert!(!e.envelope.recipients.is_empty());
            let addresses: Vec<&String> = e.recipients.iter().map(|r| &r.address).collect();
            let expected: Vec<&String> = e.envelope.recipients.iter().collect();
            assert_eq!(addresses, expected, "state does not follow the envelope");
        }
        (Err(a), Err(b)) => assert_eq!(kind(a), kind(b), "{a} / {b}"),
        _ => panic!("load and load_envelope disagree: {full:?} / {envelope:?}"),
    }
    drop(full);
    recycle(spool, &id, &message[..message.len().min(8192)]);
}

/// Remove `id` (its file goes to `free/`), store `bytes` over a recycled
/// file, read it back, remove it again.
fn recycle(spool: &Spool, id: &QueueId, bytes: &[u8]) {
    spool.remove(id).expect("remove the fuzzed file");
    let envelope = Envelope {
        sender: "a@example.test".into(),
        recipients: vec!["b@example.test".into()],
        received_at: 1,
        client_addr: "192.0.2.1:25".into(),
        helo: "client.example.test".into(),
        tls: None,
        body: "8BITMIME".into(),
        smtputf8: false,
        message_id: None,
        requiretls: false,
        tls_required_no: false,
    };
    let new = spool
        .store(&envelope, bytes)
        .expect("store over a recycled file");
    let loaded = spool
        .load(&new)
        .expect("load a message stored over a recycled file");
    assert_eq!(loaded.envelope.envelope, envelope);
    let read = loaded.body.read_to_vec().expect("read it");
    assert_eq!(read, bytes, "a recycled file kept bytes of its old content");
    drop(loaded);
    spool.remove(&new).expect("remove it");
}

fn kind(error: &SpoolError) -> std::mem::Discriminant<SpoolError> {
    std::mem::discriminant(error)
}

/// The scratch spool of this process (remove it when done).
pub fn scratch_dir() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    base.join(format!("postern-fuzz-spool-{}", std::process::id()))
}

/// A spool in a fresh private directory; returns its `queue/` path.
fn open_spool() -> Option<(PathBuf, Spool)> {
    let dir = scratch_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let spool = Spool::open(&dir).ok()?;
    Some((dir.join("queue"), spool))
}
