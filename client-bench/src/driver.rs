//! The load phase: a few threads, each driving many non-blocking connections
//! with one mio poll.
//!
//! Connection `i` belongs to thread `i mod threads`. Each connection goes
//! `Idle → Connecting → (Handshake) → Running → Draining → Done`:
//!
//! * **Idle** until its start time (`--connect-pacing-ms` staggers them).
//! * **Handshake** only when the target has one (HELLO with `--auth-token`);
//!   no workload request is sent before its reply.
//! * **Running**: keeps up to `--pipeline` requests in flight. In closed loop a
//!   reply frees a slot (after the think time); in open loop (`--rate`) each
//!   request has an intended send time and its latency counts from it. All
//!   requests that can go are encoded into one buffer and written with one
//!   syscall; a read drains every reply available.
//! * **Draining**: once the connection has issued its share (or the duration is
//!   over) and its bytes are written, it half-closes (shutdown write) and reads
//!   until the server's EOF, so every reply the server sends is counted. A
//!   target whose server drops unsent replies on EOF (Redis) half-closes only
//!   once nothing is outstanding.
//!
//! Whatever is still outstanding when a connection ends is counted as lost.
//! Protocol details stay behind [`crate::target::Target`].

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use bytes::{Buf, BytesMut};
use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Registry, Token};

use crate::config::{Pacing, Plan, Stop};
use crate::inflight::InFlight;
use crate::stats::{Live, Published, Stats};
use crate::target::{new_target, Reply, ReplyKind, Target, HANDSHAKE_TAG};
use crate::timer::{Wakeup, TIMER_TOKEN};
use crate::transport::Stream;
use crate::workload::{Op, OpGen, WorkloadShared};

/// Longest a poll waits, so timeouts are checked and progress is published.
const MAX_POLL_WAIT: Duration = Duration::from_millis(100);
/// How often connections are checked for `--timeout-secs`.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);
/// Minimum free space before a read.
const READ_SPARE: usize = 2048;

/// The result of the load phase.
#[derive(Debug)]
pub struct RunOutput {
    pub stats: Stats,
    /// From the start of the load phase until the last connection ended.
    pub elapsed: Duration,
}

/// A load phase in progress.
pub struct Run {
    started: Instant,
    handles: Vec<JoinHandle<Stats>>,
}

impl Run {
    /// Resolves the address and starts the driver threads.
    pub fn start(plan: Arc<Plan>, live: Arc<Live>) -> anyhow::Result<Run> {
        let addr = resolve(&plan.addr)?;
        let shared = WorkloadShared::new(&plan);
        let started = Instant::now();
        let threads = plan.threads.max(1);
        let mut handles = Vec::new();
        for t in 0..threads {
            let conn_ids: Vec<u32> = (t..plan.connections).step_by(threads as usize).collect();
            let worker = Worker::new(plan.clone(), addr, &shared, conn_ids, live.clone(), started)
                .context("cannot create poll")?;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("bench-{t}"))
                    .spawn(move || worker.run())
                    .context("cannot spawn driver thread")?,
            );
        }
        Ok(Run { started, handles })
    }

    pub fn is_finished(&self) -> bool {
        self.handles.iter().all(|h| h.is_finished())
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for every thread and merges their counters.
    pub fn join(self, plan: &Plan) -> anyhow::Result<RunOutput> {
        let mut stats = Stats::new(plan.auctions as usize, plan.skus as usize);
        for h in self.handles {
            let s = h.join().map_err(|_| anyhow!("a driver thread panicked"))?;
            stats.merge(&s);
        }
        Ok(RunOutput {
            stats,
            elapsed: self.started.elapsed(),
        })
    }
}

/// Resolves `host:port` to its first address.
pub fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr:?}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr:?} resolves to no address"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting,
    Handshake,
    Running,
    Draining,
    Done,
}

