//! One physical connection: a writer task, a reader task, and the table of
//! requests in flight.
//!
//! Callers never touch the socket. `Conn::send` gives a request a fresh
//! non-zero `request_id`, records a oneshot sender under it in the pending
//! table and queues the request for the **writer task**, which encodes
//! whatever is queued into one buffer and writes it in one go (so requests
//! from many tasks are pipelined and coalesced into few syscalls). The
//! **reader task** decodes every frame the server sends: a reply completes
//! the oneshot registered under its `request_id` (replies may come in any
//! order, PROTOCOL.md §8), a push goes to the subscription registry, which
//! never blocks. A caller therefore waits only for its own reply, never for
//! replies to requests sent before it.
//!
//! When either task ends (EOF, I/O error, `Conn::close`), the connection is
//! marked closed and every pending request is completed with
//! [`Error::ConnectionLost`]: its outcome is unknown, and the retry policy
//! resends it on the next connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use gavel_protocol::client::Welcome;
use gavel_protocol::{
    DecodeError, Decoder, Frame, Request, Response, ServerMessage, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::error::Error;
use crate::subscription::Registry;
use crate::transport::{self, Reader, Writer};

/// What the reader hands a waiting caller.
pub(crate) type Reply = Result<Frame<Response>, Error>;

/// Bytes the writer gathers before it writes, and the reader's read size.
const IO_CHUNK: usize = 64 * 1024;

struct Pending {
    map: HashMap<u32, oneshot::Sender<Reply>>,
    closed: bool,
}

/// A live (or just closed) connection to the server.
pub(crate) struct Conn {
    out: mpsc::Sender<(u32, Request)>,
    pending: Mutex<Pending>,
    next_id: AtomicU32,
    closed: watch::Sender<bool>,
    welcome: Welcome,
}

impl Conn {
    /// Opens a connection: transport, then `HELLO` (with the configured
    /// token), then starts the reader and writer tasks. Bounded by the
    /// connect timeout.
    pub(crate) async fn open(cfg: &Config, subs: Arc<Registry>) -> Result<Arc<Conn>, Error> {
        let opening = async {
            let (mut r, mut w) = transport::open(cfg).await?;
            let mut buf = BytesMut::with_capacity(IO_CHUNK);
            Request::Hello {
                version: PROTOCOL_VERSION,
                token: cfg.auth_token.clone(),
            }
            .encode(1, 0, &mut buf);
            w.write_all(&buf).await?;
            w.flush().await?;
            buf.clear();
            let decoder = Decoder::new(u16::MAX as usize);
            let welcome = loop {
                if let Some(f) = decoder.decode_server(&mut buf)? {
                    match f.body {
                        ServerMessage::Response(Response::Welcome {
                            version,
                            node_id,
                            shards,
                            max_payload,
                        }) => {
                            break Welcome {
                                version,
                                node_id,
                                shards,
                                max_payload,
                            }
                        }
                        // UNAUTHORIZED, UNSUPPORTED_VERSION, or BUSY with
                        // request_id 0 from a server at its connection limit.
                        ServerMessage::Response(Response::Error { code, message }) => {
                            return Err(Error::Server { code, message })
                        }
                        other => {
                            return Err(Error::Unexpected(format!("{other:?} instead of WELCOME")))
                        }
                    }
                }
                buf.reserve(IO_CHUNK);
                if r.read_buf(&mut buf).await? == 0 {
                    return Err(Error::ConnectionLost);
                }
            };
            Ok::<_, Error>((r, w, buf, welcome))
        };
        let (r, w, buf, welcome) = tokio::time::timeout(cfg.connect_timeout, opening)
            .await
            .map_err(|_| Error::ConnectTimeout(cfg.connect_timeout))??;

        let (out_tx, out_rx) = mpsc::channel(cfg.send_queue);
        let conn = Arc::new(Conn {
            out: out_tx,
            pending: Mutex::new(Pending {
                map: HashMap::new(),
                closed: false,
            }),
            next_id: AtomicU32::new(2),
            closed: watch::Sender::new(false),
            welcome,
        });
        tokio::spawn(write_loop(conn.clone(), w, out_rx));
        tokio::spawn(read_loop(conn.clone(), r, buf, subs));
        Ok(conn)
    }

    /// The server's `WELCOME` on this connection.
    pub(crate) fn welcome(&self) -> Welcome {
        self.welcome
    }

    pub(crate) fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the connection is closed.
    pub(crate) async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Requests in flight on this connection.
    pub(crate) fn in_flight(&self) -> usize {
        self.pending.lock().unwrap().map.len()
    }

    /// Closes the connection (both tasks stop) and fails every pending
    /// request with [`Error::ConnectionLost`]. Idempotent.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
        let drained: Vec<_> = {
            let mut p = self.pending.lock().unwrap();
            p.closed = true;
            p.map.drain().map(|(_, tx)| tx).collect()
        };
        for tx in drained {
            let _ = tx.send(Err(Error::ConnectionLost));
        }
    }

    /// Queues `req` for the writer and returns the handle to await its reply.
    /// Fails with [`Error::NotConnected`] (not sent) if the connection is
    /// closed.
    pub(crate) async fn send(self: &Arc<Self>, req: Request) -> Result<PendingReply, Error> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut p = self.pending.lock().unwrap();
            if p.closed {
                return Err(Error::NotConnected { last_error: None });
            }
            let mut id;
            loop {
                id = self.next_id.fetch_add(1, Ordering::Relaxed);
                // 0 is what pushes carry; skip ids still in flight after a wrap.
                if id != 0 && !p.map.contains_key(&id) {
                    break;
                }
            }
            p.map.insert(id, tx);
            id
        };
        let guard = PendingReply {
            conn: self.clone(),
            id,
            rx,
        };
        if self.out.send((id, req)).await.is_err() {
            return Err(Error::NotConnected { last_error: None });
        }
        Ok(guard)
    }

    fn complete(&self, id: u32, reply: Reply) {
        let tx = self.pending.lock().unwrap().map.remove(&id);
        if let Some(tx) = tx {
            let _ = tx.send(reply);
        }
        // No one waits for it any more (timed out or cancelled): drop it.
    }
}

