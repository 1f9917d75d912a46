//! The event loop: accepts connections, decodes requests, hands them to
//! shards in one batch per shard per turn, and writes every reply a
//! connection got in a turn with one `write(2)`.
//!
//! One turn, top to bottom:
//! 1. `poll` for socket readiness, a waker (shard replies, shutdown) or a
//!    timeout — through [`Inbox::poll`], which does not sleep when replies
//!    are waiting and lets shards skip the waker while the loop is awake;
//! 2. accept new connections; read and decode ready ones (PING, HELLO and
//!    protocol errors are answered here; the rest becomes shard commands);
//! 3. take the shard replies that arrived and encode them into write buffers;
//! 4. send each shard its batch (or answer BUSY when its queue is full);
//! 5. flush the connections that have output; close the ones that are done.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gavel_protocol::frame::msg_type;
use gavel_protocol::message::{
    encode_auction, encode_error, encode_pong, encode_result, encode_sale,
};
use gavel_protocol::{Decoder, ErrorCode, Frame, Push, Request, Response, PROTOCOL_VERSION};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::auth::AuthTokens;
use super::buffer_pool::BufferPool;
use super::connection::{Connection, ReadResult};
use super::log_limit::{LogLimiter, Noisy};
use super::rate_limit::{Bucket, Limit, RateSpec, SharedBuckets};
use crate::engine::command::{shard_of, Command, ConnRef, Op, Outgoing, Reply};
use crate::engine::limits::Cap;
use crate::metrics::{LoopStats, Metrics};
use crate::outbox::Inbox;
use crate::shard::{ShardHandle, ShardMsg};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;
/// After a closing ERROR, how long and how much of the peer's further input
/// is read and dropped before the connection is closed regardless.
const LINGER: Duration = Duration::from_secs(1);

/// How far a readable connection is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Until a read returns less than the space offered: the socket was
    /// empty then, and with edge-triggered epoll later bytes raise a new
    /// event (tokio's TcpStream reasons the same way). Saves the read that
    /// would only return EAGAIN — one syscall per request at pipeline 1.
    Drained,
    /// Until EAGAIN: when the peer closed (a short read may leave the EOF
    /// unread, and no new event would come) or after a pause (no event
    /// announces bytes that waited while we did not read).
    WouldBlock,
}
const LINGER_BYTES: usize = 256 * 1024;

/// Read-only settings and handles shared by all event loops.
pub struct Shared {
    pub shards: Vec<ShardHandle>,
    pub shard_queue: usize,
    /// Accepted HELLO tokens; `None`: no auth required.
    pub auth: Option<Arc<AuthTokens>>,
    pub max_payload: u16,
    pub max_in_flight: u32,
    pub output_cap: usize,
    /// `--output-budget`: unsent bytes across every connection of every
    /// loop past which connections holding unsent output are not read.
    pub output_budget: usize,
    /// Unsent bytes across all connections, as of their last flush.
    pub unsent_total: AtomicUsize,
    pub subscriber_cap: usize,
    /// `--max-subscriptions-per-conn`.
    pub max_subscriptions_per_conn: u32,
    pub send_buffer: usize,
    pub max_connections: usize,
    /// `--max-connections-per-ip` (0 = no limit).
    pub max_connections_per_ip: u32,
    /// Open connections per peer address, kept only when the cap is on.
    /// Touched on accept and close only.
    pub per_ip: Mutex<HashMap<IpAddr, u32>>,
    /// Connections refused by `--max-connections-per-ip`.
    pub refused_per_ip: AtomicU64,
    pub rate_per_conn: Option<RateSpec>,
    /// `--rate-per-bidder`: the buckets by bidder/buyer id, one set for all
    /// loops (so a bidder spread over loops is limited as one).
    pub bidders: Option<SharedBuckets>,
    /// The origin of every loop's clock (rate limits, latency stamps): one
    /// for all, since buckets are shared.
    pub epoch: Instant,
    /// Set with `--tls-cert`: every accepted connection speaks TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub idle_timeout: Duration,
    /// Per kind of noisy log line, at most one line and one summary per
    /// `--log-summary-interval`, for all event loops together.
    pub logs: LogLimiter,
    pub shutdown_grace: Duration,
    pub node_id: u16,
    pub shutdown: Arc<AtomicBool>,
    /// Connections counted against `--max-connections`: reserved at accept
    /// before anything else, released when the client can see the end (see
    /// [`EventLoop::linger`]).
    pub open_connections: AtomicUsize,
    /// Connections half-closed after a closing ERROR, no longer counted in
    /// `open_connections`; at most `max_connections` of them.
    pub lingering: AtomicUsize,
    pub metrics: Arc<Metrics>,
}

