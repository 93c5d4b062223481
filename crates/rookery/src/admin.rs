//! The local administration socket: a Unix socket in the data directory (mode 0600, so only
//! the server's user can use it) through which `rookery` commands reach the running server —
//! to list sessions, print counters, reload the configuration, delete, disable and re-enable
//! accounts, and read or change the message of the day and the administrators, through the
//! same operations as the XMPP administration commands (`rookery_modules::admin::ops`).
//!
//! One request line (followed, for `motd-set`, by the message until the client closes its
//! side), answered by lines of text and the connection closed; nothing here is reachable
//! from the network.

use crate::reload::Reloader;
use anyhow::{Context, Result};
use rookery_core::{Config, Server};
use rookery_modules::admin::ops;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const MAX_REQUEST: u64 = 4096;
/// The CLI's name in the log lines of the operations it asks for.
const ACTOR: &str = "rookery CLI";

pub fn socket_path(config: &Config) -> PathBuf {
    config.data_dir.join("rookery.sock")
}

/// Starts answering on the admin socket until shutdown.
pub fn serve(server: Arc<Server>, reloader: Arc<Reloader>) -> Result<()> {
    let path = socket_path(&server.config());
    // A socket left by a killed server is stale: the listener below proves we own it now.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .with_context(|| format!("cannot create the admin socket {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
    }
    let shutdown = server.shutdown_token().clone();
    let tasks = server.tasks().clone();
    tasks.spawn(async move {
        loop {
            let conn = tokio::select! {
                _ = shutdown.cancelled() => break,
                c = listener.accept() => c,
            };
            if let Ok((stream, _)) = conn {
                let server = server.clone();
                let reloader = reloader.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        answer(server, reloader, stream),
                    )
                    .await;
                });
            }
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn answer(
    server: Arc<Server>,
    reloader: Arc<Reloader>,
    stream: UnixStream,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let body_limit = rookery_modules::admin::ops::MAX_MESSAGE as u64 + 1;
    let mut reader = BufReader::new(read.take(MAX_REQUEST + body_limit));
    (&mut reader).take(MAX_REQUEST).read_line(&mut line).await?;
    let line = line.trim();
    let reply = if let Some(jid) = line.strip_prefix("delete ") {
        delete(&server, jid).await
    } else if let Some(jid) = line.strip_prefix("disable ") {
        disable(&server, jid, true).await
    } else if let Some(jid) = line.strip_prefix("enable ") {
        disable(&server, jid, false).await
    } else if let Some(domain) = line.strip_prefix("motd-set ") {
        let mut text = String::new();
        reader.take(body_limit).read_to_string(&mut text).await?;
        motd_set(&server, domain, &text).await
    } else if let Some(domain) = line.strip_prefix("motd-delete ") {
        match host(&server, domain) {
            Err(e) => e,
            Ok(d) => match ops::delete_motd(&server, d, ACTOR).await {
                Ok(true) => "deleted\n".to_owned(),
                Ok(false) => "missing\n".to_owned(),
                Err(e) => format!("error: {e}\n"),
            },
        }
    } else if let Some(domain) = line.strip_prefix("motd ") {
        match host(&server, domain) {
            Err(e) => e,
            // The text as stored, after a first line saying whether there is one.
            Ok(d) => match ops::motd(&server, d).await {
                Ok(Some(m)) => format!("motd\n{}", m.text),
                Ok(None) => "none\n".to_owned(),
                Err(e) => format!("error: {e}\n"),
            },
        }
    } else if let Some(domain) = line.strip_prefix("admins ") {
        admins(&server, domain).await
    } else if line == "reload" {
        // Reads files: off the runtime's threads.
        match tokio::task::spawn_blocking(move || reloader.reload()).await {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => format!("error: {e}\n"),
            Err(_) => "error: the reload did not finish\n".to_owned(),
        }
    } else {
        execute(&server, line)
    };
    write.write_all(reply.as_bytes()).await?;
    write.shutdown().await
}

fn execute(server: &Server, request: &str) -> String {
    let (cmd, arg) = request.split_once(' ').unwrap_or((request, ""));
    match cmd {
        "sessions" => {
            let mut lines: Vec<String> = server
                .sessions()
                .all()
                .iter()
                .filter(|s| arg.is_empty() || s.jid().domain().as_str() == arg)
                .map(|s| match s.priority() {
                    Some(p) => format!("{} available priority={p}\n", s.jid()),
                    None => format!("{} unavailable\n", s.jid()),
                })
                .collect();
            lines.sort();
            lines.concat()
        }
        "stats" => {
            let mut out = format!(
                "sessions {}\nuptime_secs {}\n",
                server.sessions().count(),
                server.uptime().as_secs()
            );
            for (name, value) in rookery_core::counters::snapshot() {
                out.push_str(&format!("{name} {value}\n"));
            }
            out
        }
        _ => "error: unknown command\n".to_owned(),
    }
}

