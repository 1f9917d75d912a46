//! One client connection's state inside an event loop.
//!
//! Buffers are borrowed from the loop's [`BufferPool`] only while they hold
//! bytes. Reads go straight into the spare capacity of the read buffer
//! (`read(2)` on the raw fd), writes drain the write buffer with one `write(2)`
//! per loop turn.
//!
//! With TLS on, the connection also holds a `rustls::ServerConnection`: reads
//! go through `read_tls` + `process_new_packets` and the decrypted bytes land
//! in the same read buffer; the write buffer keeps plaintext until rustls
//! takes it (`writer()`), and `write_tls` sends the records. Without TLS the
//! only difference is one `None` check per read and per flush.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use gavel_protocol::ErrorCode;
use mio::net::TcpStream;
use rustls::ServerConnection;

use super::buffer_pool::BufferPool;

pub struct Connection {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub gen: u32,
    pub rbuf: Option<BytesMut>,
    pub wbuf: Option<BytesMut>,
    /// A valid HELLO was received (or none is required).
    pub authed: bool,
    /// Requests sent to shards and not answered yet.
    pub in_flight: u32,
    /// Bit i set: this connection subscribed to something on shard i.
    pub sub_shards: u64,
    /// Subscriptions the shards hold for this connection (kept from the
    /// replies: `Outgoing::subs`, AUCTION_CLOSED pushes).
    pub subs: u32,
    /// SUBSCRIBEs sent to shards and not answered yet.
    pub subs_pending: u32,
    /// Since when the read buffer has held an incomplete frame — or, until
    /// the first complete frame, since accept: the idle clock starts there.
    pub partial_since: Option<Instant>,
    /// No complete frame has been read yet.
    pub silent: bool,
    /// Reading stopped because of the in-flight or output cap, or the
    /// server-wide output budget.
    pub paused: bool,
    /// Listed by the event loop as stopped by `--output-budget`.
    pub over_budget: bool,
    /// Unsent bytes as last counted in the server-wide total.
    pub accounted: usize,
    /// The peer sent EOF: answer what is in flight, then close.
    pub read_eof: bool,
    /// A fatal error to send once in-flight requests are answered, then close.
    pub fatal: Option<(u32, ErrorCode, &'static str)>,
    /// Close as soon as the write buffer is empty.
    pub close_after_flush: bool,
    /// The output ends with a closing ERROR (`fatal`).
    pub error_sent: bool,
    /// Half-closed after a closing ERROR: what the peer still sends is read
    /// and dropped (at most `discard_left` more bytes) until it is done or
    /// time is up, so the close is a FIN the ERROR arrives before, not a
    /// reset that may destroy it.
    pub lingering: bool,
    pub discard_left: usize,
    /// Already in the loop's list of connections to flush this turn.
    pub dirty: bool,
    /// The TLS session, when the server runs with `--tls-cert`.
    pub tls: Option<Box<ServerConnection>>,
    /// Per-connection rate-limit bucket (unused without `--rate-per-conn`).
    pub bucket: super::rate_limit::Bucket,
    /// This connection counts towards its address's `--max-connections-per-ip`.
    pub counted_ip: bool,
}

pub enum ReadResult {
    /// Bytes were read (or the call was interrupted). `drained`: the read
    /// did not fill the space offered, so the socket held no more then.
    Data {
        drained: bool,
    },
    Eof,
    WouldBlock,
}

impl Connection {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        gen: u32,
        authed: bool,
        tls: Option<Box<ServerConnection>>,
        bucket: super::rate_limit::Bucket,
    ) -> Self {
        Connection {
            stream,
            peer,
            gen,
            rbuf: None,
            wbuf: None,
            authed,
            in_flight: 0,
            sub_shards: 0,
            subs: 0,
            subs_pending: 0,
            // A peer must send its first complete frame (a TLS peer finish
            // its handshake, then that) within --idle-timeout of accept,
            // whether it sends nothing or trickles bytes (slowloris).
            partial_since: Some(Instant::now()),
            silent: true,
            paused: false,
            over_budget: false,
            accounted: 0,
            read_eof: false,
            fatal: None,
            close_after_flush: false,
            error_sent: false,
            lingering: false,
            discard_left: 0,
            dirty: false,
            tls,
            bucket,
            counted_ip: false,
        }
    }

