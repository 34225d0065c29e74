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

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use postern_spool::{QueueId, Spool, SpoolError};

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
