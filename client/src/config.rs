//! Client configuration: where to connect, timeouts, reconnect and retry
//! behaviour, authentication, TLS and buffering.
//!
//! [`Config`] is a plain builder; [`Client::connect`](crate::Client::connect)
//! and [`Pool::connect`](crate::Pool::connect) take it by value.

use std::time::Duration;

use bytes::Bytes;

use crate::retry::{Backoff, RetryPolicy};

/// Settings for a [`Client`](crate::Client) (and each connection of a
/// [`Pool`](crate::Pool)).
#[derive(Clone)]
pub struct Config {
    pub(crate) addr: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) reconnect: Backoff,
    pub(crate) retry: RetryPolicy,
    pub(crate) auth_token: Bytes,
    pub(crate) push_buffer: usize,
    pub(crate) send_queue: usize,
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsSettings>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Config");
        d.field("addr", &self.addr)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("reconnect", &self.reconnect)
            .field("retry", &self.retry)
            .field(
                "auth_token",
                &(!self.auth_token.is_empty()).then_some("<set>"),
            )
            .field("push_buffer", &self.push_buffer)
            .field("send_queue", &self.send_queue);
        #[cfg(feature = "tls")]
        d.field("tls", &self.tls.as_ref().map(|t| t.server_name.to_str()));
        d.finish()
    }
}

impl Config {
    /// Defaults for a server at `addr` (`host:port`, resolved at every
    /// connect): connect timeout 3 s, request timeout 5 s, reconnect backoff
    /// 50 ms doubling to 2 s, [`RetryPolicy::default`], no token, no TLS,
    /// 1024 buffered pushes per subscription.
    pub fn new(addr: impl Into<String>) -> Config {
        Config {
            addr: addr.into(),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            reconnect: Backoff::default(),
            retry: RetryPolicy::default(),
            auth_token: Bytes::new(),
            push_buffer: 1024,
            send_queue: 4096,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// The server address this configuration connects to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Bound on opening a connection: TCP connect, TLS handshake and the
    /// HELLO/WELCOME exchange together.
    pub fn connect_timeout(mut self, d: Duration) -> Config {
        self.connect_timeout = d;
        self
    }

    /// Bound on one attempt of a request: waiting for a connection, sending,
    /// and waiting for the reply. Retries (see [`Config::retry`]) get a fresh
    /// bound each.
    pub fn request_timeout(mut self, d: Duration) -> Config {
        self.request_timeout = d;
        self
    }

    /// Delay between reconnect attempts after a connection is lost. The
    /// client reconnects for as long as any handle to it lives.
    pub fn reconnect_backoff(mut self, b: Backoff) -> Config {
        self.reconnect = b;
        self
    }

    /// Which failed requests are resent; [`RetryPolicy::none`] turns retries off.
    pub fn retry(mut self, p: RetryPolicy) -> Config {
        self.retry = p;
        self
    }

    /// Token sent in the `HELLO` that opens every connection (at most 255
    /// bytes). The client always sends `HELLO` first; without a token it is
    /// empty, which a server without authentication ignores.
    pub fn auth_token(mut self, token: impl AsRef<[u8]>) -> Config {
        self.auth_token = Bytes::copy_from_slice(token.as_ref());
        self
    }

    /// Pushes kept for a [`Subscription`](crate::Subscription) whose consumer
    /// does not keep up. Past it the oldest are dropped and the stream yields
    /// [`Event::Lagged`](crate::Event::Lagged). At least 1.
    pub fn push_buffer(mut self, n: usize) -> Config {
        self.push_buffer = n.max(1);
        self
    }

    /// Requests that may wait for the connection's writer task; callers past
    /// it wait for room (back-pressure). At least 1.
    pub fn send_queue(mut self, n: usize) -> Config {
        self.send_queue = n.max(1);
        self
    }

    /// Speak TLS, trusting the CA certificates in `ca_pem` and checking the
    /// server's certificate against `server_name` (a DNS name or an IP
    /// address), as `gavel_protocol::Client::connect_tls` does.
    #[cfg(feature = "tls")]
    pub fn tls(self, server_name: &str, ca_pem: &[u8]) -> Result<Config, crate::Error> {
        let config = gavel_protocol::tls::client_config(ca_pem)
            .map_err(|e| crate::Error::Config(e.to_string()))?;
        self.tls_config(server_name, config)
    }

    /// Speak TLS with a prepared rustls configuration.
    #[cfg(feature = "tls")]
    pub fn tls_config(
        mut self,
        server_name: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Config, crate::Error> {
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| crate::Error::Config(format!("TLS server name: {e}")))?;
        self.tls = Some(crate::tls::TlsSettings {
            server_name,
            config,
        });
        Ok(self)
    }
}