/// Per-loop state other than the connections themselves, split out so a
/// connection and this context can be borrowed mutably at once.
struct Ctx {
    io: u16,
    shared: Arc<Shared>,
    decoder: Decoder,
    pool: BufferPool,
    /// Commands decoded this turn, per shard.
    pending: Vec<Vec<Command>>,
    /// Connections closed this turn that subscribed on a shard: the notice
    /// goes out after the shard's batch, which may hold their last
    /// SUBSCRIBE (sent first, it would leave that subscription for good).
    disconnects: Vec<(usize, ConnRef)>,
    /// Connections with new output this turn.
    dirty: Vec<usize>,
    /// Connections not read because of `--output-budget` (slot, generation).
    over_budget: Vec<(usize, u32)>,
    shutting_down: bool,
    /// Counts of this turn, added to the shared metrics once per turn.
    stats: LoopStats,
    /// `Shared::epoch`: origin of the microsecond clock (request latency
    /// stamps) and of the nanosecond one (rate limits).
    epoch: Instant,
    /// When the current read batch started, in µs since `epoch`.
    turn_us: u32,
    /// The same instant in ns, for rate limits.
    now_ns: u64,
    /// `--rate-per-conn`, the bucket itself lives in each connection.
    conn_limit: Option<Limit>,
}

pub struct EventLoop {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Connection>,
    replies: Inbox,
    ctx: Ctx,
    next_gen: u32,
    resume: Vec<usize>,
    /// Half-closed connections draining after a closing ERROR: (slot,
    /// generation, when to close them anyway).
    lingering: Vec<(usize, u32, Instant)>,
}

impl EventLoop {
    pub fn new(
        io: u16,
        poll: Poll,
        listener: std::net::TcpListener,
        replies: Inbox,
        shared: Arc<Shared>,
    ) -> io::Result<EventLoop> {
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let shards = shared.shards.len();
        let conn_limit = shared.rate_per_conn.map(Limit::new);
        let epoch = shared.epoch;
        Ok(EventLoop {
            poll,
            listener,
            conns: Slab::with_capacity(1024),
            replies,
            ctx: Ctx {
                io,
                decoder: Decoder::new(shared.max_payload as usize),
                shared,
                pool: BufferPool::new(16 * 1024, 4096),
                pending: (0..shards).map(|_| Vec::new()).collect(),
                disconnects: Vec::new(),
                dirty: Vec::new(),
                over_budget: Vec::new(),
                shutting_down: false,
                stats: LoopStats::default(),
                epoch,
                turn_us: 0,
                now_ns: 0,
                conn_limit,
            },
            next_gen: 1,
            resume: Vec::new(),
            lingering: Vec::new(),
        })
    }

    /// The waker token to register with [`mio::Waker::new`].
    pub fn waker_token() -> Token {
        WAKER
    }

    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        let mut shutdown_deadline: Option<Instant> = None;
        loop {
            let timeout = if self.ctx.shutting_down {
                Duration::from_millis(10)
            } else {
                Duration::from_millis(250)
            };
            match self.replies.poll(&mut self.poll, &mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {}
                    Token(t) => {
                        let slot = t - FIRST_CONN;
                        if !self.conns.contains(slot) {
                            continue;
                        }
                        if ev.is_writable() {
                            self.mark_dirty(slot);
                        }
                        if ev.is_read_closed() || ev.is_error() {
                            self.on_readable(slot, now, Until::WouldBlock);
                        } else if ev.is_readable() {
                            self.on_readable(slot, now, Until::Drained);
                        }
                    }
                }
            }
            self.take_replies(now);
            self.dispatch();
            self.flush_dirty();
            self.resume_within_budget();
            self.close_lingering(now);
            self.ctx.shared.metrics.absorb(&mut self.ctx.stats);

