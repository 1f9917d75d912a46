//! TLS transport (feature `tls`): rustls with the `ring` provider through
//! `tokio-rustls`, configured like the blocking client (see
//! `gavel_protocol::tls::client_config`). The server speaks TLS 1.2 and 1.3,
//! needs no ALPN and no client certificate (PROTOCOL.md §10).

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::Error;
use crate::transport::{Reader, Writer};

/// The TLS part of a [`Config`](crate::Config).
#[derive(Clone)]
pub(crate) struct TlsSettings {
    pub(crate) server_name: ServerName<'static>,
    pub(crate) config: Arc<rustls::ClientConfig>,
}

/// Runs the handshake on a connected socket and splits the TLS stream.
pub(crate) async fn handshake(
    tls: &TlsSettings,
    tcp: TcpStream,
) -> Result<(Reader, Writer), Error> {
    let stream = TlsConnector::from(tls.config.clone())
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| Error::Tls(e.to_string()))?;
    let (r, w) = tokio::io::split(stream);
    Ok((Box::new(r), Box::new(w)))
}
