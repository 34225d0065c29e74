//! Spool behaviour on a real directory: durability, damage detection,
//! quarantine, state updates, concurrency.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use postern_spool::{DeliveryState, Envelope, QueueId, RecipientState, Spool, SpoolError};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn envelope() -> Envelope {
    Envelope {
        sender: "alice@example.org".into(),
        recipients: vec!["bob@example.net".into(), "carol@example.net".into()],
        received_at: 1_700_000_000,
        client_addr: "203.0.113.5:51234".into(),
        helo: "client.example.org".into(),
        tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
        body: "8BITMIME".into(),
        smtputf8: false,
        message_id: Some("<1@example.org>".into()),
        requiretls: false,
        tls_required_no: false,
    }
}

const MESSAGE: &[u8] = b"Subject: hello\r\nMessage-ID: <1@example.org>\r\n\r\nbody\r\n";

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn deferred(address: &str, attempts: u32) -> RecipientState {
    RecipientState {
        address: address.into(),
        state: DeliveryState::Deferred,
        attempts,
        next_attempt: Some(1_700_000_600),
        last_error: Some("mx.example.net[192.0.2.1]: 451 4.3.0 try again".into()),
    }
}

#[test]
fn store_load_round_trip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let binary: Vec<u8> = (0..=255u8).cycle().take(200_000).collect();
    let mut null_sender = envelope();
    null_sender.sender = String::new();
    null_sender.tls = None;
    null_sender.message_id = None;
    null_sender.smtputf8 = true;
    null_sender.recipients = vec!["dörte@exämple.de".into()];
    for (env, msg) in [
        (envelope(), MESSAGE),
        (envelope(), &b""[..]),
        (null_sender, &binary[..]),
    ] {
        let id = spool.store(&env, msg)?;
        let loaded = spool.load(&id)?;
        assert_eq!(loaded.body.read_to_vec()?, msg);
        assert_eq!(loaded.body.len(), msg.len() as u64);
        assert_eq!(loaded.envelope.id, id);
        assert_eq!(loaded.envelope.envelope, env);
        assert_eq!(loaded.envelope.size, msg.len() as u64);
        let pending: Vec<RecipientState> =
            env.recipients.iter().map(RecipientState::pending).collect();
        assert_eq!(loaded.envelope.recipients, pending);
        assert_eq!(spool.load_envelope(&id)?, loaded.envelope);
    }
    Ok(())
}

#[test]
fn store_returns_after_file_is_complete_in_queue() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;

    // Visible under its id, complete, in the documented format.
    let bytes = fs::read(dir.path().join("queue").join(id.as_str()))?;
    let json = serde_json::to_string(&envelope())?;
    let mut expected =
        format!("POSTERN-SPOOL 2\n{json}\nSIZE {:020}\n", MESSAGE.len()).into_bytes();
    expected.extend_from_slice(MESSAGE);
    let crc = crc32fast::hash(&expected);
    expected.extend_from_slice(format!("\nEND {crc:08x}\n").as_bytes());
    assert_eq!(bytes, expected);

    // Nothing left behind, private modes.
    assert!(names(&dir.path().join("tmp")).is_empty());
    let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
    assert_eq!(mode(&dir.path().join("queue").join(id.as_str()))?, 0o600);
    for sub in ["tmp", "queue", "corrupt", "free"] {
        assert_eq!(mode(&dir.path().join(sub))?, 0o700, "{sub}");
    }
    Ok(())
}

#[test]
fn store_refuses_envelope_without_recipients() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let mut env = envelope();
    env.recipients.clear();
    assert!(matches!(
        spool.store(&env, MESSAGE),
        Err(SpoolError::InvalidEnvelope { .. })
    ));
    assert!(names(&dir.path().join("queue")).is_empty());
    assert!(names(&dir.path().join("tmp")).is_empty());
    Ok(())
}

#[test]
fn open_tightens_modes_and_removes_tmp_leftovers() -> TestResult {
    let dir = tempfile::tempdir()?;
    drop(Spool::open(dir.path())?);
    fs::set_permissions(dir.path().join("queue"), fs::Permissions::from_mode(0o755))?;
    fs::write(
        dir.path().join("tmp").join("01JZ3K5Q8M0ABCDE"),
        b"half a message",
    )?;
    fs::write(
        dir.path()
            .join("tmp")
            .join("01JZ3K5Q8M0ABCDE.state.0000abcd"),
        b"half",
    )?;
    let spool = Spool::open(dir.path())?;
    assert_eq!(spool.tmp_files_removed(), 2);
    assert!(names(&dir.path().join("tmp")).is_empty());
    let mode = fs::metadata(dir.path().join("queue"))?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(spool.list()?.is_empty());
    Ok(())
}