            if !self.ctx.shutting_down && self.ctx.shared.shutdown.load(Ordering::Acquire) {
                self.begin_shutdown();
                shutdown_deadline = Some(now + self.ctx.shared.shutdown_grace);
            }
            if let Some(deadline) = shutdown_deadline {
                self.close_finished();
                self.dispatch();
                if self.conns.is_empty() || Instant::now() >= deadline {
                    if !self.conns.is_empty() {
                        tracing::warn!(
                            open = self.conns.len(),
                            "shutdown grace period over; closing remaining connections"
                        );
                    }
                    return Ok(());
                }
            }
            if now.duration_since(last_sweep) >= Duration::from_secs(1) {
                last_sweep = now;
                self.close_stalled(now);
                // The shared per-bidder buckets are swept by one loop.
                match &self.ctx.shared.bidders {
                    Some(b) if self.ctx.io == 0 => {
                        b.sweep(now.duration_since(self.ctx.epoch).as_nanos() as u64)
                    }
                    _ => {}
                }
                self.ctx.shared.logs.summarize(now);
            }
            // Disconnect notices of connections closed since the last dispatch.
            self.dispatch();
        }
    }

    fn accept_all(&mut self) {
        loop {
            if self.ctx.shutting_down {
                return;
            }
            let (mut stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: log and try again on the next event.
                    if self.ctx.shared.logs.allow(Noisy::Refused, Instant::now()) {
                        tracing::warn!(error = %e, "accept failed");
                    }
                    return;
                }
            };
            if let Some(counted_ip) = self.reserve_place(&mut stream, peer) {
                self.admit(stream, peer, counted_ip);
            }
        }
    }

    /// Takes a place under `--max-connections` (and `--max-connections-per-ip`),
    /// or refuses the connection with an ERROR and a close. `Some(counted_ip)`:
    /// admitted, and whether a per-address place was taken.
    fn reserve_place(&self, stream: &mut TcpStream, peer: SocketAddr) -> Option<bool> {
        let shared = &self.ctx.shared;
        // Reserve the place in one step: with a load here and an add
        // later, two loops could both take the last one.
        let reserved = shared
            .open_connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < shared.max_connections).then_some(n + 1)
            })
            .is_ok();
        if !reserved {
            shared.metrics.refused(1, "max_connections");
            let mut b = BytesMut::with_capacity(64);
            encode_error(&mut b, 0, ErrorCode::Busy, "too many connections");
            let _ = io::Write::write(stream, &b);
            end_refused(stream);
            if shared.logs.allow(Noisy::Refused, Instant::now()) {
                tracing::warn!(%peer, "refused connection: --max-connections reached");
            }
            return None;
        }
        let ip = peer.ip().to_canonical();
        if shared.max_connections_per_ip > 0 && !take_ip_slot(shared, ip) {
            shared.open_connections.fetch_sub(1, Ordering::Relaxed);
            shared.refused_per_ip.fetch_add(1, Ordering::Relaxed);
            if shared.tls.is_none() {
                let mut b = BytesMut::with_capacity(80);
                let msg = "too many connections from your address";
                encode_error(&mut b, 0, ErrorCode::Busy, msg);
                let _ = io::Write::write(stream, &b);
            }
            end_refused(stream);
            if shared.logs.allow(Noisy::Refused, Instant::now()) {
                tracing::info!(%peer, "refused connection: --max-connections-per-ip reached");
            }
            return None;
        }
        Some(shared.max_connections_per_ip > 0)
    }

    /// Sets up a connection that has its place; gives the place back if
    /// that fails.
    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, counted_ip: bool) {
        let shared = &self.ctx.shared;
        let give_back = || {
            shared.open_connections.fetch_sub(1, Ordering::Relaxed);
            if counted_ip {
                release_ip_slot(shared, peer.ip().to_canonical());
            }
        };
        let tls = match &shared.tls {
            None => None,
            Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                Ok(c) => Some(Box::new(c)),
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "TLS session setup failed");
                    return give_back();
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if shared.send_buffer > 0 {
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(shared.send_buffer);
        }
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(slot + FIRST_CONN),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            tracing::warn!(%peer, error = %e, "register failed");
            return give_back();
        }
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let authed = shared.auth.is_none();
        let bucket = match &self.ctx.conn_limit {
            Some(l) => Bucket::full(l, self.ctx.epoch.elapsed().as_nanos() as u64),
            None => Bucket::default(),
        };
        let conn = entry.insert(Connection::new(stream, peer, gen, authed, tls, bucket));
        conn.counted_ip = counted_ip;
        self.ctx.stats.accepted += 1;
        self.ctx.stats.dirty = true;
    }

    fn mark_dirty(&mut self, slot: usize) {
        mark_dirty(&mut self.conns[slot], slot, &mut self.ctx.dirty);
    }

    /// Decodes what is buffered, then reads until the socket is drained or a
    /// cap stops us.
    fn on_readable(&mut self, slot: usize, now: Instant, until: Until) {
        if self.conns[slot].lingering {
            if self.conns[slot].discard_input() {
                self.close(slot);
            }
            return;
        }
        let ctx = &mut self.ctx;
        let since = now.duration_since(ctx.epoch);
        ctx.turn_us = since.as_micros() as u32;
        ctx.now_ns = since.as_nanos() as u64;
        let conn = &mut self.conns[slot];
        let mut progressed = decode_buffered(conn, slot, ctx);
        let mut failed = None;
        while !conn.stop_reading() {
            match conn.read_once(&mut ctx.pool) {
                Ok(ReadResult::Data { drained }) => {
                    progressed |= decode_buffered(conn, slot, ctx);
                    if drained && until == Until::Drained {
                        break;
                    }
                }
                Ok(ReadResult::Eof) => conn.read_eof = true,
                Ok(ReadResult::WouldBlock) => break,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        conn.settle_read_buffer(&mut ctx.pool, now, progressed);
        // Count this turn's output now, so the next connection read this
        // turn sees it against --output-budget.
        account_unsent(&ctx.shared, conn);
        if let Some(e) = failed {
            if e.kind() != io::ErrorKind::ConnectionReset {
                tracing::info!(peer = %conn.peer, error = %e, "read failed; closing connection");
            }
            self.close(slot);
            return;
        }
        if conn.read_eof || conn.fatal.is_some() || conn.tls_wants_write() {
            mark_dirty(conn, slot, &mut ctx.dirty);
        }
    }

    /// Encodes the replies shards sent back.
    fn take_replies(&mut self, now: Instant) {
        let now_us = Instant::now().duration_since(self.ctx.epoch).as_micros() as u32;
        // What was queued when the turn began: senders refilling the
        // channel meanwhile must not keep the loop from its sockets.
        for _ in 0..self.replies.len() {
            let Ok(batch) = self.replies.try_recv() else {
                break;
            };
            for out in batch {
                let slot = out.slot as usize;
                let Some(conn) = self.conns.get_mut(slot) else {
                    continue;
                };
                if conn.gen != out.gen {
                    continue;
                }
                count_subscriptions(conn, &out);
                let ctx = &mut self.ctx;
                if let Reply::Push(p) = out.reply {
                    // Over --output-budget a subscriber may hold no more
                    // than --output-cap of pushes.
                    let cap = if over_budget(&ctx.shared, 0) {
                        ctx.shared.subscriber_cap.min(ctx.shared.output_cap)
                    } else {
                        ctx.shared.subscriber_cap
                    };
                    if conn.unsent() > cap {
                        tracing::info!(
                            peer = %conn.peer,
                            unsent = conn.unsent(),
                            "subscriber is not reading; disconnecting it"
                        );
                        ctx.shared.metrics.closed("slow_subscriber");
                        self.close(slot);
                        continue;
                    }
                    if conn.close_after_flush {
                        continue;
                    }
                    ctx.stats.frame_out(match p {
                        Push::BidUpdate { .. } => msg_type::BID_UPDATE,
                        Push::AuctionClosed { .. } => msg_type::AUCTION_CLOSED,
                    });
                    p.encode(conn.out(&mut ctx.pool));
                } else {
                    match out.reply {
                        Reply::Result { result, .. } => ctx.stats.result(result.status),
                        Reply::Error { code, .. } => ctx.stats.error(code),
                        Reply::Refused { limit, .. } => {
                            ctx.stats.error(limit.code());
                            ctx.stats.limit(limit);
                        }
                        Reply::Auction { .. } => ctx.stats.frame_out(msg_type::AUCTION),
                        Reply::Sale { .. } => ctx.stats.frame_out(msg_type::SALE),
                        Reply::Push(_) => {}
                    }
                    ctx.stats
                        .latency_us(out.kind, now_us.wrapping_sub(out.t0_us) as u64);
                    encode_reply(conn.out(&mut ctx.pool), &out.reply);
                    conn.in_flight -= 1;
                    if conn.paused
                        && conn.in_flight < ctx.shared.max_in_flight / 2
                        && conn.unsent() < ctx.shared.output_cap
                    {
                        conn.paused = false;
                        self.resume.push(slot);
                    }
                }
                mark_dirty(conn, slot, &mut ctx.dirty);
            }
        }
        while let Some(slot) = self.resume.pop() {
            if self.conns.contains(slot) {
                self.on_readable(slot, now, Until::WouldBlock);
            }
        }
    }

    /// Sends each shard the commands decoded for it this turn, then the
    /// disconnect notices of connections closed meanwhile (in that order: a
    /// closed connection's last commands may be in the batch).
    fn dispatch(&mut self) {
        for shard in 0..self.ctx.pending.len() {
            if self.ctx.pending[shard].is_empty() {
                continue;
            }
            let mut batch = std::mem::take(&mut self.ctx.pending[shard]);
            let shared = self.ctx.shared.clone();
            let handle = &shared.shards[shard];
            let queued = handle.queued.load(Ordering::Acquire);
            let room = shared.shard_queue.saturating_sub(queued);
            if batch.len() > room {
                for cmd in batch.drain(room..) {
                    self.answer_locally(&cmd, ErrorCode::Busy);
                }
            }
            if batch.is_empty() {
                continue;
            }
            handle.queued.fetch_add(batch.len(), Ordering::AcqRel);
            let n = batch.len();
            if handle.tx.send(ShardMsg::Batch(batch)).is_err() {
                handle.queued.fetch_sub(n, Ordering::AcqRel);
                tracing::error!(shard, "shard thread is gone");
            }
        }
        for (shard, conn) in self.ctx.disconnects.drain(..) {
            let _ = self.ctx.shared.shards[shard]
                .tx
                .send(ShardMsg::Disconnect(conn));
        }
    }

    fn answer_locally(&mut self, cmd: &Command, code: ErrorCode) {
        let slot = cmd.conn.slot as usize;
        if let Some(c) = self.conns.get_mut(slot) {
            if c.gen == cmd.conn.gen {
                encode_error(c.out(&mut self.ctx.pool), cmd.request_id, code, code.name());
                self.ctx.stats.error(code);
                c.in_flight -= 1;
                if cmd.kind == msg_type::SUBSCRIBE {
                    c.subs_pending -= 1;
                }
                mark_dirty(c, slot, &mut self.ctx.dirty);
            }
        }
    }

    /// Writes each dirty connection's output with one write and closes the
    /// connections that are done.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.ctx.dirty);
        for slot in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            conn.dirty = false;
            if conn.lingering {
                continue;
            }
            if conn.in_flight == 0 {
                if let Some((rid, code, msg)) = conn.fatal.take() {
                    encode_error(conn.out(&mut self.ctx.pool), rid, code, msg);
                    self.ctx.stats.error(code);
                    conn.close_after_flush = true;
                    conn.error_sent = true;
                }
                if conn.read_eof {
                    conn.close_after_flush = true;
                }
            }
            let was_over = conn.unsent() >= self.ctx.shared.output_cap;
            match conn.flush(&mut self.ctx.pool) {
                Ok(true) if conn.close_after_flush && conn.error_sent && !conn.read_eof => {
                    self.linger(slot)
                }
                Ok(true) if conn.close_after_flush => self.close(slot),
                Ok(_) => {
                    account_unsent(&self.ctx.shared, conn);
                    if was_over
                        && conn.paused
                        && conn.unsent() < self.ctx.shared.output_cap
                        && conn.in_flight < self.ctx.shared.max_in_flight
                    {
                        conn.paused = false;
                        self.resume.push(slot);
                    }
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::BrokenPipe
                        && e.kind() != io::ErrorKind::ConnectionReset
                    {
                        tracing::info!(peer = %conn.peer, error = %e, "write failed; closing connection");
                    }
                    self.close(slot);
                }
            }
        }
        self.ctx.dirty = dirty;
        self.run_resumed();
    }

    /// Reads again from the connections `resume` lists, sends what they
    /// asked for and flushes.
    fn run_resumed(&mut self) {
        if !self.resume.is_empty() {
            let now = Instant::now();
            while let Some(slot) = self.resume.pop() {
                if self.conns.contains(slot) {
                    self.on_readable(slot, now, Until::WouldBlock);
                }
            }
            self.dispatch();
            if !self.ctx.dirty.is_empty() {
                self.flush_dirty();
            }
        }
    }

    /// `--output-budget`: resumes the connections it stopped once the
    /// server is back under it, or once their own output has drained.
    fn resume_within_budget(&mut self) {
        if self.ctx.over_budget.is_empty() {
            return;
        }
        let over = over_budget(&self.ctx.shared, 0);
        let mut waiting = std::mem::take(&mut self.ctx.over_budget);
        waiting.retain(|&(slot, gen)| {
            let Some(c) = self.conns.get_mut(slot).filter(|c| c.gen == gen) else {
                return false;
            };
            if over && c.unsent() > 0 {
                return true;
            }
            c.over_budget = false;
            if c.paused {
                c.paused = false;
                self.resume.push(slot);
            }
            false
        });
        self.ctx.over_budget = waiting;
        self.run_resumed();
    }

    /// The closing ERROR is out: half-close and drop what the peer still
    /// sends, for a while, then close (see `Connection::lingering`).
    ///
    /// Its place under `--max-connections` (and `--max-connections-per-ip`)
    /// is given back here, before the write side is shut, not at the final
    /// close up to `LINGER` later: the client sees the end (EOF after the
    /// ERROR) now and may reconnect at once, and that connection can be
    /// accepted by another loop before this one has read the peer's FIN —
    /// counting the old one until then refuses a client that did nothing
    /// wrong. What a lingering connection still holds (a socket, no read buffer)
    /// is bounded apart: at most `--max-connections` of them; past that one
    /// is closed at once (its peer may then see a reset if it sends more).
    fn linger(&mut self, slot: usize) {
        let shared = &self.ctx.shared;
        let room = shared
            .lingering
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < shared.max_connections).then_some(n + 1)
            })
            .is_ok();
        if !room {
            return self.close(slot);
        }
        let conn = &mut self.conns[slot];
        release_places(shared, conn);
        conn.half_close(LINGER_BYTES, &mut self.ctx.pool);
        self.lingering
            .push((slot, conn.gen, Instant::now() + LINGER));
        // Input may have arrived already (readiness is edge-triggered).
        if conn.discard_input() {
            self.close(slot);
        }
    }

    /// Closes lingering connections whose time is up.
    fn close_lingering(&mut self, now: Instant) {
        if self.lingering.is_empty() {
            return;
        }
        let mut due = Vec::new();
        self.lingering
            .retain(|&(slot, gen, until)| match self.conns.get(slot) {
                Some(c) if c.gen == gen && c.lingering => {
                    if now >= until {
                        due.push(slot);
                        return false;
                    }
                    true
                }
                _ => false,
            });
        for slot in due {
            self.close(slot);
        }
    }

    fn close(&mut self, slot: usize) {
        let mut conn = self.conns.remove(slot);
        let shared = &self.ctx.shared;
        // Its place is free before the peer can see the end (close_notify,
        // then the FIN when `conn` is dropped).
        if conn.lingering {
            shared.lingering.fetch_sub(1, Ordering::Relaxed);
        } else {
            release_places(shared, &mut conn);
        }
        conn.send_close_notify();
        let _ = self.poll.registry().deregister(&mut conn.stream);
        conn.release_buffers(&mut self.ctx.pool);
        shared
            .unsent_total
            .fetch_sub(conn.accounted, Ordering::Relaxed);
        let mut bits = conn.sub_shards;
        while bits != 0 {
            let shard = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            // Sent by the next dispatch, after this turn's batches.
            let gone = ConnRef {
                io: self.ctx.io,
                slot: slot as u32,
                gen: conn.gen,
            };
            self.ctx.disconnects.push((shard, gone));
        }
    }

    /// Slowloris defence: close connections stuck on an incomplete frame,
    /// or silent since accept, for `--idle-timeout`.
    fn close_stalled(&mut self, now: Instant) {
        let timeout = self.ctx.shared.idle_timeout;
        let stalled: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.partial_since
                    .is_some_and(|t| now.duration_since(t) >= timeout)
            })
            .map(|(k, _)| k)
            .collect();
        for slot in stalled {
            if self.ctx.shared.logs.allow(Noisy::Idle, now) {
                let c = &self.conns[slot];
                let why = if c.silent {
                    "no complete request within --idle-timeout of connecting"
                } else {
                    "incomplete frame for too long"
                };
                tracing::info!(peer = %c.peer, "{why}; closing connection");
            }
            self.ctx.shared.metrics.closed("idle");
            self.close(slot);
        }
    }

    fn begin_shutdown(&mut self) {
        self.ctx.shutting_down = true;
        let _ = self.poll.registry().deregister(&mut self.listener);
        tracing::info!(
            open = self.conns.len(),
            "shutting down: no longer accepting"
        );
        self.close_finished();
    }

    /// During shutdown: close every connection with nothing in flight and nothing to send.
    fn close_finished(&mut self) {
        let done: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.in_flight == 0 && c.unsent() == 0 && c.fatal.is_none() && !c.tls_wants_write()
            })
            .map(|(k, _)| k)
            .collect();
        for slot in done {
            self.close(slot);
        }
    }
}