/// An outstanding request.
#[derive(Debug, Clone, Copy)]
struct Pending {
    op: Op,
    /// Send time (closed loop) or intended send time (open loop).
    at: Instant,
}

struct Conn {
    /// Index in the worker's vector, also the mio token.
    slot: usize,
    phase: Phase,
    stream: Option<Stream>,
    target: Box<dyn Target>,
    gen: OpGen,
    inflight: InFlight<Pending>,
    /// Closed loop: times at which free pipeline slots become usable.
    credits: VecDeque<Instant>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Connect time while idle; then the origin of the open-loop schedule.
    ready_at: Instant,
    /// Open loop: this connection's offset within a period, as a fraction.
    phase_offset: f64,
    issued: u64,
    finished_issuing: bool,
    timer_at: Option<Instant>,
    last_activity: Instant,
}

/// Lazily invalidated timer heap: an entry counts only if it equals the
/// connection's `timer_at`.
#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    fn schedule(&mut self, conn: &mut Conn, at: Instant) {
        if conn.timer_at.is_none_or(|t| at < t) {
            conn.timer_at = Some(at);
            self.heap.push(Reverse((at, conn.slot)));
        }
    }
}

/// Everything a connection's handlers need besides the connection itself.
struct Ctx<'a> {
    plan: &'a Plan,
    stats: &'a mut Stats,
    timers: &'a mut Timers,
    registry: &'a Registry,
    addr: SocketAddr,
    deadline: Option<Instant>,
    /// Start of the load phase, for the per-second reply counts.
    started: Instant,
    active: &'a mut usize,
}

struct Worker {
    plan: Arc<Plan>,
    addr: SocketAddr,
    poll: Poll,
    wakeup: Option<Wakeup>,
    conns: Vec<Conn>,
    timers: Timers,
    stats: Stats,
    live: Arc<Live>,
    published: Published,
    started: Instant,
    deadline: Option<Instant>,
    active: usize,
}

impl Worker {
    fn new(
        plan: Arc<Plan>,
        addr: SocketAddr,
        shared: &Arc<WorkloadShared>,
        conn_ids: Vec<u32>,
        live: Arc<Live>,
        started: Instant,
    ) -> io::Result<Worker> {
        let tagged = new_target(plan.target, None).tagged_replies();
        let rcap = (plan.pipeline as usize * 64).clamp(4096, 64 * 1024);
        let wcap = (plan.pipeline as usize * 48).clamp(256, 64 * 1024);
        let conns = conn_ids
            .iter()
            .enumerate()
            .map(|(slot, &id)| Conn {
                slot,
                phase: Phase::Idle,
                stream: None,
                target: new_target(plan.target, plan.auth_token.as_deref()),
                gen: shared.generator(id),
                inflight: InFlight::new(plan.pipeline as usize, !tagged),
                credits: VecDeque::new(),
                rbuf: BytesMut::with_capacity(rcap),
                wbuf: BytesMut::with_capacity(wcap),
                ready_at: started + plan.connect_pacing * id,
                phase_offset: f64::from(id) / f64::from(plan.connections),
                issued: 0,
                finished_issuing: false,
                timer_at: None,
                last_activity: started,
            })
            .collect::<Vec<_>>();
        let deadline = match plan.stop {
            Stop::After(d) => Some(started + d),
            Stop::Count(_) => None,
        };
        let poll = Poll::new()?;
        let wakeup = Wakeup::new(poll.registry())?;
        Ok(Worker {
            stats: Stats::new(plan.auctions as usize, plan.skus as usize),
            active: conns.len(),
            plan,
            addr,
            poll,
            wakeup,
            conns,
            timers: Timers::default(),
            live,
            published: Published::default(),
            started,
            deadline,
        })
    }

