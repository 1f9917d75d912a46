//! The driver's non-blocking byte stream: plain TCP, or TLS over it
//! (`--tls`, rustls with the ring provider).
//!
//! `read` and `write` keep the non-blocking contract of a socket
//! (`WouldBlock` when nothing can move). With TLS, `write` hands plaintext to
//! rustls and sends whatever records it can; records left over when the
//! socket is full go out on the next [`Stream::flush_pending`], which the
//! driver calls on every flush. A short TLS read does not mean the socket is
//! drained (rustls reads records in pieces), so callers must not use that
//! shortcut when [`Stream::is_tls`].

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection};

/// What `--tls` resolved to: shared by every connection of a run.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsPlan {
    /// Reads the CA PEM and checks the server name.
    pub fn new(ca_pem: &[u8], server_name: &str) -> Result<TlsPlan, String> {
        let config = gavel_protocol::tls::client_config(ca_pem).map_err(|e| e.to_string())?;
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| format!("invalid TLS server name {server_name:?}: {e}"))?;
        Ok(TlsPlan {
            config,
            server_name,
        })
    }
}

pub struct Stream {
    pub tcp: TcpStream,
    tls: Option<Box<ClientConnection>>,
}

impl Stream {
    pub fn new(tcp: TcpStream, tls: Option<&TlsPlan>) -> io::Result<Stream> {
        let tls = match tls {
            None => None,
            Some(p) => Some(Box::new(
                ClientConnection::new(p.config.clone(), p.server_name.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?,
            )),
        };
        Ok(Stream { tcp, tls })
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Sends TLS records rustls has queued, until none is left or the socket
    /// is full (not an error). No-op without TLS.
    pub fn flush_pending(&mut self) -> io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        while tls.wants_write() {
            match tls.write_tls(&mut self.tcp) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// TLS records are still waiting for the socket.
    pub fn has_pending(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Half-close: with TLS, close_notify first.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            self.flush_pending()?;
        }
        self.tcp.shutdown(Shutdown::Write)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.read(buf);
        };
        loop {
            match tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EOF without close_notify: still the end of the stream.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // No plaintext buffered: pull records from the socket
            // (`WouldBlock` here means the socket is drained).
            if tls.read_tls(&mut self.tcp)? == 0 {
                return Ok(0);
            }
            if let Err(e) = tls.process_new_packets() {
                let _ = tls.write_tls(&mut self.tcp);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages to answer, or requests the end of the
            // handshake released; what the socket does not take now goes
            // out with the driver's next flush.
            while tls.wants_write() {
                match tls.write_tls(&mut self.tcp) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(tls) = self.tls.as_mut() else {
            return self.tcp.write(buf);
        };
        let n = tls.writer().write(buf)?;
        self.flush_pending()?;
        if n == 0 && !buf.is_empty() {
            // rustls' buffer is full until the socket takes more.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending()
    }
}
