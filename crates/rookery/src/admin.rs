//! The local administration socket: a Unix socket in the data directory (mode 0600, so only
//! the server's user can use it) through which `rookery` commands reach the running server —
//! to list sessions, print counters, reload the configuration, and delete an account the way
//! the server's own removal does.
//!
//! One request line, answered by lines of text and the connection closed; nothing here is
//! reachable from the network.

use crate::reload::Reloader;
use anyhow::{Context, Result};
use rookery_core::{Config, Server};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const MAX_REQUEST: u64 = 4096;

pub fn socket_path(config: &Config) -> PathBuf {
    config.data_dir.join("rookery.sock")
}

/// Starts answering on the admin socket until shutdown.
pub fn serve(server: Arc<Server>, reloader: Arc<Reloader>) -> Result<()> {
    let path = socket_path(server.config());
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
    BufReader::new(read.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let line = line.trim();
    let reply = if let Some(jid) = line.strip_prefix("delete ") {
        delete(&server, jid).await
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

/// Sends one request to a running server. `Ok(None)` when no server is running.
pub async fn request(config: &Config, line: &str) -> Result<Option<String>> {
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
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut out))
        .await
        .context("the server did not answer")??;
    Ok(Some(out))
}
