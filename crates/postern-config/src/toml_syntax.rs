//! TOML syntax errors that point at the fault.
//!
//! The `toml` crate reports where parsing *noticed* a problem: for an
//! unclosed `listen = ["127.0.0.1:25"` that is the next line. An
//! administrator needs the line where the faulty construct starts and the
//! key it belongs to, so [`syntax_error`] replays the document through
//! `toml_parser`'s event stream (the lexer `toml` itself uses) and finds the
//! statement — `key = value` or a `[table]` header — still open at that
//! point.

use std::collections::HashMap;

use toml_parser::decoder::Encoding;
use toml_parser::parser::EventReceiver;
use toml_parser::{ErrorSink, Source, Span};

use crate::ConfigError;

/// The error for a document `toml` refused to parse. The key is the dotted
/// key of the statement at fault (`smtp.listen`, `domain[1].next_hop`), or
/// `toml` when the fault lies before any key.
pub(crate) fn syntax_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let noticed = err.span().map_or(text.len(), |s| s.start).min(text.len());
    let message = err.message().trim_end();
    let (noticed_line, noticed_column) = line_and_column(text, noticed);
    let Some(fault) = locate(text, noticed) else {
        return ConfigError::new(
            "toml",
            format!("line {noticed_line}, column {noticed_column}: TOML syntax error: {message}"),
        );
    };
    let line = line_and_column(text, fault.start).0;
    let place = if line == noticed_line {
        format!("line {line}, column {noticed_column}")
    } else {
        format!("line {line} (noticed at line {noticed_line}, column {noticed_column})")
    };
    let key = if fault.key.is_empty() {
        "toml".to_string()
    } else {
        fault.key
    };
    ConfigError::new(key, format!("{place}: TOML syntax error: {message}"))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// The statement a fault noticed at byte `noticed` belongs to.
#[derive(Debug, PartialEq, Eq)]
struct Fault {
    /// Byte offset where the statement starts.
    start: usize,
    /// Its dotted key; for a stray token between statements, the table it
    /// stands in (empty at the top level).
    key: String,
}

fn locate(text: &str, noticed: usize) -> Option<Fault> {
    let source = Source::new(text);
    let tokens: Vec<_> = source.lex().collect();
    let mut walker = Walker {
        source,
        noticed,
        depth: 0,
        table: Vec::new(),
        array_tables: HashMap::new(),
        keys: Vec::new(),
        keys_start: None,
        in_header: false,
        last: None,
    };
    let mut errors: Vec<toml_parser::ParseError> = Vec::new();
    toml_parser::parser::parse_document(&tokens, &mut walker, &mut errors);
    let line_of = |offset: usize| line_and_column(text, offset).0;
    match walker.last.take() {
        // Still inside its brackets, or on its own line: that statement.
        Some(last) if walker.depth > 0 || line_of(last.start) == line_of(noticed) => Some(last),
        // A stray token after a finished statement: its own line, its table.
        _ if noticed < text.len() => Some(Fault {
            start: noticed,
            key: walker.table.join("."),
        }),
        Some(last) => Some(last),
        None => None,
    }
}

/// `a.b.c`, leaving out the empty keys a parse error leaves behind.
fn dotted(path: &[&str]) -> String {
    let parts: Vec<&str> = path.iter().copied().filter(|k| !k.is_empty()).collect();
    parts.join(".")
}

/// Follows the parser's events up to the noticed offset.
struct Walker<'s> {
    source: Source<'s>,
    noticed: usize,
    /// Array and inline-table nesting; keys count only at depth 0.
    depth: u32,
    /// The current `[table]` path, `domain[2]` for array tables.
    table: Vec<String>,
    /// How many `[[name]]` tables were seen, for their index.
    array_tables: HashMap<String, usize>,
    /// Keys of the header or `key = ` being read.
    keys: Vec<String>,
    keys_start: Option<usize>,
    in_header: bool,
    last: Option<Fault>,
}

impl Walker<'_> {
    fn before_fault(&self, span: Span) -> bool {
        span.start() <= self.noticed
    }

    fn close_header(&mut self, array: bool) {
        let mut path = std::mem::take(&mut self.keys);
        if array {
            let name = path.join(".");
            let n = self.array_tables.entry(name).or_insert(0);
            if let Some(last) = path.last_mut() {
                *last = format!("{last}[{n}]");
            }
            *n += 1;
        }
        self.table = path;
        self.in_header = false;
    }
}