/// True while unsent output across all connections — plus `pending`, what
/// one connection added since its last flush — is at `--output-budget`.
fn over_budget(shared: &Shared, pending: usize) -> bool {
    shared.unsent_total.load(Ordering::Relaxed) + pending >= shared.output_budget
}

/// Brings the server-wide unsent total up to date with what `conn` holds
/// after a flush.
fn account_unsent(shared: &Shared, conn: &mut Connection) {
    let now = conn.unsent();
    if now > conn.accounted {
        shared
            .unsent_total
            .fetch_add(now - conn.accounted, Ordering::Relaxed);
    } else if now < conn.accounted {
        shared
            .unsent_total
            .fetch_sub(conn.accounted - now, Ordering::Relaxed);
    }
    conn.accounted = now;
}

/// A connection refused at accept, its ERROR written: half-close and drop
/// what it has sent already (a HELLO, say), so closing it sends a FIN after
/// the ERROR rather than a reset. Best effort: input arriving later still
/// meets a closed socket.
fn end_refused(stream: &mut mio::net::TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut scratch = [0u8; 4096];
    for _ in 0..16 {
        match io::Read::read(stream, &mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

/// Counts one more connection from `ip` unless that reaches the cap.
fn take_ip_slot(shared: &Shared, ip: IpAddr) -> bool {
    let mut map = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
    let n = map.entry(ip).or_insert(0);
    if *n >= shared.max_connections_per_ip {
        return false;
    }
    *n += 1;
    true
}

/// Gives back the connection's place under `--max-connections` and, if it
/// has one, under `--max-connections-per-ip`. Once per connection: at the
/// close, or earlier when it starts lingering.
fn release_places(shared: &Shared, conn: &mut Connection) {
    shared.open_connections.fetch_sub(1, Ordering::Relaxed);
    if conn.counted_ip {
        conn.counted_ip = false;
        release_ip_slot(shared, conn.peer.ip().to_canonical());
    }
}

fn release_ip_slot(shared: &Shared, ip: IpAddr) {
    let mut map = shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = map.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            map.remove(&ip);
        }
    }
}

/// Answers a request over its rate: not executed, the connection stays open.
fn rate_limited(conn: &mut Connection, slot: usize, rid: u32, ctx: &mut Ctx) {
    encode_error(
        conn.out(&mut ctx.pool),
        rid,
        ErrorCode::RateLimited,
        "rate limit exceeded",
    );
    ctx.stats.error(ErrorCode::RateLimited);
    mark_dirty(conn, slot, &mut ctx.dirty);
}

fn mark_dirty(conn: &mut Connection, slot: usize, dirty: &mut Vec<usize>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(slot);
    }
}

