//! The fuzz corpus on stable Rust: every file of `fuzz/corpus/<target>/`
//! (seeds and the reproducers of every crash found so far) through the same
//! function the fuzzer runs, plus a few deterministic mutations of each, so
//! `cargo test` catches a regression without nightly or libFuzzer.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use postern_fuzz::{Splits, TARGETS};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Run `input` through `run`; the panic message if it panicked.
fn attempt(run: fn(&[u8]), input: &[u8]) -> Option<String> {
    catch_unwind(AssertUnwindSafe(|| run(input)))
        .err()
        .map(|payload| {
            payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".to_string())
        })
}

/// A few cheap mutations: flip a byte, cut the tail, duplicate a slice.
fn mutations(input: &[u8], seed: u64) -> Vec<Vec<u8>> {
    let mut splits = Splits::new(seed);
    let mut out = Vec::new();
    if input.is_empty() {
        return out;
    }
    for _ in 0..4 {
        let mut flipped = input.to_vec();
        let at = splits.next(input.len()) - 1;
        flipped[at] ^= 1 << (splits.next(8) - 1);
        out.push(flipped);
    }
    out.push(input[..splits.next(input.len()) - 1].to_vec());
    let from = splits.next(input.len()) - 1;
    let to = (from + splits.next(64)).min(input.len());
    let mut doubled = input[..to].to_vec();
    doubled.extend_from_slice(&input[from..]);
    out.push(doubled);
    out
}

#[test]
fn corpus_replays_without_failures() {
    let mut failures = Vec::new();
    let mut runs = 0usize;
    for &(target, run) in TARGETS {
        let files = corpus_files(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target}/ has no seeds");
        for (i, file) in files.iter().enumerate() {
            let input = std::fs::read(file).expect("read corpus file");
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            runs += 1;
            if let Some(message) = attempt(run, &input) {
                failures.push(format!("{target}/{name}: {message}"));
            }
            for (j, mutated) in mutations(&input, i as u64 + 1).iter().enumerate() {
                runs += 1;
                if let Some(message) = attempt(run, mutated) {
                    failures.push(format!("{target}/{name} (mutation {j}): {message}"));
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(postern_fuzz::spool_file::scratch_dir());
    assert!(
        failures.is_empty(),
        "{} of {runs} corpus runs failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/fuzz_targets");
    for &(target, _) in TARGETS {
        let file = dir.join(format!("{target}.rs"));
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("postern_fuzz::{target}::run")),
            "{} does not call postern_fuzz::{target}::run",
            file.display()
        );
    }
}