    fn run(mut self) -> Stats {
        crate::timer::tune_thread();
        let mut events = Events::with_capacity(1024);
        let Worker {
            plan,
            addr,
            poll,
            wakeup,
            conns,
            timers,
            stats,
            live,
            published,
            started,
            deadline,
            active,
        } = &mut self;
        let mut armed: Option<Instant> = None;
        for c in conns.iter_mut() {
            let at = c.ready_at;
            timers.schedule(c, at);
        }
        let mut next_housekeeping = *started + HOUSEKEEPING_EVERY;
        while *active > 0 {
            let now = Instant::now();
            {
                let mut cx = Ctx {
                    plan,
                    stats,
                    timers,
                    registry: poll.registry(),
                    addr: *addr,
                    deadline: *deadline,
                    started: *started,
                    active,
                };
                fire_timers(&mut cx, conns, now);
                if now >= next_housekeeping {
                    for c in conns.iter_mut() {
                        check_timeout(&mut cx, c, now);
                    }
                    next_housekeeping = now + HOUSEKEEPING_EVERY;
                }
            }
            live.publish(stats, published);
            if *active == 0 {
                break;
            }
            let next = timers.heap.peek().map(|Reverse((t, _))| *t);
            let wait = next
                .map(|t| t.saturating_duration_since(now))
                .unwrap_or(MAX_POLL_WAIT)
                .min(MAX_POLL_WAIT);
            // The poll timeout has millisecond granularity; a timerfd wakes
            // the poll on time for sub-millisecond schedules.
            if let (Some(w), Some(t)) = (wakeup.as_mut(), next) {
                if !wait.is_zero() && armed != Some(t) {
                    w.arm(wait);
                    armed = Some(t);
                }
            }
            if let Err(e) = poll.poll(&mut events, Some(wait)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                panic!("poll failed: {e}");
            }
            let mut cx = Ctx {
                plan,
                stats,
                timers,
                registry: poll.registry(),
                addr: *addr,
                deadline: *deadline,
                started: *started,
                active,
            };
            for ev in events.iter() {
                if ev.token() == TIMER_TOKEN {
                    if let Some(w) = wakeup.as_mut() {
                        w.clear();
                    }
                    armed = None;
                } else if let Some(c) = conns.get_mut(ev.token().0) {
                    on_event(&mut cx, c, ev);
                }
            }
        }
        live.publish(stats, published);
        std::mem::replace(stats, Stats::new(0, 0))
    }
}

fn fire_timers(cx: &mut Ctx<'_>, conns: &mut [Conn], now: Instant) {
    while let Some(&Reverse((at, slot))) = cx.timers.heap.peek() {
        if at > now {
            break;
        }
        cx.timers.heap.pop();
        let c = &mut conns[slot];
        if c.timer_at != Some(at) {
            continue;
        }
        c.timer_at = None;
        match c.phase {
            Phase::Idle => start_connect(cx, c, now),
            Phase::Running => advance(cx, c, now),
            _ => {}
        }
    }
}

fn start_connect(cx: &mut Ctx<'_>, c: &mut Conn, now: Instant) {
    c.last_activity = now;
    match TcpStream::connect(cx.addr).and_then(|s| Stream::new(s, cx.plan.tls.as_ref())) {
        Ok(mut s) => {
            if let Err(e) = cx.registry.register(
                &mut s.tcp,
                Token(c.slot),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                connect_failed(cx, c, &e);
                return;
            }
            c.stream = Some(s);
            c.phase = Phase::Connecting;
        }
        Err(e) => connect_failed(cx, c, &e),
    }
}

fn connect_failed(cx: &mut Ctx<'_>, c: &mut Conn, e: &io::Error) {
    cx.stats.connect_failures += 1;
    if cx.stats.first_connect_error.is_none() {
        cx.stats.first_connect_error = Some(e.to_string());
    }
    close(cx, c);
}