/// Decodes and handles complete frames in the read buffer until it is empty
/// or a cap says stop. Returns true if at least one frame was consumed.
fn decode_buffered(conn: &mut Connection, slot: usize, ctx: &mut Ctx) -> bool {
    let mut progressed = false;
    loop {
        if conn.stop_reading() {
            return progressed;
        }
        if conn.in_flight >= ctx.shared.max_in_flight || conn.unsent() >= ctx.shared.output_cap {
            conn.paused = true;
            return progressed;
        }
        if conn.unsent() > 0
            && over_budget(&ctx.shared, conn.unsent().saturating_sub(conn.accounted))
        {
            // Replies wait in memory for this connection and the server is
            // over --output-budget: read it again once that clears.
            conn.paused = true;
            if !conn.over_budget {
                conn.over_budget = true;
                ctx.over_budget.push((slot, conn.gen));
                ctx.stats.budget_pauses += 1;
                ctx.stats.dirty = true;
            }
            return progressed;
        }
        let Some(buf) = conn.rbuf.as_mut() else {
            return progressed;
        };
        match ctx.decoder.decode_request(buf) {
            Ok(None) => return progressed,
            Ok(Some(frame)) => {
                progressed = true;
                handle_request(conn, slot, frame, ctx);
            }
            Err(e) if !conn.authed => {
                // Auth on, no valid HELLO yet: a frame that does not even
                // decode is not one (§9.1): UNAUTHORIZED and close.
                progressed = true;
                log_bad_hello(conn, ctx, &e);
                fatal(conn, e.request_id(), ErrorCode::Unauthorized, NOT_AUTHED);
                mark_dirty(conn, slot, &mut ctx.dirty);
            }
            Err(e) => {
                progressed = true;
                if e.is_fatal() {
                    if ctx.shared.logs.allow(Noisy::BadFrame, Instant::now()) {
                        tracing::info!(peer = %conn.peer, error = %e, "closing connection");
                    }
                    conn.fatal = Some((e.request_id(), e.error_code(), "frame too large"));
                    if let Some(b) = conn.rbuf.as_mut() {
                        b.clear();
                    }
                } else {
                    let msg = match e.error_code() {
                        ErrorCode::UnknownType => "unknown message type",
                        _ => "malformed payload",
                    };
                    encode_error(conn.out(&mut ctx.pool), e.request_id(), e.error_code(), msg);
                    ctx.stats.error(e.error_code());
                }
                mark_dirty(conn, slot, &mut ctx.dirty);
            }
        }
    }
}