/// `delete JID`: the account deleted by the server itself, as the administrators' command does
/// it (subscriptions cancelled, sessions closed); `deleted`, `missing` or an error line.
async fn delete(server: &Arc<Server>, jid: &str) -> String {
    let Ok(user) = rookery_stanza::BareJid::new(jid.trim()) else {
        return "error: not a bare JID\n".to_owned();
    };
    match rookery_modules::register::delete_account(server, &user).await {
        Ok(true) => "deleted\n".to_owned(),
        Ok(false) => "missing\n".to_owned(),
        Err(e) => format!("error: {e}\n"),
    }
}

/// A domain this server serves, or the error line.
fn host<'a>(server: &Server, domain: &'a str) -> Result<&'a str, String> {
    let domain = domain.trim();
    if server.config().host(domain).is_some() {
        Ok(domain)
    } else {
        Err(format!(
            "error: {domain} is not a domain this server serves\n"
        ))
    }
}

/// `disable JID` / `enable JID`: as the `disable-user` and `reenable-user` commands do it
/// (disabling ends the account's sessions); `done`, `missing` or an error line.
async fn disable(server: &Arc<Server>, jid: &str, disabled: bool) -> String {
    let Ok(user) = rookery_stanza::BareJid::new(jid.trim()) else {
        return "error: not a bare JID\n".to_owned();
    };
    match ops::set_disabled(server, &user, disabled, ACTOR).await {
        Ok(true) => "done\n".to_owned(),
        Ok(false) => "missing\n".to_owned(),
        Err(e) => format!("error: {e}\n"),
    }
}

/// `motd-set DOMAIN` then the text: as the `set-motd` command does it (sent to the online
/// accounts now, to the others at their next login); `sent N` or an error line.
async fn motd_set(server: &Arc<Server>, domain: &str, text: &str) -> String {
    let domain = match host(server, domain) {
        Ok(d) => d,
        Err(e) => return e,
    };
    match ops::set_motd(server, domain, text, ACTOR).await {
        Ok(sent) => format!("sent {sent}\n"),
        Err(e) => format!("error: {e}\n"),
    }
}

/// `admins DOMAIN`: one line per administrator, `JID config` or `JID added`.
async fn admins(server: &Server, domain: &str) -> String {
    let domain = match host(server, domain) {
        Ok(d) => d,
        Err(e) => return e,
    };
    let fixed = configured_admins(&server.config(), domain);
    match ops::added_admins(server, domain).await {
        Ok(added) => admin_lines(&fixed, &added),
        Err(e) => format!("error: {e}\n"),
    }
}

/// The administrators the configuration names for `domain`.
pub fn configured_admins(config: &Config, domain: &str) -> Vec<rookery_stanza::BareJid> {
    config
        .host(domain)
        .map(|h| {
            h.section::<rookery_modules::admin::AdminConfig>()
                .admins
                .iter()
                .filter_map(|a| rookery_stanza::BareJid::new(a).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The lines `rookery admins` prints.
pub fn admin_lines(fixed: &[rookery_stanza::BareJid], added: &[rookery_stanza::BareJid]) -> String {
    let mut out = String::new();
    for a in fixed {
        out.push_str(&format!("{a} config\n"));
    }
    for a in added.iter().filter(|a| !fixed.contains(a)) {
        out.push_str(&format!("{a} added\n"));
    }
    out
}

/// Sends one request to a running server. `Ok(None)` when no server is running.
pub async fn request(config: &Config, line: &str) -> Result<Option<String>> {
    request_with_body(config, line, None).await
}

/// [`request`] with text after the request line (the message of `motd-set`).
pub async fn request_with_body(
    config: &Config,
    line: &str,
    body: Option<&str>,
) -> Result<Option<String>> {
    let path = socket_path(config);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach {}", path.display())),
    };
    stream.write_all(format!("{line}\n").as_bytes()).await?;
    if let Some(body) = body {
        stream.write_all(body.as_bytes()).await?;
        // The server reads the text until this side is closed.
        stream.shutdown().await?;
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut out))
        .await
        .context("the server did not answer")??;
    Ok(Some(out))
}