fn on_event(cx: &mut Ctx<'_>, c: &mut Conn, ev: &Event) {
    let now = Instant::now();
    match c.phase {
        Phase::Idle | Phase::Done => {}
        Phase::Connecting => {
            finish_connect(cx, c, now);
            // Edge-triggered: anything that arrived with the connect event
            // would not be announced again.
            if matches!(c.phase, Phase::Handshake | Phase::Running) {
                read_replies(cx, c, false);
                advance(cx, c, Instant::now());
            }
        }
        Phase::Handshake | Phase::Running | Phase::Draining => {
            let hup = ev.is_read_closed() || ev.is_error();
            if ev.is_readable() || hup {
                read_replies(cx, c, !hup);
            }
            advance(cx, c, Instant::now());
        }
    }
}

fn finish_connect(cx: &mut Ctx<'_>, c: &mut Conn, now: Instant) {
    let Some(s) = c.stream.as_ref().map(|s| &s.tcp) else {
        return;
    };
    match s.take_error() {
        Ok(None) => {}
        Ok(Some(e)) | Err(e) => return connect_failed(cx, c, &e),
    }
    match s.peer_addr() {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
        Err(e) => return connect_failed(cx, c, &e),
    }
    let _ = s.set_nodelay(true);
    cx.stats.connections_opened += 1;
    c.last_activity = now;
    if c.target.handshake(&mut c.wbuf) {
        c.phase = Phase::Handshake;
        advance(cx, c, now);
    } else {
        become_ready(cx, c, now);
    }
}

fn become_ready(cx: &mut Ctx<'_>, c: &mut Conn, now: Instant) {
    c.phase = Phase::Running;
    c.ready_at = now;
    if let Pacing::Closed { .. } = cx.plan.pacing {
        c.credits.clear();
        c.credits.extend((0..cx.plan.pipeline).map(|_| now));
    }
    advance(cx, c, now);
}

/// Issues what may be issued, writes, and half-closes when done issuing.
fn advance(cx: &mut Ctx<'_>, c: &mut Conn, now: Instant) {
    if c.phase == Phase::Running && !c.finished_issuing {
        refill(cx, c, now);
    }
    if matches!(c.phase, Phase::Handshake | Phase::Running | Phase::Draining) && flush(c).is_err() {
        return broken(cx, c);
    }
    if c.phase == Phase::Running
        && c.finished_issuing
        && c.wbuf.is_empty()
        && !c.stream.as_ref().is_some_and(Stream::has_pending)
        && (c.inflight.is_empty() || !c.target.replies_lost_on_half_close())
    {
        let ok = c
            .stream
            .as_mut()
            .is_some_and(|s| s.shutdown_write().is_ok());
        if !ok {
            return broken(cx, c);
        }
        c.phase = Phase::Draining;
        c.last_activity = now;
    }
}

fn refill(cx: &mut Ctx<'_>, c: &mut Conn, now: Instant) {
    loop {
        let done = match cx.plan.stop {
            Stop::Count(n) => c.issued >= n,
            Stop::After(_) => cx.deadline.is_some_and(|d| now >= d),
        };
        if done {
            c.finished_issuing = true;
            return;
        }
        if c.inflight.is_full() {
            return;
        }
        let at = match cx.plan.pacing {
            Pacing::Closed { .. } => {
                let Some(&free_at) = c.credits.front() else {
                    return;
                };
                if free_at > now {
                    wake_at(cx, c, free_at);
                    return;
                }
                c.credits.pop_front();
                now
            }
            Pacing::Open { per_conn_rate } => {
                let offset = (c.issued as f64 + c.phase_offset) / per_conn_rate;
                let due = c.ready_at + Duration::from_secs_f64(offset);
                if cx.deadline.is_some_and(|d| due >= d) {
                    c.finished_issuing = true;
                    return;
                }
                if due > now {
                    wake_at(cx, c, due);
                    return;
                }
                let lag = now.duration_since(due).as_micros() as u64;
                cx.stats.send_lag.saturating_record(lag);
                due
            }
        };
        let op = c.gen.next_op();
        if c.inflight.is_empty() {
            c.last_activity = now;
        }
        let tag = c
            .inflight
            .insert(Pending { op, at })
            .expect("checked not full");
        c.target.encode(tag, &op, &mut c.wbuf);
        c.issued += 1;
        cx.stats.attempted += 1;
    }
}