    pub fn unsent(&self) -> usize {
        self.wbuf.as_ref().map_or(0, |b| b.len())
    }

    /// The write buffer, borrowed from the pool if needed.
    pub fn out(&mut self, pool: &mut BufferPool) -> &mut BytesMut {
        self.wbuf.get_or_insert_with(|| pool.get())
    }

    /// True when no more input should be accepted for now.
    pub fn stop_reading(&self) -> bool {
        self.paused || self.read_eof || self.fatal.is_some() || self.close_after_flush
    }

    /// One `read(2)` into the read buffer's spare capacity.
    pub fn read_once(&mut self, pool: &mut BufferPool) -> io::Result<ReadResult> {
        if self.tls.is_some() {
            return self.read_once_tls(pool);
        }
        let buf = self.rbuf.get_or_insert_with(|| pool.get());
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
        let spare = buf.spare_capacity_mut();
        // SAFETY: read(2) writes at most `spare.len()` bytes into memory we own
        // and returns how many; only those are marked initialised.
        let n = unsafe {
            libc::read(
                self.stream.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(ReadResult::WouldBlock),
                io::ErrorKind::Interrupted => Ok(ReadResult::Data { drained: false }),
                _ => Err(e),
            };
        }
        if n == 0 {
            return Ok(ReadResult::Eof);
        }
        let drained = (n as usize) < spare.len();
        // SAFETY: the kernel initialised `n` bytes past `len`.
        unsafe { buf.set_len(buf.len() + n as usize) };
        Ok(ReadResult::Data { drained })
    }