#[test]
fn one_writer_per_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    assert!(matches!(
        Spool::open(dir.path()),
        Err(SpoolError::Locked { .. })
    ));

    // A read-only view works beside the writer and refuses writes.
    let ro = Spool::open_read_only(dir.path())?;
    assert_eq!(ro.list()?, vec![id.clone()]);
    assert_eq!(ro.load(&id)?.body.read_to_vec()?, MESSAGE);
    assert!(matches!(
        ro.store(&envelope(), MESSAGE),
        Err(SpoolError::ReadOnly { .. })
    ));
    assert!(matches!(ro.remove(&id), Err(SpoolError::ReadOnly { .. })));
    assert!(matches!(ro.recover(), Err(SpoolError::ReadOnly { .. })));

    drop(spool);
    let again = Spool::open(dir.path())?;
    assert_eq!(again.list()?, vec![id]);
    Ok(())
}

#[test]
fn list_is_oldest_first_and_skips_state_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let mut stored = Vec::new();
    for i in 0..20 {
        stored.push(spool.store(&envelope(), format!("message {i}\r\n").as_bytes())?);
    }
    spool.update_state(
        &stored[3],
        &[
            deferred("bob@example.net", 1),
            RecipientState::pending("carol@example.net"),
        ],
    )?;
    assert_eq!(spool.list()?, stored);
    Ok(())
}

#[test]
fn concurrent_stores_get_unique_time_ordered_ids() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Arc::new(Spool::open(dir.path())?);
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let spool = Arc::clone(&spool);
            thread::spawn(move || {
                (0..25)
                    .map(|i| {
                        spool
                            .store(
                                &envelope(),
                                format!("thread {t} message {i}\r\n").as_bytes(),
                            )
                            .expect("store")
                    })
                    .collect::<Vec<QueueId>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        let ids = t.join().map_err(|_| "store thread panicked")?;
        // Each thread's later message has a later id.
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        all.extend(ids);
    }
    let unique: HashSet<&QueueId> = all.iter().collect();
    assert_eq!(unique.len(), 150);
    all.sort();
    assert_eq!(spool.list()?, all);
    for id in &all {
        spool.load(id)?;
    }
    Ok(())
}

/// Put `bytes` in `queue/<name>` as if a crash or a disk had left them there.
fn plant(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join("queue").join(name), bytes).expect("plant file");
}

/// Recover must move exactly `name` to corrupt/ with its bytes intact.
fn assert_quarantined(spool: &Spool, dir: &Path, name: &str, bytes: &[u8]) -> String {
    let report = spool.recover().expect("recover");
    assert!(report.ok.is_empty(), "{name}: {report:?}");
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert_eq!(report.quarantined[0].0, name);
    assert!(!dir.join("queue").join(name).exists());
    assert_eq!(
        fs::read(dir.join("corrupt").join(name)).expect("kept in corrupt/"),
        bytes
    );
    let reason = fs::read_to_string(dir.join("corrupt").join(format!("{name}.reason")))
        .expect("reason file");
    assert!(reason.contains(&report.quarantined[0].1), "{reason}");
    report.quarantined[0].1.clone()
}

fn clear_corrupt(dir: &Path) {
    for n in names(&dir.join("corrupt")) {
        fs::remove_file(dir.join("corrupt").join(n)).expect("clean corrupt/");
    }
}

#[test]
fn truncation_at_every_offset_is_quarantined_never_deleted() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let good = fs::read(dir.path().join("queue").join(id.as_str()))?;
    for len in 0..good.len() {
        plant(dir.path(), id.as_str(), &good[..len]);
        assert!(spool.load(&id).is_err());
        assert_quarantined(&spool, dir.path(), id.as_str(), &good[..len]);
        clear_corrupt(dir.path());
    }
    // And the whole file is still fine.
    plant(dir.path(), id.as_str(), &good);
    assert_eq!(spool.recover()?.ok, vec![id]);
    Ok(())
}

#[test]
fn flipped_bytes_are_detected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let good = fs::read(dir.path().join("queue").join(id.as_str()))?;
    // Every byte for load; a sample through recover (each costs fsyncs).
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        plant(dir.path(), id.as_str(), &bad);
        assert!(
            matches!(spool.load(&id), Err(SpoolError::Corrupt { .. })),
            "flip at {i} accepted"
        );
        if i % 17 == 0 || i + 1 == good.len() {
            assert_quarantined(&spool, dir.path(), id.as_str(), &bad);
            clear_corrupt(dir.path());
        }
    }
    // A flip inside the message bytes is reported as a checksum mismatch.
    let mut bad = good.clone();
    let body_at = good.len() - 20;
    bad[body_at] ^= 0x01;
    plant(dir.path(), id.as_str(), &bad);
    let reason = assert_quarantined(&spool, dir.path(), id.as_str(), &bad);
    assert!(reason.contains("checksum mismatch"), "{reason}");
    Ok(())
}

