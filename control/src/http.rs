//! The daemon's small servers: metrics and health over HTTP, inspection over a unix socket.
//!
//! Both serve what the control loop last rendered into [`LoopView`] (refreshed every second and
//! after each publish), so a scrape never takes a lock the control loop or a worker needs for
//! longer than a string copy. HTTP: `GET /metrics` (Prometheus text), `/healthz` (200 while the
//! control loop turns), `/readyz` (200 once a table built from cluster state is published).
//! The inspect socket (mode 0600, root only) answers any connection with the inspection JSON.

use crate::view::LoopView;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Seconds without a control-loop turn after which `/healthz` fails.
pub const LIVENESS_SECS: u64 = 10;

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn respond(shared: &LoopView, path: &str) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            shared.metrics.lock().map(|m| m.clone()).unwrap_or_default(),
        ),
        "/healthz" => {
            let hb = shared.heartbeat.load(Ordering::Relaxed);
            if hb > 0 && now_secs().saturating_sub(hb) <= LIVENESS_SECS {
                (200, "text/plain", "ok\n".into())
            } else {
                (503, "text/plain", "control loop stalled\n".into())
            }
        }
        "/readyz" => {
            if shared.ready.load(Ordering::Relaxed) {
                (200, "text/plain", "ready\n".into())
            } else {
                (
                    503,
                    "text/plain",
                    "no table from cluster state yet\n".into(),
                )
            }
        }
        _ => (404, "text/plain", "not found\n".into()),
    }
}

/// Serves metrics and health on `addr` from a background thread.
pub fn serve(
    addr: SocketAddr,
    shared: Arc<LoopView>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let l = TcpListener::bind(addr)?;
    std::thread::Builder::new().name("xdpnet-http".into()).spawn(move || {
        for c in l.incoming().flatten() {
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(&c);
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            // Drain the headers.
            let mut h = String::new();
            while r.read_line(&mut h).map(|n| n > 2).unwrap_or(false) {
                h.clear();
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
            let path = path.split('?').next().unwrap_or("/");
            let (code, ty, body) = if method == "GET" {
                respond(&shared, path)
            } else {
                (405, "text/plain", "GET only\n".to_string())
            };
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Service Unavailable",
            };
            let mut w = &c;
            let _ = write!(
                w,
                "HTTP/1.1 {code} {reason}\r\nContent-Type: {ty}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    })
}

/// Serves the inspection JSON on a root-only unix socket at `path`.
pub fn serve_inspect(
    path: &Path,
    shared: Arc<LoopView>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("xdpnet-inspect".into())
        .spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                let body = shared.inspect.lock().map(|m| m.clone()).unwrap_or_default();
                let _ = c.write_all(body.as_bytes());
            }
        })
}

/// Reads the inspection JSON from a daemon's socket.
pub fn fetch_inspect(path: &Path) -> std::io::Result<serde_json::Value> {
    let c = std::os::unix::net::UnixStream::connect(path)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    serde_json::from_reader(c).map_err(std::io::Error::other)
}
