//! The HTTP side of `--metrics-listen`: `GET /metrics` (Prometheus /
//! OpenMetrics text), `GET /healthz` (the process is up) and `GET /readyz`
//! (the store and Redis are reachable).
//!
//! hyper (HTTP/1.x) on a current-thread tokio runtime of its own, on one
//! thread: every connection is a task, so a slow or silent client holds
//! only its own connection and never delays another scrape or probe.
//! Bounded: the request head must arrive within [`HEADER_READ_TIMEOUT`],
//! a connection lives at most [`CONNECTION_TIMEOUT`] and serves one
//! request, and at most [`MAX_CONNECTIONS`] are open at once (more are
//! closed on accept). It serves a scraper, not the internet.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Refreshes gauges that mirror live state just before a scrape.
pub type Refresh = Box<dyn Fn(&Metrics) + Send + Sync>;
/// `Ok` when ready to serve, otherwise what is missing.
pub type Readiness = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Time allowed for a whole request head, counted from accept.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection may live, request and response together.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections served at once; one accepted beyond this is closed at once.
pub const MAX_CONNECTIONS: usize = 64;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct Endpoints {
    metrics: Arc<Metrics>,
    refresh: Refresh,
    ready: Readiness,
}

/// Binds `addr` and serves on a background thread. Returns the bound address.
pub fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    refresh: Refresh,
    ready: Readiness,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = {
        let _in_runtime = rt.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let endpoints = Arc::new(Endpoints {
        metrics,
        refresh,
        ready,
    });
    std::thread::Builder::new()
        .name("gavel-metrics".into())
        .spawn(move || rt.block_on(accept_loop(listener, endpoints)))?;
    Ok(local)
}

async fn accept_loop(listener: tokio::net::TcpListener, endpoints: Arc<Endpoints>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(false)
        .max_buf_size(16 * 1024);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "metrics: {MAX_CONNECTIONS} connections open, closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let endpoints = endpoints.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let resp = respond(&endpoints, &req);
            async move { Ok::<_, Infallible>(resp) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics request failed"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
            }
        });
    }
}

fn respond(e: &Endpoints, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            (e.refresh)(&e.metrics);
            reply(StatusCode::OK, OPENMETRICS, e.metrics.encode())
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => match (e.ready)() {
            Ok(()) => reply(StatusCode::OK, "text/plain", "ready\n"),
            Err(why) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// A complete response; hyper adds Content-Length and `connection: close`
/// and leaves the body out for HEAD.
fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}
