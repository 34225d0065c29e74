//! Every reply the session sends, in one place, so texts stay consistent.

use postern_proto::{Reply, SyntaxError};

pub(crate) fn ok() -> Reply {
    Reply::new(250, (2, 0, 0), "Ok")
}
pub(crate) fn sender_ok() -> Reply {
    Reply::new(250, (2, 1, 0), "Ok")
}
pub(crate) fn recipient_ok() -> Reply {
    Reply::new(250, (2, 1, 5), "Ok")
}
pub(crate) fn bye() -> Reply {
    Reply::new(221, (2, 0, 0), "Bye")
}
pub(crate) fn help() -> Reply {
    Reply::new(214, (2, 0, 0), "See RFC 5321")
}
pub(crate) fn start_data() -> Reply {
    Reply::plain(354, vec!["End data with <CR><LF>.<CR><LF>".into()])
}
pub(crate) fn queued(id: &str) -> Reply {
    Reply::new(250, (2, 0, 0), format!("Ok: queued as {id}"))
}
pub(crate) fn chunk_ok(size: u64) -> Reply {
    Reply::new(250, (2, 0, 0), format!("{size} octets received"))
}
pub(crate) fn ready_for_tls() -> Reply {
    Reply::new(220, (2, 0, 0), "Ready to start TLS")
}

pub(crate) fn syntax(error: &SyntaxError) -> Reply {
    match error {
        SyntaxError::Unrecognized => Reply::new(500, (5, 5, 1), "Command unrecognized"),
        SyntaxError::Arguments { expected } => {
            Reply::new(501, (5, 5, 4), format!("Syntax: {expected}"))
        }
        SyntaxError::Address { sender: true } => {
            Reply::new(501, (5, 1, 7), "Bad sender address syntax")
        }
        SyntaxError::Address { sender: false } => {
            Reply::new(501, (5, 1, 3), "Bad recipient address syntax")
        }
        SyntaxError::InvalidCharacters => {
            Reply::new(500, (5, 5, 2), "Invalid characters in command")
        }
    }
}
pub(crate) fn line_too_long() -> Reply {
    Reply::new(500, (5, 5, 2), "Line too long")
}
pub(crate) fn bare_lf_in_command() -> Reply {
    Reply::new(500, (5, 5, 2), "Command lines must end with <CR><LF>")
}
pub(crate) fn http_refused() -> Reply {
    Reply::new(
        421,
        (4, 7, 0),
        "This is an SMTP server, not HTTP; closing connection",
    )
}
pub(crate) fn too_many_errors() -> Reply {
    Reply::new(421, (4, 7, 0), "Too many errors; closing connection")
}
pub(crate) fn timeout(hostname: &str) -> Reply {
    Reply::new(
        421,
        (4, 4, 2),
        format!("{hostname} Error: timeout exceeded; closing connection"),
    )
}
pub(crate) fn shutting_down(hostname: &str) -> Reply {
    Reply::new(
        421,
        (4, 3, 2),
        format!("{hostname} Service shutting down; closing connection"),
    )
}
pub(crate) fn vrfy_disabled() -> Reply {
    Reply::new(502, (5, 5, 1), "VRFY and EXPN are disabled")
}
pub(crate) fn auth_not_enabled() -> Reply {
    Reply::new(503, (5, 5, 1), "Authentication not enabled")
}

pub(crate) fn need_helo() -> Reply {
    Reply::new(503, (5, 5, 1), "Send EHLO or HELO first")
}
pub(crate) fn nested_mail() -> Reply {
    Reply::new(503, (5, 5, 1), "Nested MAIL command")
}
pub(crate) fn need_mail() -> Reply {
    Reply::new(503, (5, 5, 1), "Need MAIL command first")
}
pub(crate) fn need_rcpt() -> Reply {
    Reply::new(554, (5, 5, 1), "No valid recipients")
}
pub(crate) fn data_after_bdat() -> Reply {
    Reply::new(503, (5, 5, 1), "DATA not allowed after BDAT")
}
pub(crate) fn rcpt_after_bdat() -> Reply {
    Reply::new(503, (5, 5, 1), "RCPT not allowed after BDAT")
}
pub(crate) fn must_starttls() -> Reply {
    Reply::new(530, (5, 7, 0), "Must issue a STARTTLS command first")
}
pub(crate) fn client_cert_required() -> Reply {
    Reply::new(530, (5, 7, 1), "A trusted client certificate is required")
}
pub(crate) fn relay_denied() -> Reply {
    Reply::new(554, (5, 7, 1), "Relaying denied")
}
pub(crate) fn no_local_postmaster() -> Reply {
    Reply::new(
        550,
        (5, 1, 1),
        "No local mailboxes here; write to postmaster@<domain>",
    )
}
pub(crate) fn too_many_recipients() -> Reply {
    Reply::new(452, (4, 5, 3), "Too many recipients")
}
pub(crate) fn message_too_big() -> Reply {
    Reply::new(
        552,
        (5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
}
pub(crate) fn bare_line_ending() -> Reply {
    Reply::new(
        550,
        (5, 5, 2),
        "Message refused: bare CR or LF not allowed (use CRLF line endings)",
    )
}
pub(crate) fn requiretls_needs_tls() -> Reply {
    Reply::new(
        530,
        (5, 7, 10),
        "REQUIRETLS is only accepted in a TLS session: issue STARTTLS first",
    )
}
pub(crate) fn unsupported_parameter(name: &str) -> Reply {
    Reply::new(555, (5, 5, 4), format!("Unsupported parameter {name}"))
}
pub(crate) fn needs_smtputf8() -> Reply {
    Reply::new(553, (5, 6, 7), "Non-ASCII address requires SMTPUTF8")
}
pub(crate) fn storage_failed() -> Reply {
    Reply::new(
        451,
        (4, 3, 0),
        "Error: queue file write error; try again later",
    )
}
pub(crate) fn tls_not_available() -> Reply {
    Reply::new(454, (4, 7, 0), "TLS not available")
}
pub(crate) fn starttls_disabled() -> Reply {
    Reply::new(502, (5, 5, 1), "STARTTLS not offered")
}
pub(crate) fn tls_already_active() -> Reply {
    Reply::new(503, (5, 5, 1), "TLS already active")
}
pub(crate) fn starttls_in_transaction() -> Reply {
    Reply::new(
        503,
        (5, 5, 1),
        "STARTTLS not allowed during a mail transaction",
    )
}
