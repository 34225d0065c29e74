//! `postern admin passwd` and `postern admin token create|list|revoke`:
//! the admin UI's credentials. Only hashes reach the store; a new token is
//! printed once on stdout.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{anyhow, bail, Context as _, Result};
use postern_admin::auth;
use postern_store::Store;

use crate::cli::{AdminCommand, TokenCommand};
use crate::context::Context;

pub fn run(ctx: &Context, command: AdminCommand) -> Result<()> {
    let store = ctx.store.as_ref();
    match command {
        AdminCommand::Passwd { password_stdin } => {
            let password = if password_stdin {
                read_stdin_line()?
            } else {
                prompt_twice()?
            };
            auth::check_new_password(&password).map_err(|e| anyhow!("{e}; nothing was changed"))?;
            let hash = auth::hash_password(&password)?;
            store.set_admin_password_hash(&hash)?;
            eprintln!("admin password changed (a running gateway ends the admin sessions opened with the old password within seconds)");
        }
        AdminCommand::Token(TokenCommand::Create { name }) => {
            let name = name.unwrap_or_else(|| format!("token-{}", auth::random_hex(4)));
            let token = auth::new_token();
            store
                .add_api_token(&name, &auth::token_hash(&token))
                .map_err(|e| anyhow!("{e}; no token was created"))?;
            eprintln!("API token \"{name}\" created; it is shown only now:");
            println!("{token}");
        }
        AdminCommand::Token(TokenCommand::List) => {
            for token in store.api_tokens()? {
                println!("{}  {}", token.name, rfc3339(token.created_at));
            }
        }
        AdminCommand::Token(TokenCommand::Revoke { name }) => {
            store.delete_api_token(&name)?;
            eprintln!("API token \"{name}\" revoked");
        }
    }
    Ok(())
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The first line of stdin, without its line ending.
fn read_stdin_line() -> Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("no password on stdin; nothing was changed");
    }
    Ok(password)
}

/// Ask on the terminal, twice, without echo.
fn prompt_twice() -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on; use --password-stdin");
    }
    let first = prompt("New admin password: ")?;
    let second = prompt("Again: ")?;
    if first != second {
        bail!("the passwords differ; nothing was changed");
    }
    Ok(first)
}

fn prompt(text: &str) -> Result<String> {
    eprint!("{text}");
    let _ = std::io::stderr().flush();
    // Echo off through stty (no unsafe terminal calls here); restored even
    // when reading fails.
    let stty = |arg: &str| {
        std::process::Command::new("stty")
            .arg(arg)
            .stdin(std::process::Stdio::inherit())
            .status()
            .is_ok_and(|s| s.success())
    };
    let hidden = stty("-echo");
    let read = read_stdin_line();
    if hidden {
        stty("echo");
    }
    eprintln!();
    read
}
