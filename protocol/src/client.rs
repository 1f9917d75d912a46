//! A small blocking client over `std::net::TcpStream`.
//!
//! Typed calls (`bid`, `buy`, …) send one request and wait for its reply.
//! Pipelined use: [`Client::send`] many requests, [`Client::flush`], then
//! [`Client::recv`] replies (or [`Client::recv_for`] one `request_id`).
//! Pushes that arrive while waiting for a reply are queued for
//! [`Client::next_push`].
//!
//! With the `tls` feature, [`Client::connect_tls`] speaks TLS (rustls, ring
//! provider) to a server started with `--tls-cert`.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::codec::Decoder;
use crate::error::DecodeError;
use crate::frame::{Frame, PROTOCOL_VERSION};
use crate::message::{
    AuctionInfo, BidRequest, BuyRequest, ErrorCode, OpenAuctionRequest, OpenSaleRequest, Push,
    Request, Response, ResultPayload, SaleInfo, ServerMessage,
};

/// Errors of the blocking client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("undecodable frame from server: {0}")]
    Decode(#[from] DecodeError),
    #[error("server answered ERROR {}: {message}", code.name())]
    Server { code: ErrorCode, message: String },
    #[error("connection closed by server")]
    Closed,
    #[error("unexpected reply: {0}")]
    Unexpected(String),
}

/// A `RESULT` together with its `REPLAYED` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub result: ResultPayload,
    pub replayed: bool,
}

/// `WELCOME` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    pub node_id: u16,
    pub shards: u16,
    pub max_payload: u16,
}

/// The byte stream under a [`Client`]: plain TCP or TLS over TCP.
enum Transport {
    Plain(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Transport {
    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.get_ref(),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => match s.read(buf) {
                // A peer that closes without close_notify: same as a TCP EOF.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                r => r,
            },
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            #[cfg(feature = "tls")]
            Transport::Tls(s) => s.flush(),
        }
    }
}

pub struct Client {
    stream: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    decoder: Decoder,
    next_id: u32,
    pushes: VecDeque<Push>,
    /// Replies read while looking for another `request_id`.
    parked: HashMap<u32, Frame<Response>>,
    parked_order: VecDeque<u32>,
}

impl Client {
    pub fn connect<A: ToSocketAddrs>(addr: A) -> Result<Client, ClientError> {
        Ok(Client::from_stream(TcpStream::connect(addr)?)?)
    }

    pub fn from_stream(stream: TcpStream) -> io::Result<Client> {
        stream.set_nodelay(true)?;
        Ok(Client::with_transport(Transport::Plain(stream)))
    }

    /// Connects over TLS, trusting the CA certificates in `ca_pem` (PEM), and
    /// checks the server's certificate against `server_name` (a DNS name or
    /// an IP address). The handshake is done before this returns.
    #[cfg(feature = "tls")]
    pub fn connect_tls<A: ToSocketAddrs>(
        addr: A,
        server_name: &str,
        ca_pem: &[u8],
    ) -> Result<Client, ClientError> {
        let config = crate::tls::client_config(ca_pem)?;
        Client::from_stream_tls(TcpStream::connect(addr)?, server_name, config)
    }

