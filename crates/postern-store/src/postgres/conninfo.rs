//! The `store` URL, read as libpq reads it: `postgres://` or
//! `postgresql://`, `user:password@host:port/dbname`, and query parameters
//! (`host`, `port`, `dbname`, `user`, `password`, `sslmode`, `sslrootcert`,
//! `passfile`, `channel_binding`, `application_name`, `connect_timeout`). The password may
//! also come from `PGPASSWORD` or the password file (`PGPASSFILE`, else
//! `~/.pgpass`).
//!
//! The password never leaves this module in text: [`ConnInfo`]'s `Debug`
//! and [`ConnInfo::redacted`] leave it out, and parse errors name the part
//! of the URL that is wrong, never its value.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How the connection is protected (libpq's `sslmode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext; only when the URL says so.
    Disable,
    /// TLS, any certificate (libpq's default for us: `require`).
    Require,
    /// TLS, the certificate chains to `sslrootcert`.
    VerifyCa,
    /// TLS, the certificate chains to `sslrootcert` and names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<SslMode, String> {
        match value {
            "disable" => Ok(SslMode::Disable),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            "allow" | "prefer" => Err(format!(
                "sslmode={value} may fall back to plaintext, which a cluster store never does; \
                 use require, verify-ca or verify-full (or disable, to say plaintext on purpose)"
            )),
            _ => Err("sslmode must be one of disable, require, verify-ca, verify-full".to_string()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Whether SCRAM must bind itself to the TLS channel (libpq's
/// `channel_binding`): `prefer` (the default) uses SCRAM-SHA-256-PLUS
/// whenever the server offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBinding {
    Disable,
    Prefer,
    Require,
}

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Tcp(String),
    /// A directory holding the server's unix socket.
    Unix(PathBuf),
}

/// A parsed `store` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub host: Host,
    pub port: u16,
    pub dbname: String,
    pub user: String,
    password: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub passfile: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    pub application_name: String,
    pub connect_timeout: Duration,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// True for a `store` value that names PostgreSQL.
pub fn is_postgres_url(value: &str) -> bool {
    value.starts_with("postgres://") || value.starts_with("postgresql://")
}

fn percent_decode(part: &str, what: &str) -> Result<String, String> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("the {what} has a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("the {what} is not UTF-8"))
}

impl ConnInfo {
    /// Parse a `postgres://` URL. `env` looks up environment variables
    /// (`PGPASSWORD`, `PGPASSFILE`, `HOME`), so tests need not set them.
    pub fn parse(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<ConnInfo, String> {
        let rest = url
            .strip_prefix("postgresql://")
            .or_else(|| url.strip_prefix("postgres://"))
            .ok_or("a PostgreSQL store URL starts with postgres:// or postgresql://")?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        // The password may contain '@' only %-escaped; the last '@' ends it.
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let mut user = None;
        let mut password = None;
        if let Some(userinfo) = userinfo {
            let (u, p) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !u.is_empty() {
                user = Some(percent_decode(u, "user name")?);
            }
            if let Some(p) = p {
                password = Some(percent_decode(p, "password")?);
            }
        }
        let mut host = None;
        let mut port = None;
        if !hostport.is_empty() {
            if hostport.contains(',') {
                return Err(
                    "several hosts in one URL are not supported; \
                            point the store at one address (a proxy or a virtual IP for failover)"
                        .to_string(),
                );
            }
            let (h, p) = if let Some(v6) = hostport.strip_prefix('[') {
                let (h, after) = v6.split_once(']').ok_or("the host has '[' without ']'")?;
                (h.to_string(), after.strip_prefix(':'))
            } else {
                match hostport.rsplit_once(':') {
                    Some((h, p)) => (h.to_string(), Some(p)),
                    None => (hostport.to_string(), None),
                }
            };
            host = Some(percent_decode(&h, "host")?);
            if let Some(p) = p {
                port = Some(p.to_string());
            }
        }
        let mut dbname = (!path.is_empty())
            .then(|| percent_decode(path, "database name"))
            .transpose()?;
        let mut sslmode = None;
        let mut sslrootcert = None;
        let mut passfile = None;
        let mut application_name = None;
        let mut connect_timeout = None;
        let mut channel_binding = ChannelBinding::Prefer;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("URL parameter \"{key}\" has no value", key = pair))?;
            let value = percent_decode(value, &format!("value of {key}"))?;
            match key {
                "host" => host = Some(value),
                "port" => port = Some(value),
                "dbname" => dbname = Some(value),
                "user" => user = Some(value),
                "password" => password = Some(value),
                "sslmode" => sslmode = Some(SslMode::parse(&value)?),
                "sslrootcert" => sslrootcert = Some(PathBuf::from(value)),
                "passfile" => passfile = Some(PathBuf::from(value)),
                "application_name" => application_name = Some(value),
                "channel_binding" => {
                    channel_binding = match value.as_str() {
                        "disable" => ChannelBinding::Disable,
                        "prefer" => ChannelBinding::Prefer,
                        "require" => ChannelBinding::Require,
                        _ => {
                            return Err(
                                "channel_binding must be one of disable, prefer, require"
                                    .to_string(),
                            )
                        }
                    }
                }
                "connect_timeout" => {
                    let secs: u64 = value
                        .parse()
                        .map_err(|_| "connect_timeout must be a number of seconds".to_string())?;
                    connect_timeout = Some(Duration::from_secs(secs.max(1)));
                }
                _ => {
                    return Err(format!(
                        "unknown URL parameter \"{key}\"; known: host, port, dbname, user, \
                         password, sslmode, sslrootcert, passfile, channel_binding, application_name, \
                         connect_timeout"
                    ))
                }
            }
        }
        let host = match host.filter(|h| !h.is_empty()) {
            Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
            Some(h) => Host::Tcp(h),
            None => Host::Tcp("localhost".to_string()),
        };
        let port = match port.filter(|p| !p.is_empty()) {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("the port must be a number from 1 to 65535")?,
            None => 5432,
        };
        let user = user
            .filter(|u| !u.is_empty())
            .ok_or("the URL names no user (postgres://USER@host/db)")?;
        let dbname = dbname
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| user.clone());
        let sslmode = match (sslmode, &host) {
            (Some(mode), _) => mode,
            // A local socket is not a network: libpq does no TLS there.
            (None, Host::Unix(_)) => SslMode::Disable,
            (None, Host::Tcp(_)) => SslMode::Require,
        };
        if matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && sslrootcert.is_none() {
            return Err(format!(
                "sslmode={} needs sslrootcert=FILE (the CA that signed the server's certificate)",
                sslmode.as_str()
            ));
        }
        let passfile = passfile.or_else(|| {
            env("PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|home| Path::new(&home).join(".pgpass")))
        });
        let mut info = ConnInfo {
            host,
            port,
            dbname,
            user,
            password,
            sslmode,
            sslrootcert,
            passfile,
            channel_binding,
            application_name: application_name.unwrap_or_else(|| "postern".to_string()),
            connect_timeout: connect_timeout.unwrap_or(Duration::from_secs(10)),
        };
        if info.password.is_none() {
            info.password = env("PGPASSWORD").filter(|p| !p.is_empty());
        }
        if info.password.is_none() {
            info.password = info.password_from_file();
        }
        Ok(info)
    }

    /// The password, for the connection only.
    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The URL without the password: for logs and errors.
    pub fn redacted(&self) -> String {
        let host = match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
            Host::Tcp(h) => h.clone(),
            Host::Unix(dir) => format!("(socket in {})", dir.display()),
        };
        let mut text = format!(
            "postgres://{}@{host}:{}/{}?sslmode={}",
            self.user,
            self.port,
            self.dbname,
            self.sslmode.as_str()
        );
        if let Some(root) = &self.sslrootcert {
            text.push_str(&format!("&sslrootcert={}", root.display()));
        }
        text
    }

    /// The first matching line of the password file, as libpq reads it:
    /// `host:port:database:user:password`, `*` matches anything, `\` escapes.
    /// A file others can read is ignored, as libpq does.
    fn password_from_file(&self) -> Option<String> {
        let path = self.passfile.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).ok()?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    "password file {} is readable by others; ignored (chmod 0600 it)",
                    path.display()
                );
                return None;
            }
        }
        let host = match &self.host {
            Host::Tcp(h) => h.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        };
        let wanted = [
            host,
            self.port.to_string(),
            self.dbname.clone(),
            self.user.clone(),
        ];
        text.lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .filter_map(split_passfile_line)
            .find(|fields| {
                fields[..4]
                    .iter()
                    .zip(&wanted)
                    .all(|(field, want)| field == "*" || field == want)
            })
            .map(|mut fields| fields.remove(4))
    }
}