/// Wakes the connection at `at`, or at the deadline if that comes first.
fn wake_at(cx: &mut Ctx<'_>, c: &mut Conn, at: Instant) {
    let at = cx.deadline.map_or(at, |d| at.min(d));
    cx.timers.schedule(c, at);
}

/// Writes buffered bytes until done or the socket is full.
fn flush(c: &mut Conn) -> io::Result<()> {
    let Some(s) = c.stream.as_mut() else {
        return Ok(());
    };
    while !c.wbuf.is_empty() {
        match s.write(&c.wbuf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => c.wbuf.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // TLS records rustls could not send yet (a no-op on plain TCP).
    s.flush_pending()
}

/// Reads and handles every reply available; ends the connection on EOF/error.
///
/// With `may_stop_short`, a read that did not fill the buffer is taken as
/// having drained the socket (edge-triggered readiness announces any later
/// data), saving the syscall that would only return EAGAIN. It is not used
/// when the event also announced the peer's close, nor while draining, where
/// the EOF itself must be read.
fn read_replies(cx: &mut Ctx<'_>, c: &mut Conn, may_stop_short: bool) {
    loop {
        let Some(s) = c.stream.as_mut() else { return };
        let tls = s.is_tls();
        if c.rbuf.capacity() - c.rbuf.len() < READ_SPARE {
            c.rbuf.reserve(READ_SPARE.max(c.rbuf.capacity()));
        }
        let spare = c.rbuf.capacity() - c.rbuf.len();
        match read_into(s, &mut c.rbuf) {
            Ok(0) => return on_eof(cx, c),
            Ok(n) => {
                let now = Instant::now();
                c.last_activity = now;
                if !handle_replies(cx, c, now) {
                    return;
                }
                // Not under TLS: a short read there does not mean the
                // socket is drained.
                if may_stop_short && n < spare && c.phase == Phase::Running && !tls {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                // A reset after our half-close with nothing outstanding is
                // still a complete exchange.
                if c.phase == Phase::Draining && c.inflight.is_empty() {
                    return close(cx, c);
                }
                return server_closed(cx, c);
            }
        }
    }
}

fn on_eof(cx: &mut Ctx<'_>, c: &mut Conn) {
    match c.phase {
        Phase::Draining => close(cx, c),
        Phase::Handshake => {
            cx.stats.handshake_failures += 1;
            close(cx, c);
        }
        _ => server_closed(cx, c),
    }
}

/// The server ended the connection before we were done.
fn server_closed(cx: &mut Ctx<'_>, c: &mut Conn) {
    if c.phase == Phase::Handshake {
        cx.stats.handshake_failures += 1;
    } else {
        cx.stats.closed_by_server += 1;
    }
    close(cx, c);
}

/// A write or shutdown failed: collect any replies still readable, then end.
fn broken(cx: &mut Ctx<'_>, c: &mut Conn) {
    read_replies(cx, c, false);
    if c.phase != Phase::Done {
        server_closed(cx, c);
    }
}

/// Decodes and accounts every complete reply in the read buffer. Returns false
/// if the connection ended meanwhile.
fn handle_replies(cx: &mut Ctx<'_>, c: &mut Conn, now: Instant) -> bool {
    loop {
        let reply = match c.target.decode(&mut c.rbuf) {
            Ok(Some(r)) => r,
            Ok(None) => return true,
            Err(e) => {
                cx.stats.protocol_errors += 1;
                if cx.stats.first_protocol_error.is_none() {
                    cx.stats.first_protocol_error = Some(e.to_string());
                }
                close(cx, c);
                return false;
            }
        };
        handle_reply(cx, c, reply, now);
        if c.phase == Phase::Done {
            return false;
        }
    }
}

fn handle_reply(cx: &mut Ctx<'_>, c: &mut Conn, reply: Reply, now: Instant) {
    if reply.kind == ReplyKind::Push {
        cx.stats.pushes += 1;
        return;
    }
    if c.phase == Phase::Handshake && reply.tag == Some(HANDSHAKE_TAG) {
        return match reply.kind {
            ReplyKind::Welcome => become_ready(cx, c, now),
            ReplyKind::Error { code } => {
                cx.stats.count_error_frame(code);
                cx.stats.handshake_failures += 1;
                close(cx, c);
            }
            _ => {
                cx.stats.handshake_failures += 1;
                close(cx, c);
            }
        };
    }
    let pending = match reply.tag {
        Some(tag) if c.target.tagged_replies() => c.inflight.take(tag),
        _ if !c.target.tagged_replies() => c.inflight.take_oldest().map(|(_, p)| p),
        _ => None,
    };
    let Some(p) = pending else {
        // Not an answer to anything outstanding (e.g. an ERROR with
        // request_id 0 before the server closes): still count its code.
        cx.stats.unmatched += 1;
        if let ReplyKind::Error { code } = reply.kind {
            cx.stats.count_error_frame(code);
        }
        return;
    };
    let latency_us = now.saturating_duration_since(p.at).as_micros() as u64;
    let second = now.saturating_duration_since(cx.started).as_secs();
    match reply.kind {
        ReplyKind::Result {
            status,
            value,
            replayed,
            ..
        } => {
            c.gen.observe(&p.op, value);
            cx.stats.per_second.add(second, false);
            cx.stats.record_result(&p.op, status, replayed, latency_us)
        }
        ReplyKind::Error { code } => {
            cx.stats.per_second.add(second, true);
            cx.stats.record_error(code, latency_us)
        }
        ReplyKind::Welcome | ReplyKind::Other(_) | ReplyKind::Push => cx.stats.unexpected += 1,
    }
    if let Pacing::Closed { think } = cx.plan.pacing {
        c.credits.push_back(now + think);
    }
}

/// Ends the connection: whatever is outstanding is lost.
fn close(cx: &mut Ctx<'_>, c: &mut Conn) {
    if c.phase == Phase::Done {
        return;
    }
    if let Some(mut s) = c.stream.take() {
        let _ = cx.registry.deregister(&mut s.tcp);
    }
    cx.stats.lost += c.inflight.clear() as u64;
    c.credits.clear();
    c.wbuf = BytesMut::new();
    c.rbuf = BytesMut::new();
    c.phase = Phase::Done;
    c.timer_at = None;
    *cx.active -= 1;
}

/// Gives up on a connection that made no progress for `--timeout-secs`.
fn check_timeout(cx: &mut Ctx<'_>, c: &mut Conn, now: Instant) {
    let waiting = match c.phase {
        Phase::Connecting | Phase::Handshake | Phase::Draining => true,
        Phase::Running => !c.inflight.is_empty(),
        Phase::Idle | Phase::Done => false,
    };
    if !waiting || now.saturating_duration_since(c.last_activity) < cx.plan.timeout {
        return;
    }
    cx.stats.timeouts += 1;
    match c.phase {
        Phase::Connecting => {
            let e = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            connect_failed(cx, c, &e);
        }
        Phase::Handshake => {
            cx.stats.handshake_failures += 1;
            close(cx, c);
        }
        _ => close(cx, c),
    }
}

/// Reads once into the spare capacity of `buf`.
fn read_into(s: &mut Stream, buf: &mut BytesMut) -> io::Result<usize> {
    let start = buf.len();
    let cap = buf.capacity();
    buf.resize(cap, 0);
    let r = s.read(&mut buf[start..]);
    buf.truncate(start + *r.as_ref().unwrap_or(&0));
    r
}