fn handle_request(conn: &mut Connection, slot: usize, frame: Frame<Request>, ctx: &mut Ctx) {
    let rid = frame.request_id;
    let kind = frame.body.msg_type();
    ctx.stats.frame_in(kind);
    if ctx.shutting_down {
        return fatal(
            conn,
            rid,
            ErrorCode::ShuttingDown,
            "server is shutting down",
        );
    }
    if !conn.authed {
        // Auth on, no valid HELLO yet: only a HELLO is read; anything else
        // closes the connection (so there is nothing to rate-limit yet).
        return match &frame.body {
            Request::Hello { version, token } => hello(conn, slot, rid, *version, token, ctx),
            _ => {
                if ctx.shared.logs.allow(Noisy::BadHello, Instant::now()) {
                    tracing::info!(peer = %conn.peer, "request before HELLO; closing connection");
                }
                fatal(conn, rid, ErrorCode::Unauthorized, NOT_AUTHED)
            }
        };
    }
    if let Some(limit) = &ctx.conn_limit {
        if !conn.bucket.take(limit, ctx.now_ns) {
            return rate_limited(conn, slot, rid, ctx);
        }
    }
    if let Request::Hello { version, token } = &frame.body {
        return hello(conn, slot, rid, *version, token, ctx);
    }
    let op = match shard_op(frame.body) {
        Ok(op) => op,
        Err(Answered::Ping(payload)) => {
            encode_pong(conn.out(&mut ctx.pool), rid, &payload);
            ctx.stats.frame_out(msg_type::PONG);
            return mark_dirty(conn, slot, &mut ctx.dirty);
        }
        Err(Answered::Malformed(why)) => {
            encode_error(conn.out(&mut ctx.pool), rid, ErrorCode::Malformed, why);
            ctx.stats.error(ErrorCode::Malformed);
            return mark_dirty(conn, slot, &mut ctx.dirty);
        }
    };
    if !bidder_within_rate(&op, ctx) {
        return rate_limited(conn, slot, rid, ctx);
    }
    if matches!(op, Op::Subscribe(_))
        && conn.subs + conn.subs_pending >= ctx.shared.max_subscriptions_per_conn
    {
        return refuse(conn, slot, rid, Cap::SubscriptionsPerConn, ctx);
    }
    queue_for_shard(conn, slot, rid, kind, op, ctx);
}