/// Five fields split at unescaped ':', with `\:` and `\\` unescaped.
fn split_passfile_line(line: &str) -> Option<Vec<String>> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut()?.push(chars.next()?),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    (fields.len() == 5).then_some(fields)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn url_parts_and_defaults() {
        let info =
            ConnInfo::parse("postgres://postern:s3cr%40t@db.example:5433/mail", &no_env).unwrap();
        assert_eq!(info.host, Host::Tcp("db.example".into()));
        assert_eq!(info.port, 5433);
        assert_eq!(info.dbname, "mail");
        assert_eq!(info.user, "postern");
        assert_eq!(info.password(), Some("s3cr@t"));
        // TCP without sslmode: TLS required.
        assert_eq!(info.sslmode, SslMode::Require);
        let info = ConnInfo::parse("postgresql://u@[::1]/", &no_env).unwrap();
        assert_eq!(info.host, Host::Tcp("::1".into()));
        assert_eq!((info.port, info.dbname.as_str()), (5432, "u"));
    }

    #[test]
    fn query_parameters_and_unix_socket() {
        let info = ConnInfo::parse(
            "postgres:///db?host=%2Fvar%2Frun%2Fpostgresql&user=p&sslmode=disable",
            &no_env,
        )
        .unwrap();
        assert_eq!(info.host, Host::Unix("/var/run/postgresql".into()));
        assert_eq!(info.sslmode, SslMode::Disable);
        let info = ConnInfo::parse("postgres:///db?host=/run/pg&user=p", &no_env).unwrap();
        assert_eq!(info.sslmode, SslMode::Disable, "no TLS on a local socket");
        let info = ConnInfo::parse(
            "postgres://p@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            &no_env,
        )
        .unwrap();
        assert_eq!(info.sslmode, SslMode::VerifyFull);
        assert_eq!(info.sslrootcert, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn errors_name_the_part_never_the_password() {
        for (url, words) in [
            ("postgres://p:hunter2@h/db?sslmode=prefer", "plaintext"),
            ("postgres://p:hunter2@h/db?sslmode=bogus", "sslmode must be"),
            (
                "postgres://p:hunter2@h/db?sslmode=verify-full",
                "sslrootcert",
            ),
            (
                "postgres://p:hunter2@h/db?colour=blue",
                "unknown URL parameter \"colour\"",
            ),
            ("postgres://p:hunter2@h:99999/db", "port"),
            ("postgres://:hunter2@h/db", "no user"),
            ("postgres://p:hunter2@a,b/db", "several hosts"),
            ("postgres://p:hunter2%zz@h/db", "password has a bad"),
        ] {
            let error = ConnInfo::parse(url, &no_env).unwrap_err();
            assert!(error.contains(words), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
    }

    #[test]
    fn redacted_and_debug_leave_out_the_password() {
        let info = ConnInfo::parse("postgres://p:hunter2@h/db", &no_env).unwrap();
        assert!(!info.redacted().contains("hunter2"));
        assert!(!format!("{info:?}").contains("hunter2"));
        assert!(info.redacted().contains("sslmode=require"));
    }

    #[test]
    fn password_from_environment_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pgpass");
        std::fs::write(
            &file,
            "# comment\nother:*:*:*:no\nh:5432:db:p:from\\:file\n*:*:*:*:fallback\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file_s = file.display().to_string();
        let env = |name: &str| (name == "PGPASSFILE").then(|| file_s.clone());
        let info = ConnInfo::parse("postgres://p@h/db", &env).unwrap();
        assert_eq!(info.password(), Some("from:file"));
        let info = ConnInfo::parse("postgres://p@h/other", &env).unwrap();
        assert_eq!(info.password(), Some("fallback"));
        let with_pw = |name: &str| match name {
            "PGPASSWORD" => Some("from-env".to_string()),
            _ => env(name),
        };
        let info = ConnInfo::parse("postgres://p@h/db", &with_pw).unwrap();
        assert_eq!(info.password(), Some("from-env"));
        // Readable by others: ignored, as libpq does.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let info = ConnInfo::parse("postgres://p@h/db", &env).unwrap();
        assert_eq!(info.password(), None);
    }
}