    /// One `read(2)` of TLS records, decrypted into the read buffer.
    fn read_once_tls(&mut self, pool: &mut BufferPool) -> io::Result<ReadResult> {
        let tls = self.tls.as_mut().expect("checked");
        let n = match tls.read_tls(&mut &self.stream) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadResult::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                return Ok(ReadResult::Data { drained: false })
            }
            Err(e) => return Err(e),
        };
        let state = match tls.process_new_packets() {
            Ok(s) => s,
            Err(e) => {
                // Send the alert rustls queued, best effort, then give up.
                let _ = tls.write_tls(&mut &self.stream);
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        };
        let avail = state.plaintext_bytes_to_read();
        let closed = state.peer_has_closed();
        if avail > 0 {
            let buf = self.rbuf.get_or_insert_with(|| pool.get());
            let start = buf.len();
            buf.resize(start + avail, 0);
            let got = match tls.reader().read(&mut buf[start..]) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                Err(e) => {
                    buf.truncate(start);
                    return Err(e);
                }
            };
            buf.truncate(start + got);
        }
        if n == 0 || (closed && avail == 0) {
            return Ok(ReadResult::Eof);
        }
        // TLS: rustls buffers records, so read until the socket says
        // WouldBlock, as before.
        Ok(ReadResult::Data { drained: false })
    }

    /// TLS records (handshake, alerts) are waiting to be sent.
    pub fn tls_wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.wants_write())
    }

    /// Writes as much of the write buffer as the socket takes. Returns true
    /// when everything was written (the buffer went back to the pool).
    pub fn flush(&mut self, pool: &mut BufferPool) -> io::Result<bool> {
        if self.tls.is_some() {
            return self.flush_tls(pool);
        }
        let Some(buf) = self.wbuf.as_mut() else {
            return Ok(true);
        };
        while !buf.is_empty() {
            let n = unsafe { libc::write(self.stream.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(false),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            buf.advance(n as usize);
        }
        if let Some(b) = self.wbuf.take() {
            pool.put(b);
        }
        Ok(true)
    }

    /// Hands plaintext to rustls as far as its buffer limit allows and sends
    /// the records, until everything is out or the socket is full.
    fn flush_tls(&mut self, pool: &mut BufferPool) -> io::Result<bool> {
        let tls = self.tls.as_mut().expect("checked");
        loop {
            // During the handshake rustls holds the plaintext until it can
            // encrypt it; the read path flushes again once the handshake is done.
            if let Some(buf) = self.wbuf.as_mut() {
                if !buf.is_empty() {
                    let n = tls.writer().write(buf)?;
                    buf.advance(n);
                }
            }
            if !tls.wants_write() {
                break;
            }
            match tls.write_tls(&mut &self.stream) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let rest = self.wbuf.as_ref().map_or(0, |b| b.len());
        if rest > 0 {
            // rustls' buffer is full and waits on the peer (handshake).
            return Ok(false);
        }
        if let Some(b) = self.wbuf.take() {
            pool.put(b);
        }
        Ok(true)
    }

    /// After a closing ERROR is out: ends our side of the stream (a TLS
    /// `close_notify`, then a FIN) but keeps reading, so unread input does
    /// not turn the close into a reset.
    pub fn half_close(&mut self, discard: usize, pool: &mut BufferPool) {
        self.send_close_notify();
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        self.lingering = true;
        self.discard_left = discard;
        if let Some(b) = self.rbuf.take() {
            pool.put(b);
        }
    }

    /// While lingering: reads and drops what the peer sends. True when it
    /// is done (EOF, an error) or the byte budget is spent: close now.
    pub fn discard_input(&mut self) -> bool {
        let mut scratch = [0u8; 16 * 1024];
        loop {
            // SAFETY: read(2) writes at most `scratch.len()` bytes into it.
            let n = unsafe {
                libc::read(
                    self.stream.as_raw_fd(),
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                )
            };
            if n < 0 {
                match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock => return false,
                    io::ErrorKind::Interrupted => continue,
                    _ => return true,
                }
            }
            if n == 0 {
                return true;
            }
            self.discard_left = self.discard_left.saturating_sub(n as usize);
            if self.discard_left == 0 {
                return true;
            }
        }
    }

    /// Before closing: tell a TLS peer the stream ends here (best effort).
    pub fn send_close_notify(&mut self) {
        if let Some(tls) = self.tls.as_mut() {
            tls.send_close_notify();
            while tls.wants_write() {
                if tls.write_tls(&mut &self.stream).is_err() {
                    break;
                }
            }
        }
    }

    /// Gives the read buffer back when it holds nothing, and tracks since when
    /// the connection has made no progress on an incomplete frame: a client
    /// that keeps completing frames is never timed out, one that trickles a
    /// header is.
    pub fn settle_read_buffer(&mut self, pool: &mut BufferPool, now: Instant, progressed: bool) {
        self.silent &= !progressed;
        if self.silent || self.tls.as_ref().is_some_and(|t| t.is_handshaking()) {
            // The clock started at accept and only a first frame (after a
            // finished handshake) stops it.
            self.partial_since.get_or_insert(now);
            if let Some(b) = self.rbuf.take_if(|b| b.is_empty()) {
                pool.put(b);
            }
            return;
        }
        match &self.rbuf {
            Some(b) if b.is_empty() => {
                pool.put(self.rbuf.take().expect("checked"));
                self.partial_since = None;
            }
            Some(_) if progressed => self.partial_since = Some(now),
            Some(_) => {
                self.partial_since.get_or_insert(now);
            }
            None => self.partial_since = None,
        }
    }

    pub fn release_buffers(&mut self, pool: &mut BufferPool) {
        if let Some(b) = self.rbuf.take() {
            pool.put(b);
        }
        if let Some(b) = self.wbuf.take() {
            pool.put(b);
        }
    }
}