/// Answers a request refused at a cap the event loop checks: not executed,
/// the connection stays open.
fn refuse(conn: &mut Connection, slot: usize, rid: u32, limit: Cap, ctx: &mut Ctx) {
    encode_error(conn.out(&mut ctx.pool), rid, limit.code(), limit.message());
    ctx.stats.error(limit.code());
    ctx.stats.limit(limit);
    mark_dirty(conn, slot, &mut ctx.dirty);
}

/// Keeps the connection's subscription count from a reply: a SUBSCRIBE's
/// answer settles one in flight, `subs` says what changed, and an
/// AUCTION_CLOSED push ends one.
fn count_subscriptions(conn: &mut Connection, out: &Outgoing) {
    match out.reply {
        Reply::Push(Push::AuctionClosed { .. }) => conn.subs = conn.subs.saturating_sub(1),
        Reply::Push(_) => {}
        _ if out.kind == msg_type::SUBSCRIBE => {
            conn.subs_pending = conn.subs_pending.saturating_sub(1);
            conn.subs = conn.subs.saturating_add_signed(out.subs as i32);
        }
        _ => conn.subs = conn.subs.saturating_add_signed(out.subs as i32),
    }
}

const NOT_AUTHED: &str = "HELLO with a valid token required first";

fn log_bad_hello(conn: &Connection, ctx: &mut Ctx, e: &gavel_protocol::DecodeError) {
    if ctx.shared.logs.allow(Noisy::BadHello, Instant::now()) {
        tracing::info!(peer = %conn.peer, error = %e, "undecodable frame before HELLO; closing connection");
    }
}