impl EventReceiver for Walker<'_> {
    fn std_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.header_open(span);
    }
    fn array_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.header_open(span);
    }
    fn std_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if self.before_fault(span) {
            self.close_header(false);
        }
    }
    fn array_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if self.before_fault(span) {
            self.close_header(true);
        }
    }
    fn inline_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) -> bool {
        if span.start() < self.noticed {
            self.depth += 1;
        }
        true
    }
    fn inline_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if span.start() < self.noticed {
            self.depth = self.depth.saturating_sub(1);
        }
    }
    fn array_open(&mut self, span: Span, _error: &mut dyn ErrorSink) -> bool {
        if span.start() < self.noticed {
            self.depth += 1;
        }
        true
    }
    fn array_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if span.start() < self.noticed {
            self.depth = self.depth.saturating_sub(1);
        }
    }
    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, _error: &mut dyn ErrorSink) {
        if !self.before_fault(span) || self.depth > 0 {
            return;
        }
        let mut key = String::new();
        if let Some(raw) = self.source.get(span) {
            let raw = toml_parser::Raw::new_unchecked(raw.as_str(), encoding, span);
            raw.decode_key(&mut key, &mut ());
        }
        if !self.in_header && self.keys_start.is_none() {
            // A new `key = value` statement begins here.
            self.keys_start = Some(span.start());
            self.keys.clear();
        }
        self.keys.push(key);
        if self.in_header {
            if let Some(last) = &mut self.last {
                let path: Vec<&str> = self.keys.iter().map(String::as_str).collect();
                last.key = dotted(&path);
            }
        } else {
            let path: Vec<&str> = self
                .table
                .iter()
                .chain(&self.keys)
                .map(String::as_str)
                .collect();
            self.last = Some(Fault {
                start: self.keys_start.unwrap_or(span.start()),
                key: dotted(&path),
            });
        }
    }
    fn key_val_sep(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if self.before_fault(span) && self.depth == 0 {
            self.keys_start = None;
            self.keys.clear();
        }
    }
}

impl Walker<'_> {
    fn header_open(&mut self, span: Span) {
        if !self.before_fault(span) || self.depth > 0 {
            return;
        }
        self.in_header = true;
        self.keys.clear();
        self.keys_start = None;
        // The header itself is the statement until it closes.
        self.last = Some(Fault {
            start: span.start(),
            key: String::new(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_for(text: &str) -> ConfigError {
        let err = toml::from_str::<toml::Table>(text).expect_err(text);
        syntax_error(text, &err)
    }

    #[test]
    fn points_at_the_construct_and_its_key() {
        // (document, key, "line N" the message starts with)
        let rows = [
            (
                "hostname = \"mx.test\"\n\n[smtp]\nlisten = [\"127.0.0.1:25\"\ntrusted_networks = []\n",
                "smtp.listen",
                "line 4 (noticed at line 5, column 1)",
            ),
            (
                "[smtp]\nlisten = [\"127.0.0.1:25\"\n",
                "smtp.listen",
                "line 2, column 25",
            ),
            (
                "[smtp]\nlisten = [\n  \"127.0.0.1:25\",\n  \"127.0.0.1:26\"\n\n[dns]\n",
                "smtp.listen",
                "line 2 (noticed at line 6",
            ),
            ("store = \"sqlite\n", "store", "line 1, column"),
            ("[delivery]\nmx_port = 25 26\n", "delivery.mx_port", "line 2, column"),
            ("[admin]\nlisten == \"x\"\n", "admin.listen", "line 2, column"),
            ("[smtp\nlisten = []\n", "smtp", "line 1, column 6"),
            ("[dns]\n= 5\n", "dns", "line 2, column 1"),
            (
                "[smtp]\nlisten = []\n[smtp]\n",
                "smtp",
                "line 3, column",
            ),
            (
                "[[domain]]\nname = \"a.test\"\n[[domain]]\nname = \"b.test\"\nnext_hop = [\"x\"\n",
                "domain[1].next_hop",
                "line 5",
            ),
            (
                "[smtp]\nlisten = { a = [1, 2 }\n",
                "smtp.listen",
                "line 2, column",
            ),
            (
                "[smtp]\n\"quoted key\".x = [\n",
                "smtp.quoted key.x",
                "line 2",
            ),
        ];
        let wrong: Vec<String> = rows
            .iter()
            .map(|(text, key, line)| (text, key, line, error_for(text)))
            .filter(|(_, key, line, err)| {
                err.key != **key
                    || !err.message.starts_with(**line)
                    || !err.message.contains("TOML syntax error: ")
            })
            .map(|(text, key, line, err)| format!("{text:?}: want {key} {line}, got {err}"))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn fault_before_any_key_is_the_document() {
        let err = error_for("= 1\n");
        assert_eq!(err.key, "toml", "{err}");
        assert!(err.message.starts_with("line 1, column 1: "), "{err}");
    }

    #[test]
    fn keeps_the_parsers_reason() {
        let err = error_for("[smtp]\nlisten = [\"127.0.0.1:25\"\nx = 1\n");
        assert!(err.message.contains("expected `,`"), "{err}");
    }
}