#[test]
fn unknown_version_is_quarantined() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let good = fs::read(dir.path().join("queue").join(id.as_str()))?;
    let v4 = [b"POSTERN-SPOOL 4".as_slice(), &good[15..]].concat();
    plant(dir.path(), id.as_str(), &v4);
    let reason = assert_quarantined(&spool, dir.path(), id.as_str(), &v4);
    assert!(reason.contains("unknown format version \"4\""), "{reason}");
    Ok(())
}

#[test]
fn unparsable_envelope_with_valid_checksum_is_quarantined() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let mut bytes = b"POSTERN-SPOOL 1\n{\"sender\":42}\nSIZE 2\nhi".to_vec();
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(format!("\nEND {crc:08x}\n").as_bytes());
    let name = "01JZ3K5Q8M0ABCDE";
    plant(dir.path(), name, &bytes);
    let reason = assert_quarantined(&spool, dir.path(), name, &bytes);
    assert!(reason.contains("unparsable envelope"), "{reason}");
    Ok(())
}

#[test]
fn bad_names_and_orphan_states_are_quarantined() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    plant(dir.path(), "notes.txt", b"operator scribbles");
    plant(dir.path(), "01JZ3K5Q8M0ABCDE.state", b"orphan");
    assert_eq!(spool.list()?, vec![id.clone()]);
    let report = spool.recover()?;
    assert_eq!(report.ok, vec![id]);
    let moved: Vec<&str> = report.quarantined.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(moved, ["01JZ3K5Q8M0ABCDE.state", "notes.txt"]);
    assert_eq!(
        fs::read(dir.path().join("corrupt").join("notes.txt"))?,
        b"operator scribbles"
    );
    assert_eq!(
        fs::read(dir.path().join("corrupt").join("01JZ3K5Q8M0ABCDE.state"))?,
        b"orphan"
    );
    // A second pass finds nothing new.
    assert!(spool.recover()?.quarantined.is_empty());
    Ok(())
}

#[test]
fn update_state_round_trip() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let first = vec![
        RecipientState {
            address: "bob@example.net".into(),
            state: DeliveryState::Delivered,
            attempts: 1,
            next_attempt: None,
            last_error: None,
        },
        deferred("carol@example.net", 1),
    ];
    spool.update_state(&id, &first)?;
    assert_eq!(spool.load_envelope(&id)?.recipients, first);
    let mut second = first.clone();
    second[1].state = DeliveryState::Bounced;
    second[1].attempts = 2;
    second[1].last_error = Some("mx.example.net[192.0.2.1]: 550 5.1.1 no such user".into());
    spool.update_state(&id, &second)?;
    let loaded = spool.load(&id)?;
    assert_eq!(loaded.envelope.recipients, second);
    assert_eq!(loaded.body.read_to_vec()?, MESSAGE);
    assert!(names(&dir.path().join("tmp")).is_empty());
    let state_file = fs::read_to_string(dir.path().join("queue").join(format!("{id}.state")))?;
    assert!(state_file.starts_with("POSTERN-STATE 1\n"));
    assert!(state_file.contains("\"state\":\"bounced\""));
    // The message file itself never changes.
    assert_eq!(spool.recover()?.ok, vec![id]);
    Ok(())
}

#[test]
fn update_state_refuses_mismatch_and_unknown_ids() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let wrong_count = [RecipientState::pending("bob@example.net")];
    let wrong_order = [
        RecipientState::pending("carol@example.net"),
        RecipientState::pending("bob@example.net"),
    ];
    for bad in [&wrong_count[..], &wrong_order[..]] {
        assert!(matches!(
            spool.update_state(&id, bad),
            Err(SpoolError::StateMismatch { .. })
        ));
    }
    let missing: QueueId = "01JZ3K5Q8M0ABCDE".parse()?;
    assert!(matches!(
        spool.update_state(&missing, &wrong_count),
        Err(SpoolError::NotFound { .. })
    ));
    assert!(!dir
        .path()
        .join("queue")
        .join(format!("{id}.state"))
        .exists());
    assert!(!dir
        .path()
        .join("queue")
        .join(format!("{missing}.state"))
        .exists());
    Ok(())
}