/// Answers with a connection-closing ERROR; nothing more is read.
fn fatal(conn: &mut Connection, rid: u32, code: ErrorCode, msg: &'static str) {
    conn.fatal = Some((rid, code, msg));
    if let Some(b) = conn.rbuf.as_mut() {
        b.clear();
    }
}

/// HELLO: the version is checked before the token.
fn hello(conn: &mut Connection, slot: usize, rid: u32, version: u16, token: &[u8], ctx: &mut Ctx) {
    if version != PROTOCOL_VERSION {
        return fatal(
            conn,
            rid,
            ErrorCode::UnsupportedVersion,
            "only version 1 is supported",
        );
    }
    if let Some(auth) = &ctx.shared.auth {
        if !auth.check(token) {
            if ctx.shared.logs.allow(Noisy::BadHello, Instant::now()) {
                tracing::info!(peer = %conn.peer, "bad auth token");
            }
            return fatal(conn, rid, ErrorCode::Unauthorized, "invalid token");
        }
    }
    conn.authed = true;
    let shared = &ctx.shared;
    Response::Welcome {
        version: PROTOCOL_VERSION,
        node_id: shared.node_id,
        shards: shared.shards.len() as u16,
        max_payload: shared.max_payload,
    }
    .encode(rid, 0, conn.out(&mut ctx.pool));
    ctx.stats.frame_out(msg_type::WELCOME);
    mark_dirty(conn, slot, &mut ctx.dirty);
}

/// A request the event loop answers itself.
enum Answered {
    Ping(Bytes),
    Malformed(&'static str),
}

/// The shard operation a request asks for (HELLO is handled before).
fn shard_op(body: Request) -> Result<Op, Answered> {
    Ok(match body {
        Request::Hello { .. } => unreachable!("handled before"),
        Request::Ping(payload) => return Err(Answered::Ping(payload)),
        Request::OpenAuction(o) => Op::OpenAuction(o),
        Request::CloseAuction { auction_id } => Op::CloseAuction(auction_id),
        Request::GetAuction { auction_id } => Op::GetAuction(auction_id),
        Request::OpenSale(s) if s.ends_at_ms != 0 && s.ends_at_ms <= s.starts_at_ms => {
            return Err(Answered::Malformed("ends_at_ms must be after starts_at_ms"))
        }
        Request::OpenSale(s) => Op::OpenSale(s),
        Request::Bid(b) if b.bidder_id == 0 => {
            return Err(Answered::Malformed("bidder_id must be non-zero"))
        }
        Request::Bid(b) => Op::Bid(b),
        Request::Buy(b) if b.buyer_id == 0 => {
            return Err(Answered::Malformed("buyer_id must be non-zero"))
        }
        Request::Buy(b) if b.quantity == 0 => {
            return Err(Answered::Malformed("quantity must be non-zero"))
        }
        Request::Buy(b) => Op::Buy(b),
        Request::GetSale { sku_id } => Op::GetSale(sku_id),
        Request::Subscribe { auction_id } => Op::Subscribe(auction_id),
        Request::Unsubscribe { auction_id } => Op::Unsubscribe(auction_id),
    })
}

/// `--rate-per-bidder`: BIDs and BUYs count against their bidder/buyer.
fn bidder_within_rate(op: &Op, ctx: &mut Ctx) -> bool {
    let who = match op {
        Op::Bid(b) => b.bidder_id,
        Op::Buy(b) => b.buyer_id,
        _ => return true,
    };
    match ctx.shared.bidders.as_ref() {
        Some(bidders) => bidders.take(who, ctx.now_ns),
        None => true,
    }
}

/// Adds the command to this turn's batch for its shard.
fn queue_for_shard(conn: &mut Connection, slot: usize, rid: u32, kind: u8, op: Op, ctx: &mut Ctx) {
    let shard = shard_of(op.routing_key(), ctx.pending.len());
    if matches!(op, Op::Subscribe(_)) {
        conn.sub_shards |= 1 << shard;
        conn.subs_pending += 1;
    }
    conn.in_flight += 1;
    ctx.pending[shard].push(Command {
        conn: ConnRef {
            io: ctx.io,
            slot: slot as u32,
            gen: conn.gen,
        },
        request_id: rid,
        op,
        t0_us: ctx.turn_us,
        kind,
    });
}

fn encode_reply(buf: &mut BytesMut, reply: &Reply) {
    match reply {
        Reply::Result {
            request_id,
            flags,
            result,
        } => encode_result(buf, *request_id, *flags, result),
        Reply::Auction { request_id, info } => encode_auction(buf, *request_id, info),
        Reply::Sale { request_id, info } => encode_sale(buf, *request_id, info),
        Reply::Error { request_id, code } => encode_error(buf, *request_id, *code, code.name()),
        Reply::Refused { request_id, limit } => {
            encode_error(buf, *request_id, limit.code(), limit.message())
        }
        Reply::Push(p) => p.encode(buf),
    }
}
