//! Opening the byte stream under a connection: resolve, TCP connect (with
//! `TCP_NODELAY`), then TLS when configured. The result is split into a
//! read half for the reader task and a write half for the writer task.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{lookup_host, TcpStream};

use crate::config::Config;
use crate::error::Error;

/// The read half of a connection's stream.
pub(crate) type Reader = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection's stream.
pub(crate) type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// Connects to `cfg.addr`, trying each address it resolves to in turn.
pub(crate) async fn open(cfg: &Config) -> Result<(Reader, Writer), Error> {
    let connect_err = |source| Error::Connect {
        addr: cfg.addr.clone(),
        source,
    };
    let mut last = None;
    let mut tcp = None;
    for addr in lookup_host(&cfg.addr).await.map_err(connect_err)? {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let tcp = match tcp {
        Some(s) => s,
        None => {
            return Err(connect_err(last.unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
            })))
        }
    };
    tcp.set_nodelay(true)?;
    #[cfg(feature = "tls")]
    if let Some(tls) = &cfg.tls {
        return crate::tls::handshake(tls, tcp).await;
    }
    let (r, w) = tcp.into_split();
    Ok((Box::new(r), Box::new(w)))
}