#[test]
fn update_state_is_atomic_for_readers() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Arc::new(Spool::open(dir.path())?);
    let id = spool.store(&envelope(), MESSAGE)?;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (spool, id, done) = (Arc::clone(&spool), id.clone(), Arc::clone(&done));
        thread::spawn(move || {
            let mut reads = 0u32;
            while !done.load(Ordering::Relaxed) {
                let env = spool
                    .load_envelope(&id)
                    .expect("every read sees a whole state");
                let attempts = env.recipients[0].attempts;
                assert_eq!(env.recipients[1].attempts, attempts);
                reads += 1;
            }
            reads
        })
    };
    for attempts in 1..=40 {
        spool.update_state(
            &id,
            &[
                deferred("bob@example.net", attempts),
                deferred("carol@example.net", attempts),
            ],
        )?;
    }
    done.store(true, Ordering::Relaxed);
    let reads = reader.join().map_err(|_| "reader panicked")?;
    assert!(reads > 0);
    assert_eq!(spool.load_envelope(&id)?.recipients[0].attempts, 40);
    Ok(())
}

#[test]
fn interrupted_update_keeps_previous_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let before = [
        deferred("bob@example.net", 1),
        deferred("carol@example.net", 1),
    ];
    spool.update_state(&id, &before)?;
    drop(spool);
    // A crash during the next update leaves a partial file in tmp/ only.
    fs::write(
        dir.path().join("tmp").join(format!("{id}.state.0badf00d")),
        b"POSTERN-STATE 1\n[{\"addr",
    )?;
    let spool = Spool::open(dir.path())?;
    assert_eq!(spool.tmp_files_removed(), 1);
    assert_eq!(spool.load_envelope(&id)?.recipients, before);
    Ok(())
}

#[test]
fn damaged_state_quarantines_message_with_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let keep = spool.store(&envelope(), MESSAGE)?;
    spool.update_state(
        &id,
        &[
            deferred("bob@example.net", 1),
            deferred("carol@example.net", 1),
        ],
    )?;
    let state_path = dir.path().join("queue").join(format!("{id}.state"));
    let mut state = fs::read(&state_path)?;
    let at = state.len() / 2;
    state[at] ^= 0x02;
    fs::write(&state_path, &state)?;

    assert!(matches!(spool.load(&id), Err(SpoolError::Corrupt { .. })));
    let report = spool.recover()?;
    assert_eq!(report.ok, vec![keep]);
    assert_eq!(report.quarantined.len(), 1);
    assert_eq!(report.quarantined[0].0, id.as_str());
    assert!(
        report.quarantined[0].1.starts_with("state file damaged"),
        "{report:?}"
    );
    let corrupt = dir.path().join("corrupt");
    assert!(corrupt.join(id.as_str()).exists());
    assert_eq!(fs::read(corrupt.join(format!("{id}.state")))?, state);
    assert!(corrupt.join(format!("{id}.reason")).exists());
    assert!(!state_path.exists());
    Ok(())
}

#[test]
fn remove_deletes_message_and_state() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let other = spool.store(&envelope(), MESSAGE)?;
    spool.update_state(
        &id,
        &[
            deferred("bob@example.net", 1),
            deferred("carol@example.net", 1),
        ],
    )?;
    spool.remove(&id)?;
    assert_eq!(names(&dir.path().join("queue")), vec![other.to_string()]);
    assert!(matches!(spool.load(&id), Err(SpoolError::NotFound { .. })));
    assert!(matches!(
        spool.remove(&id),
        Err(SpoolError::NotFound { .. })
    ));
    assert_eq!(spool.list()?, vec![other]);
    Ok(())
}

#[test]
fn quarantine_moves_both_and_never_overwrites() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    spool.update_state(
        &id,
        &[
            deferred("bob@example.net", 1),
            deferred("carol@example.net", 1),
        ],
    )?;
    let original = fs::read(dir.path().join("queue").join(id.as_str()))?;
    spool.quarantine(&id, "operator: suspicious\nattachment")?;
    assert!(spool.list()?.is_empty());
    let corrupt = dir.path().join("corrupt");
    assert_eq!(
        names(&corrupt),
        [
            id.to_string(),
            format!("{id}.reason"),
            format!("{id}.state")
        ]
    );
    let reason = fs::read_to_string(corrupt.join(format!("{id}.reason")))?;
    assert!(
        reason.ends_with(&format!("queue/{id}: operator: suspicious attachment\n")),
        "{reason}"
    );

    // The operator moves it back; quarantining again keeps both copies.
    fs::rename(
        corrupt.join(id.as_str()),
        dir.path().join("queue").join(id.as_str()),
    )?;
    spool.quarantine(&id, "again")?;
    assert_eq!(fs::read(corrupt.join(format!("{id}.1")))?, original);
    assert!(corrupt.join(format!("{id}.1.reason")).exists());
    assert!(corrupt.join(format!("{id}.state")).exists());

    assert!(matches!(
        spool.quarantine(&id, "gone"),
        Err(SpoolError::NotFound { .. })
    ));
    Ok(())
}

