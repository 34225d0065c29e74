//! `settings`: the shared settings as an administrator imports them
//! ([`Settings::from_toml`], [`Settings::from_json`]) or changes one key
//! ([`Settings::with`], `postern settings set`).
//!
//! Input: one byte choosing the form (TOML, JSON, a known key, any key),
//! then the document, or `key=value` / a key index and the value.
//!
//! Invariants: nothing panics; whatever is accepted passes validation,
//! survives `settings export` + `settings import` unchanged in both
//! formats, and every accepted `next_hop` parses.

use postern_config::{known_keys, Settings};

use crate::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let form = input.byte();
    let accepted = match form % 4 {
        0 => Settings::from_toml(&text(input.rest())).ok(),
        1 => Settings::from_json(&text(input.rest())).ok(),
        2 => {
            let keys = known_keys();
            let key = &keys[usize::from(input.byte()) % keys.len()];
            Settings::default().with(key, &text(input.rest())).ok()
        }
        _ => {
            let line = text(input.rest());
            let (key, value) = line.split_once('=').unwrap_or((&line, ""));
            Settings::default().with(key, value).ok()
        }
    };
    if let Some(settings) = accepted {
        check(&settings);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check(settings: &Settings) {
    assert!(settings.validate().is_ok(), "accepted but not valid");
    let toml = settings.to_toml();
    match Settings::from_toml(&toml) {
        Ok(again) => assert_eq!(&again, settings, "TOML round trip changed:\n{toml}"),
        Err(e) => panic!("exported TOML does not import: {e}\n{toml}"),
    }
    let json = settings.to_json();
    match Settings::from_json(&json) {
        Ok(again) => assert_eq!(&again, settings, "JSON round trip changed:\n{json}"),
        Err(e) => panic!("exported JSON does not import: {e}\n{json}"),
    }
    for entry in &settings.domains {
        if entry.next_hop.is_some() {
            assert!(entry.next_hop().is_some(), "next_hop accepted but unusable");
        }
        let bare = entry.name.trim_start_matches("*.");
        let _ = settings.outbound_mode(bare);
    }
    let _ = settings.certificate_references();
    let _ = settings.banner("mx.postern.test");
}