/// A request handed to a connection; await [`PendingReply::wait`]. Dropping it
/// (a timeout, a cancelled caller) forgets the request: a late reply to it is
/// discarded.
pub(crate) struct PendingReply {
    conn: Arc<Conn>,
    id: u32,
    rx: oneshot::Receiver<Reply>,
}

impl PendingReply {
    pub(crate) async fn wait(mut self) -> Reply {
        match (&mut self.rx).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectionLost),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        // Already removed when answered; removes it after a timeout.
        if let Ok(mut p) = self.conn.pending.lock() {
            p.map.remove(&self.id);
        }
    }
}

async fn write_loop(conn: Arc<Conn>, mut w: Writer, mut rx: mpsc::Receiver<(u32, Request)>) {
    let mut closed = conn.closed.subscribe();
    let mut buf = BytesMut::with_capacity(IO_CHUNK);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = closed.wait_for(|c| *c) => None,
        };
        let Some((id, req)) = first else { break };
        req.encode(id, 0, &mut buf);
        // Coalesce whatever else is queued: one write for many requests.
        while buf.len() < IO_CHUNK {
            match rx.try_recv() {
                Ok((id, req)) => req.encode(id, 0, &mut buf),
                Err(_) => break,
            }
        }
        let write = async {
            w.write_all(&buf).await?;
            w.flush().await
        };
        let ok = tokio::select! {
            r = write => r.is_ok(),
            _ = closed.wait_for(|c| *c) => false,
        };
        if !ok {
            break;
        }
        buf.clear();
        if buf.capacity() > 4 * IO_CHUNK {
            buf = BytesMut::with_capacity(IO_CHUNK);
        }
    }
    conn.close();
    let _ = w.shutdown().await;
}

async fn read_loop(conn: Arc<Conn>, mut r: Reader, mut buf: BytesMut, subs: Arc<Registry>) {
    let mut closed = conn.closed.subscribe();
    let decoder = Decoder::new(u16::MAX as usize);
    'outer: loop {
        loop {
            match decoder.decode_server(&mut buf) {
                Ok(Some(f)) => match f.body {
                    ServerMessage::Push(p) => subs.deliver(p),
                    ServerMessage::Response(body) => {
                        if f.request_id == 0 {
                            // A connection-level ERROR (BUSY at accept): the
                            // server closes the connection after it.
                            continue;
                        }
                        conn.complete(
                            f.request_id,
                            Ok(Frame {
                                request_id: f.request_id,
                                flags: f.flags,
                                body,
                            }),
                        );
                    }
                },
                Ok(None) => break,
                // Skipped: a frame type this client does not know (§6.4).
                Err(DecodeError::UnknownType { .. }) => {}
                Err(
                    e @ DecodeError::Malformed {
                        request_id, name, ..
                    },
                ) => {
                    if request_id != 0 {
                        let err = if name == "ERROR" {
                            // An ERROR code we do not know: outcome unknown.
                            Error::UnknownServerError
                        } else {
                            Error::Decode(e)
                        };
                        conn.complete(request_id, Err(err));
                    }
                }
                // Cannot happen with a 65535-byte limit; framing is lost anyway.
                Err(DecodeError::TooLarge { .. }) => break 'outer,
            }
        }
        if buf.capacity() - buf.len() < IO_CHUNK / 4 {
            buf.reserve(IO_CHUNK);
        }
        let n = tokio::select! {
            n = r.read_buf(&mut buf) => n,
            _ = closed.wait_for(|c| *c) => break,
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    conn.close();
}