    /// TLS over an already connected socket with a prepared configuration
    /// (see [`crate::tls::client_config`]); handshakes before returning.
    #[cfg(feature = "tls")]
    pub fn from_stream_tls(
        mut stream: TcpStream,
        server_name: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        stream.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut stream)?;
        }
        Ok(Client::with_transport(Transport::Tls(Box::new(
            rustls::StreamOwned::new(conn, stream),
        ))))
    }

    fn with_transport(stream: Transport) -> Client {
        Client {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(16 * 1024),
            decoder: Decoder::new(u16::MAX as usize),
            next_id: 1,
            pushes: VecDeque::new(),
            parked: HashMap::new(),
            parked_order: VecDeque::new(),
        }
    }

    /// True when this client speaks TLS.
    pub fn is_tls(&self) -> bool {
        !matches!(self.stream, Transport::Plain(_))
    }

    /// Read timeout for every blocking wait (`None` waits forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.stream.tcp().set_read_timeout(t)
    }

    /// The TCP socket (under TLS, when the client speaks TLS).
    pub fn stream(&self) -> &TcpStream {
        self.stream.tcp()
    }

    /// Buffers a request and returns the `request_id` it was given.
    pub fn send(&mut self, req: &Request) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        req.encode(id, 0, &mut self.wbuf);
        id
    }

    /// Buffers raw bytes (for tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.wbuf.extend_from_slice(bytes);
    }

    /// Writes everything buffered by `send`.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf)?;
            self.stream.flush()?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Half-closes the write side, so the server sees EOF after what was sent.
    pub fn shutdown_write(&mut self) -> Result<(), ClientError> {
        self.flush()?;
        #[cfg(feature = "tls")]
        if let Transport::Tls(s) = &mut self.stream {
            s.conn.send_close_notify();
            s.flush()?;
        }
        self.stream.tcp().shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }

    fn read_frame(&mut self) -> Result<Frame<ServerMessage>, ClientError> {
        loop {
            if let Some(f) = self.decoder.decode_server(&mut self.rbuf)? {
                return Ok(f);
            }
            self.rbuf.reserve(16 * 1024);
            let n = read_into(&mut self.stream, &mut self.rbuf)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
        }
    }

    /// Next response in arrival order (pushes are queued, not returned).
    pub fn recv(&mut self) -> Result<Frame<Response>, ClientError> {
        if let Some(id) = self.parked_order.pop_front() {
            if let Some(f) = self.parked.remove(&id) {
                return Ok(f);
            }
        }
        loop {
            let f = self.read_frame()?;
            match f.body {
                ServerMessage::Push(p) => self.pushes.push_back(p),
                ServerMessage::Response(r) => {
                    return Ok(Frame {
                        request_id: f.request_id,
                        flags: f.flags,
                        body: r,
                    })
                }
            }
        }
    }

    /// The response to `request_id`, parking any other responses read meanwhile.
    pub fn recv_for(&mut self, request_id: u32) -> Result<Frame<Response>, ClientError> {
        if let Some(f) = self.parked.remove(&request_id) {
            self.parked_order.retain(|&id| id != request_id);
            return Ok(f);
        }
        loop {
            let f = self.read_frame()?;
            match f.body {
                ServerMessage::Push(p) => self.pushes.push_back(p),
                ServerMessage::Response(r) => {
                    let f = Frame {
                        request_id: f.request_id,
                        flags: f.flags,
                        body: r,
                    };
                    if f.request_id == request_id {
                        return Ok(f);
                    }
                    self.parked_order.push_back(f.request_id);
                    self.parked.insert(f.request_id, f);
                }
            }
        }
    }

    /// Next push, waiting for one if none is queued (subject to the timeout).
    pub fn next_push(&mut self) -> Result<Push, ClientError> {
        if let Some(p) = self.pushes.pop_front() {
            return Ok(p);
        }
        match self.read_frame()?.body {
            ServerMessage::Push(p) => Ok(p),
            ServerMessage::Response(r) => Err(ClientError::Unexpected(format!(
                "response {r:?} while waiting for a push"
            ))),
        }
    }

    /// Pushes received so far and not yet taken by [`Client::next_push`].
    pub fn queued_pushes(&self) -> usize {
        self.pushes.len()
    }

    /// Sends one request and waits for its reply, whatever it is.
    pub fn call(&mut self, req: &Request) -> Result<Frame<Response>, ClientError> {
        let id = self.send(req);
        self.flush()?;
        self.recv_for(id)
    }

    fn call_result(&mut self, req: &Request) -> Result<Outcome, ClientError> {
        let f = self.call(req)?;
        let replayed = f.replayed();
        match f.body {
            Response::Result(result) => Ok(Outcome { result, replayed }),
            other => Err(unexpected(other)),
        }
    }

    pub fn hello(&mut self, token: &[u8]) -> Result<Welcome, ClientError> {
        let req = Request::Hello {
            version: PROTOCOL_VERSION,
            token: Bytes::copy_from_slice(token),
        };
        match self.call(&req)?.body {
            Response::Welcome {
                version,
                node_id,
                shards,
                max_payload,
            } => Ok(Welcome {
                version,
                node_id,
                shards,
                max_payload,
            }),
            other => Err(unexpected(other)),
        }
    }

    pub fn ping(&mut self, payload: &[u8]) -> Result<Bytes, ClientError> {
        match self
            .call(&Request::Ping(Bytes::copy_from_slice(payload)))?
            .body
        {
            Response::Pong(b) => Ok(b),
            other => Err(unexpected(other)),
        }
    }

    pub fn open_auction(
        &mut self,
        auction_id: u64,
        reserve: u64,
        min_increment: u64,
        ends_at_ms: u64,
    ) -> Result<Outcome, ClientError> {
        self.call_result(&Request::OpenAuction(OpenAuctionRequest {
            auction_id,
            reserve,
            min_increment,
            ends_at_ms,
        }))
    }

    pub fn bid(
        &mut self,
        auction_id: u64,
        bidder_id: u64,
        amount: u64,
        bid_id: u64,
    ) -> Result<Outcome, ClientError> {
        self.call_result(&Request::Bid(BidRequest {
            auction_id,
            bidder_id,
            amount,
            bid_id,
        }))
    }

    pub fn close_auction(&mut self, auction_id: u64) -> Result<Outcome, ClientError> {
        self.call_result(&Request::CloseAuction { auction_id })
    }

    /// `Ok(None)` when the server answers `NOT_FOUND`.
    pub fn get_auction(&mut self, auction_id: u64) -> Result<Option<AuctionInfo>, ClientError> {
        match self.call(&Request::GetAuction { auction_id })?.body {
            Response::Auction(a) => Ok(Some(a)),
            Response::Result(r) if r.status == crate::Status::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    pub fn open_sale(
        &mut self,
        sku_id: u64,
        stock: u64,
        per_buyer_limit: u32,
        starts_at_ms: u64,
        ends_at_ms: u64,
    ) -> Result<Outcome, ClientError> {
        self.call_result(&Request::OpenSale(OpenSaleRequest {
            sku_id,
            stock,
            per_buyer_limit,
            starts_at_ms,
            ends_at_ms,
        }))
    }

    pub fn buy(
        &mut self,
        sku_id: u64,
        buyer_id: u64,
        quantity: u32,
        order_id: u64,
    ) -> Result<Outcome, ClientError> {
        self.call_result(&Request::Buy(BuyRequest {
            sku_id,
            buyer_id,
            quantity,
            order_id,
        }))
    }

    /// `Ok(None)` when the server answers `NOT_FOUND`.
    pub fn get_sale(&mut self, sku_id: u64) -> Result<Option<SaleInfo>, ClientError> {
        match self.call(&Request::GetSale { sku_id })?.body {
            Response::Sale(s) => Ok(Some(s)),
            Response::Result(r) if r.status == crate::Status::NotFound => Ok(None),
            other => Err(unexpected(other)),
        }
    }

    pub fn subscribe(&mut self, auction_id: u64) -> Result<Outcome, ClientError> {
        self.call_result(&Request::Subscribe { auction_id })
    }

    pub fn unsubscribe(&mut self, auction_id: u64) -> Result<Outcome, ClientError> {
        self.call_result(&Request::Unsubscribe { auction_id })
    }
}

fn unexpected(r: Response) -> ClientError {
    match r {
        Response::Error { code, message } => ClientError::Server { code, message },
        other => ClientError::Unexpected(format!("{other:?}")),
    }
}

/// Reads once into the spare capacity of `buf`. A read interrupted by a
/// signal (EINTR, e.g. a child process of the caller exiting) is retried,
/// as `Read::read_exact` does: it is not an error of the connection.
fn read_into(stream: &mut Transport, buf: &mut BytesMut) -> io::Result<usize> {
    let start = buf.len();
    let cap = buf.capacity();
    buf.resize(cap, 0);
    let r = loop {
        match stream.read(&mut buf[start..]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    let n = *r.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    r
}
