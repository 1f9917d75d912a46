//! The tiny HTTP side of `--metrics-listen`: `GET /metrics` (Prometheus /
//! OpenMetrics text), `GET /healthz` (the process is up) and `GET /readyz`
//! (the store and Redis are reachable). One thread, one request per
//! connection, bounded reads: it serves a scraper, not the internet.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

/// Refreshes gauges that mirror live state just before a scrape.
pub type Refresh = Box<dyn Fn(&Metrics) + Send>;
/// `Ok` when ready to serve, otherwise what is missing.
pub type Readiness = Box<dyn Fn() -> Result<(), String> + Send>;

/// Binds `addr` and serves on a background thread. Returns the bound address.
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    ready: Readiness,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("gavel-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => {
                        if let Err(e) = serve(s, &metrics, &refresh, &ready) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "metrics accept failed"),
                }
            }
        })?;
    Ok(local)
}

fn serve(
    mut s: TcpStream,
    metrics: &Metrics,
    refresh: &Refresh,
    ready: &Readiness,
) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 8192];
    let mut n = 0;
    // Read the request head (we ignore any body).
    loop {
        let r = s.read(&mut buf[n..])?;
        if r == 0 {
            break;
        }
        n += r;
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            refresh(metrics);
            (
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.encode(),
            )
        }
        ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
        ("GET" | "HEAD", "/readyz") => match ready() {
            Ok(()) => ("200 OK", "text/plain", "ready\n".to_string()),
            Err(why) => (
                "503 Service Unavailable",
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "use GET\n".to_string(),
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    s.write_all(out.as_bytes())?;
    if method != "HEAD" {
        s.write_all(body.as_bytes())?;
    }
    s.flush()
}