#[test]
fn errors_name_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let path = dir.path().join("queue").join(id.as_str());
    let good = fs::read(&path)?;
    fs::write(&path, &good[..good.len() - 3])?;
    let err = spool.load(&id).err().ok_or("truncated file loaded")?;
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("truncated"), "{text}");
    Ok(())
}

/// A queue file as the previous release (format version 1) wrote it.
fn version_1_file(envelope: &Envelope, message: &[u8]) -> Vec<u8> {
    let json = serde_json::to_string(envelope).expect("json");
    let mut bytes = format!("POSTERN-SPOOL 1\n{json}\nSIZE {}\n", message.len()).into_bytes();
    bytes.extend_from_slice(message);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(format!("\nEND {crc:08x}\n").as_bytes());
    bytes
}

#[test]
fn version_1_files_still_load() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let name = "01JZ3K5Q8M0ABCDE";
    plant(dir.path(), name, &version_1_file(&envelope(), MESSAGE));
    let report = spool.recover()?;
    assert!(report.quarantined.is_empty(), "{report:?}");
    let id: QueueId = name.parse()?;
    assert_eq!(report.ok, vec![id.clone()]);
    let loaded = spool.load(&id)?;
    assert_eq!(loaded.envelope.envelope, envelope());
    assert_eq!(loaded.envelope.size, MESSAGE.len() as u64);
    assert_eq!(loaded.body.read_to_vec()?, MESSAGE);
    // Its state is written as usual, and a damaged version-1 file is
    // still caught.
    let states: Vec<RecipientState> = vec![
        deferred("bob@example.net", 1),
        deferred("carol@example.net", 1),
    ];
    spool.update_state(&id, &states)?;
    assert_eq!(spool.load_envelope(&id)?.recipients, states);
    let mut bad = version_1_file(&envelope(), MESSAGE);
    let at = bad.len() - 20;
    bad[at] ^= 0x01;
    let other = "01JZ3K5Q8M0ABCDF";
    plant(dir.path(), other, &bad);
    let report = spool.recover()?;
    assert_eq!(report.quarantined.len(), 1, "{report:?}");
    assert!(
        report.quarantined[0].1.contains("checksum mismatch"),
        "{report:?}"
    );
    Ok(())
}

#[test]
fn streamed_message_is_stored_like_one_in_memory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let message: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let whole = spool.store(&envelope(), &message)?;
    let mut writer = spool.create_message(&envelope())?;
    // Before the commit, nothing in queue/ or tmp/ shows it.
    for piece in message[..2_900_000].chunks(65_536) {
        writer.write(piece)?;
    }
    assert_eq!(writer.size(), 2_900_000);
    assert_eq!(names(&dir.path().join("queue")), vec![whole.to_string()]);
    assert!(names(&dir.path().join("tmp")).is_empty());
    let streamed = writer.commit(&message[2_900_000..])?;
    let read = |id: &QueueId| fs::read(dir.path().join("queue").join(id.as_str()));
    assert_eq!(read(&whole)?, read(&streamed)?, "same bytes either way");
    let loaded = spool.load(&streamed)?;
    assert_eq!(loaded.body.len(), message.len() as u64);
    let mut buf = vec![0u8; 100];
    assert_eq!(loaded.body.read_at(2_999_950, &mut buf)?, 50);
    assert_eq!(&buf[..50], &message[2_999_950..]);
    assert_eq!(loaded.body.read_at(3_000_000, &mut buf)?, 0);
    assert_eq!(loaded.body.read_to_vec()?, message);
    Ok(())
}

#[test]
fn abandoned_writer_leaves_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let mut writer = spool.create_message(&envelope())?;
    writer.write(&vec![b'x'; 1 << 20])?;
    drop(writer);
    assert!(names(&dir.path().join("queue")).is_empty());
    assert!(names(&dir.path().join("tmp")).is_empty());
    assert!(spool.list()?.is_empty());
    Ok(())
}

/// A version-2 file exactly as the previous release wrote it (commit
/// 8617667, `Spool::store` of `envelope()` and `MESSAGE`).
const VERSION_2_FILE: &[u8] = include_bytes!("data/version-2.msg");

#[test]
fn version_2_file_of_the_previous_release_loads_byte_for_byte() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let name = "01JZ3K5Q8M0ABCDE";
    plant(dir.path(), name, VERSION_2_FILE);
    let report = spool.recover()?;
    assert!(report.quarantined.is_empty(), "{report:?}");
    let id: QueueId = name.parse()?;
    let loaded = spool.load(&id)?;
    assert_eq!(loaded.envelope.envelope, envelope());
    assert!(!loaded.envelope.envelope.requiretls);
    assert!(!loaded.envelope.envelope.tls_required_no);
    assert_eq!(loaded.body.read_to_vec()?, MESSAGE);
    // Without flags this release still writes exactly that file, so a
    // rollback to the previous release keeps reading today's queue.
    let written = spool.store(&envelope(), MESSAGE)?;
    assert_eq!(
        fs::read(dir.path().join("queue").join(written.as_str()))?,
        VERSION_2_FILE
    );
    Ok(())
}

#[test]
fn flags_are_written_as_version_3_and_read_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    for (requiretls, tls_required_no) in [(true, false), (false, true)] {
        let flagged = Envelope {
            requiretls,
            tls_required_no,
            ..envelope()
        };
        let id = spool.store(&flagged, MESSAGE)?;
        let bytes = fs::read(dir.path().join("queue").join(id.as_str()))?;
        assert!(
            bytes.starts_with(b"POSTERN-SPOOL 3\n"),
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
        let loaded = spool.load(&id)?;
        assert_eq!(loaded.envelope.envelope, flagged);
        assert_eq!(loaded.body.read_to_vec()?, MESSAGE);
        // Streamed like a large message: the same file.
        let mut writer = spool.create_message(&flagged)?;
        writer.write(&MESSAGE[..10])?;
        let streamed = writer.commit(&MESSAGE[10..])?;
        assert_eq!(spool.load(&streamed)?.envelope.envelope, flagged);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Recycled files (`free/`): no new inode per message once messages are removed.

fn inode(path: &Path) -> u64 {
    fs::metadata(path).expect("stat").ino()
}

/// The expected file for `message`, as `store_returns_after_file_is_complete_in_queue` builds it.
fn expected_file(message: &[u8]) -> Vec<u8> {
    let json = serde_json::to_string(&envelope()).expect("json");
    let mut expected =
        format!("POSTERN-SPOOL 2\n{json}\nSIZE {:020}\n", message.len()).into_bytes();
    expected.extend_from_slice(message);
    let crc = crc32fast::hash(&expected);
    expected.extend_from_slice(format!("\nEND {crc:08x}\n").as_bytes());
    expected
}

#[test]
fn removed_files_are_overwritten_by_the_next_messages() -> TestResult {
    let dir = tempfile::tempdir()?;
    let queue = dir.path().join("queue");
    let spool = Spool::open(dir.path())?;
    let long = vec![b'L'; 300_000];
    let first = spool.store(&envelope(), &long)?;
    let first_ino = inode(&queue.join(first.as_str()));
    spool.remove(&first)?;
    assert!(names(&queue).is_empty());
    assert_eq!(names(&dir.path().join("free")).len(), 1);
    assert_eq!(spool.free_files(), 1);

    // Shorter than the file it reuses: cut to its exact length.
    let second = spool.store(&envelope(), MESSAGE)?;
    let path = queue.join(second.as_str());
    assert_eq!(inode(&path), first_ino, "the inode was not reused");
    assert_eq!(fs::read(&path)?, expected_file(MESSAGE));
    assert_eq!(spool.load(&second)?.body.read_to_vec()?, MESSAGE);
    assert!(names(&dir.path().join("free")).is_empty());
    assert_eq!(fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);

    // Longer than the file it reuses, streamed.
    spool.remove(&second)?;
    let mut writer = spool.create_message(&envelope())?;
    for _ in 0..3 {
        writer.write(&long)?;
    }
    let third = writer.commit(b"end\r\n")?;
    let path = queue.join(third.as_str());
    assert_eq!(inode(&path), first_ino);
    let mut whole = [long.as_slice(), &long, &long, b"end\r\n"].concat();
    assert_eq!(fs::read(&path)?, expected_file(&whole));
    assert_eq!(spool.load(&third)?.body.read_to_vec()?, whole);
    whole.clear();

    // Removed for good: the old id is gone even though its inode lives on.
    assert!(matches!(
        spool.load(&first),
        Err(SpoolError::NotFound { .. })
    ));
    assert!(matches!(
        spool.load(&second),
        Err(SpoolError::NotFound { .. })
    ));
    Ok(())
}

/// A delivered message's removal does not wait for the `queue/` fsync: it
/// is gone at once, and its file is recycled once a round (here the flush
/// thread's, as nothing else is stored) has made the removal durable.
#[test]
fn a_delivered_message_goes_at_once_and_its_file_is_recycled_after_the_flush() -> TestResult {
    let dir = tempfile::tempdir()?;
    let queue = dir.path().join("queue");
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let ino = inode(&queue.join(id.as_str()));
    spool.remove_delivered(&id)?;
    assert!(names(&queue).is_empty());
    assert!(matches!(spool.load(&id), Err(SpoolError::NotFound { .. })));
    assert!(matches!(
        spool.remove_delivered(&id),
        Err(SpoolError::NotFound { .. })
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while spool.free_files() == 0 {
        assert!(std::time::Instant::now() < deadline, "never recycled");
        thread::sleep(std::time::Duration::from_millis(5));
    }
    let next = spool.store(&envelope(), b"the next one\r\n")?;
    assert_eq!(inode(&queue.join(next.as_str())), ino);
    assert_eq!(spool.load(&next)?.body.read_to_vec()?, b"the next one\r\n");
    Ok(())
}

#[test]
fn an_abandoned_message_gives_its_recycled_file_back() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    spool.remove(&id)?;
    let ino = inode(
        &dir.path()
            .join("free")
            .join(&names(&dir.path().join("free"))[0]),
    );
    let mut writer = spool.create_message(&envelope())?;
    writer.write(&vec![b'x'; 1 << 20])?;
    assert_eq!(spool.free_files(), 0);
    drop(writer);
    assert!(names(&dir.path().join("queue")).is_empty());
    assert_eq!(spool.free_files(), 1);
    let next = spool.store(&envelope(), MESSAGE)?;
    assert_eq!(inode(&dir.path().join("queue").join(next.as_str())), ino);
    assert_eq!(spool.load(&next)?.body.read_to_vec()?, MESSAGE);
    Ok(())
}

#[test]
fn free_files_survive_a_restart_and_large_ones_are_not_kept() -> TestResult {
    let dir = tempfile::tempdir()?;
    let free = dir.path().join("free");
    {
        let spool = Spool::open(dir.path())?;
        let small = spool.store(&envelope(), MESSAGE)?;
        let large = spool.store(&envelope(), &vec![b'x'; 2 << 20])?;
        spool.remove(&small)?;
        spool.remove(&large)?;
        assert_eq!(names(&free).len(), 1, "a 2 MiB file is unlinked, not kept");
    }
    let ino = inode(&free.join(&names(&free)[0]));
    let spool = Spool::open(dir.path())?;
    assert_eq!((spool.free_files(), spool.free_files_skipped()), (1, 0));
    let id = spool.store(&envelope(), MESSAGE)?;
    assert_eq!(inode(&dir.path().join("queue").join(id.as_str())), ino);
    Ok(())
}

/// What a rename torn by a machine crash on a journal-less file system can
/// leave: the same inode named in `free/` and in `queue/`. Writing into it
/// would overwrite a queued message, so the free name is never used.
#[test]
fn a_free_name_of_a_queued_file_is_left_alone() -> TestResult {
    let dir = tempfile::tempdir()?;
    let id = {
        let spool = Spool::open(dir.path())?;
        spool.store(&envelope(), MESSAGE)?
    };
    let queued = dir.path().join("queue").join(id.as_str());
    fs::hard_link(&queued, dir.path().join("free").join("00000000000000aa"))?;
    let spool = Spool::open(dir.path())?;
    assert_eq!((spool.free_files(), spool.free_files_skipped()), (0, 1));
    let other = spool.store(&envelope(), b"another message\r\n")?;
    assert_ne!(
        inode(&dir.path().join("queue").join(other.as_str())),
        inode(&queued)
    );
    assert_eq!(spool.recover()?.ok, vec![id.clone(), other]);
    assert_eq!(spool.load(&id)?.body.read_to_vec()?, MESSAGE);
    Ok(())
}

/// A spool of the previous release has no `free/`: it is created, and the
/// old files load and are recycled like new ones.
#[test]
fn a_spool_without_free_dir_is_upgraded() -> TestResult {
    let dir = tempfile::tempdir()?;
    for sub in ["tmp", "queue", "corrupt"] {
        fs::create_dir_all(dir.path().join(sub))?;
    }
    let old: QueueId = "01HF3K5Q8M0ABCDE".parse()?;
    fs::write(dir.path().join("queue").join(old.as_str()), VERSION_2_FILE)?;
    let spool = Spool::open(dir.path())?;
    assert_eq!(
        fs::metadata(dir.path().join("free"))?.permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(spool.recover()?.ok, vec![old.clone()]);
    let ino = inode(&dir.path().join("queue").join(old.as_str()));
    spool.remove(&old)?;
    let new = spool.store(&envelope(), MESSAGE)?;
    assert_eq!(inode(&dir.path().join("queue").join(new.as_str())), ino);
    Ok(())
}

/// Many threads storing and removing (durably, and as delivered) at once:
/// every message reads back as itself, whichever recycled file it landed in.
#[test]
fn concurrent_recycling_keeps_every_message_its_own() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Arc::new(Spool::open(dir.path())?);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let spool = Arc::clone(&spool);
            thread::spawn(move || -> Result<(), String> {
                for i in 0..60 {
                    let body = format!("thread {t} message {i}\r\n").repeat(1 + (i * 7 + t) % 50);
                    let id = spool
                        .store(&envelope(), body.as_bytes())
                        .map_err(|e| e.to_string())?;
                    // Dropped before the removal: a file still read is not recycled.
                    let read = (spool.load(&id).map_err(|e| e.to_string())?.body)
                        .read_to_vec()
                        .map_err(|e| e.to_string())?;
                    if read != body.as_bytes() {
                        return Err(format!("{id} does not read back as thread {t} message {i}"));
                    }
                    match i % 3 {
                        0 => {}
                        1 => spool.remove(&id).map_err(|e| e.to_string())?,
                        _ => spool.remove_delivered(&id).map_err(|e| e.to_string())?,
                    }
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "thread panicked")??;
    }
    let report = spool.recover()?;
    assert!(report.quarantined.is_empty(), "{:?}", report.quarantined);
    assert_eq!(report.ok.len(), 8 * 20);
    assert!(spool.free_files() > 0);
    Ok(())
}

/// A reader racing the removal of the message it reads gets that message
/// or "no such message" — never a recycled file's next content under the
/// old id, and never a false "damaged".
#[test]
fn readers_racing_removal_never_see_the_next_message() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Arc::new(Spool::open(dir.path())?);
    type Recent = std::sync::Mutex<Vec<(QueueId, Vec<u8>)>>;
    let recent: Arc<Recent> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (spool, recent, done) =
                (Arc::clone(&spool), Arc::clone(&recent), Arc::clone(&done));
            thread::spawn(move || -> Result<usize, String> {
                let mut hits = 0;
                let mut n = r;
                while !done.load(Ordering::Relaxed) {
                    n += 7;
                    let pick = {
                        let list = recent.lock().map_err(|_| "poisoned")?;
                        list.get(list.len().saturating_sub(1 + n % 8)).cloned()
                    };
                    let Some((id, body)) = pick else { continue };
                    match spool.load(&id) {
                        Ok(m) => {
                            let read = m.body.read_to_vec().map_err(|e| e.to_string())?;
                            if read != body {
                                return Err(format!("{id} read back another message"));
                            }
                            hits += 1;
                        }
                        Err(SpoolError::NotFound { .. }) => {}
                        Err(e) => return Err(format!("{id}: {e}")),
                    }
                }
                Ok(hits)
            })
        })
        .collect();
    for i in 0..3000 {
        let body = format!("message {i}\r\n").repeat(1 + i % 300).into_bytes();
        let id = spool.store(&envelope(), &body)?;
        let mut list = recent.lock().map_err(|_| "poisoned")?;
        list.push((id, body));
        if list.len() > 4 {
            let (old, _) = list.remove(0);
            drop(list);
            spool.remove(&old)?;
        }
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        let hits = r.join().map_err(|_| "reader panicked")??;
        assert!(hits > 0, "the reader never read a message");
    }
    Ok(())
}

#[test]
fn a_file_still_being_read_is_not_recycled() -> TestResult {
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(dir.path())?;
    let id = spool.store(&envelope(), MESSAGE)?;
    let reading = spool.load(&id)?;
    spool.remove(&id)?;
    assert_eq!(spool.free_files(), 0);
    assert!(names(&dir.path().join("free")).is_empty());
    let next = spool.store(&envelope(), b"the next message\r\n")?;
    assert_eq!(reading.body.read_to_vec()?, MESSAGE);
    drop(reading);
    spool.remove(&next)?;
    assert_eq!(spool.free_files(), 1, "a file nobody reads is recycled");
    Ok(())
}
