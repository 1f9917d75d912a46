//! The Redis engine's I/O: the connections to Redis (synchronous client, or
//! the pipelined socket with its reader thread), rounds in flight, and
//! reconnecting with backoff. What to send and how to answer is decided in
//! [`super::decide`]; this file only moves bytes and keeps order.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use gavel_protocol::Push;
use gavel_redis::{Op as ROp, OpResult, RedisError, RedisGavel};
use redis::Value;

use super::decide::{Decisions, Pending, Round, RoundOutcome};
use super::pipe::{plain_addr, read_replies, RedisReply};
use super::RedisConfig;
use crate::backoff::Backoff;
use crate::engine::command::{Command, ConnRef};
use crate::engine::effects::Effects;
use crate::metrics::Metrics;
use crate::shard::{Backend, Sizes};

/// Most rounds one shard keeps in flight before it waits for replies.
pub const MAX_IN_FLIGHT: usize = 8;

/// A shard whose auctions and sales live in Redis.
pub struct RedisShard {
    cfg: RedisConfig,
    decide: Decisions,
    /// The synchronous client (cluster mode, password URLs, script loading).
    conn: Option<RedisGavel>,
    retry_at: Option<Instant>,
    backoff: Backoff,
    /// The round being planned.
    round: Round,
    metrics: Arc<Metrics>,
    /// Pipelined single-node mode: the socket (write side), the channel its
    /// reader thread answers on, rounds in flight, and an epoch that tells
    /// replies of an abandoned connection apart.
    pipe: Option<std::net::TcpStream>,
    replies: Option<(Sender<RedisReply>, Receiver<RedisReply>)>,
    in_flight: VecDeque<InFlight>,
    epoch: u64,
    shas: [String; gavel_redis::scripts::SCRIPTS],
    out: Vec<u8>,
}

struct InFlight {
    pending: Vec<Pending>,
    ops: Vec<ROp>,
    values: Vec<Value>,
    sent: Instant,
    now_ms: u64,
    /// Connections that closed while this round was the last in flight:
    /// forgotten once it is answered (a SUBSCRIBE in it subscribes when
    /// its read comes back, so forgetting them before would leak it).
    disconnects: Vec<ConnRef>,
}

impl InFlight {
    fn complete(&self) -> bool {
        self.values.len() == self.ops.len()
    }
}

impl RedisShard {
    pub fn new(cfg: RedisConfig, metrics: Arc<Metrics>) -> Self {
        // A plain `redis://host:port` gets the pipelined connection; one
        // with a password or database index keeps the synchronous client,
        // which performs the handshake.
        let first_url = cfg.urls.first().cloned().unwrap_or_default();
        let pipelined = !cfg.cluster && plain_addr(&first_url).is_some();
        metrics.redis_up.set(1);
        let mut decide = Decisions::new(cfg.outbid_filter);
        decide.set_subscription_cap(cfg.max_subscriptions);
        RedisShard {
            decide,
            cfg,
            conn: None,
            retry_at: None,
            backoff: Backoff::new(),
            round: Round::default(),
            metrics,
            pipe: None,
            replies: pipelined.then(crossbeam_channel::unbounded),
            in_flight: VecDeque::new(),
            epoch: 0,
            shas: gavel_redis::scripts::script_shas(),
            out: Vec::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.retry_at.is_none()
    }

    /// The synchronous client, connecting it if due.
    fn connection(&mut self) -> Option<&mut RedisGavel> {
        if self.conn.is_none() {
            if self.retry_at.is_some_and(|t| Instant::now() < t) {
                return None;
            }
            let c = &self.cfg;
            match RedisGavel::connect(&c.urls, c.cluster, c.timeout, c.idempotency_window) {
                Ok(c) => {
                    if self.retry_at.take().is_some() {
                        tracing::info!("redis is reachable again");
                        self.metrics.redis_up.set(1);
                    }
                    self.backoff.reset();
                    self.conn = Some(c);
                }
                Err(e) => {
                    self.fail(&e);
                    return None;
                }
            }
        }
        self.conn.as_mut()
    }

    fn fail(&mut self, e: &RedisError) {
        self.metrics.redis_errors.inc();
        self.metrics.redis_up.set(0);
        if self.retry_at.is_none() {
            tracing::error!(error = %e, "redis failed; answering UNAVAILABLE until it is back");
        }
        self.conn = None;
        self.retry_at = Some(self.backoff.next_attempt());
    }

    /// Sends the planned round (pipelined or synchronous).
    fn dispatch(&mut self, now_ms: u64, fx: &mut Effects) {
        if self.round.is_empty() {
            return;
        }
        let Round { ops, pending } = std::mem::take(&mut self.round);
        if self.pipelined() {
            return self.send_round(ops, pending, now_ms, fx);
        }
        let outcome = if ops.is_empty() {
            RoundOutcome::NotSent
        } else {
            self.round_trip(&ops, now_ms)
        };
        self.decide.finish_round(&pending, outcome, now_ms, fx);
        // Keep the buffers for the next round.
        self.round = Round { ops, pending };
        self.round.ops.clear();
        self.round.pending.clear();
    }

    /// One synchronous round trip.
    fn round_trip(&mut self, ops: &[ROp], now_ms: u64) -> RoundOutcome {
        let t = Instant::now();
        let Some(conn) = self.connection() else {
            return RoundOutcome::NotSent;
        };
        let results = match conn.execute(ops, now_ms) {
            Ok(r) => RoundOutcome::Answered(r),
            Err(e) => {
                self.fail(&e);
                // The pipeline may have been sent, and run, in part.
                RoundOutcome::Lost
            }
        };
        self.metrics.redis_round_trips.inc();
        self.metrics
            .redis_seconds
            .observe(t.elapsed().as_micros() as u64);
        results
    }

    /// Single-node mode keeps several rounds in flight on one connection: a
    /// reader thread feeds replies back, so Redis never idles while this
    /// shard turns a round's replies around. (A cluster spreads a round over
    /// several masters and stays one synchronous round trip at a time.)
    fn pipelined(&self) -> bool {
        self.replies.is_some()
    }

    fn send_round(&mut self, ops: Vec<ROp>, pending: Vec<Pending>, now_ms: u64, fx: &mut Effects) {
        let round = InFlight {
            pending,
            ops,
            values: Vec::new(),
            sent: Instant::now(),
            now_ms,
            disconnects: Vec::new(),
        };
        if round.ops.is_empty() && self.in_flight.is_empty() {
            // Decided locally, nothing ahead of it: answer now.
            return self
                .decide
                .finish_round(&round.pending, RoundOutcome::NotSent, now_ms, fx);
        }
        if round.ops.is_empty() {
            // Waits for the rounds ahead of it, to keep order.
            return self.in_flight.push_back(round);
        }
        if self.pipe.is_none() && !self.open_pipe() {
            // Down: nothing is in flight (a failure answers all of it).
            return self
                .decide
                .finish_round(&round.pending, RoundOutcome::NotSent, now_ms, fx);
        }
        let window = self.cfg.idempotency_window.as_millis() as u64;
        self.out.clear();
        for op in &round.ops {
            gavel_redis::resp::encode(op, &self.shas, now_ms, window, &mut self.out);
        }
        let pipe = self.pipe.as_mut().expect("opened above");
        let written = std::io::Write::write_all(pipe, &self.out);
        self.in_flight.push_back(round);
        match written {
            Ok(()) => {
                self.metrics.redis_round_trips.inc();
            }
            Err(e) => self.fail_pipe(&format!("write: {e}"), fx),
        }
    }

    /// Connects the pipelined socket (scripts are loaded through the
    /// synchronous client first) and starts its reader thread.
    fn open_pipe(&mut self) -> bool {
        if self.connection().is_none() {
            return false;
        }
        let addr = plain_addr(&self.cfg.urls[0]).unwrap_or_default();
        let stream = match connect(&addr, self.cfg.timeout) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&RedisError::Script(format!(
                    "pipelined connect to {addr}: {e}"
                )));
                return false;
            }
        };
        let Ok(reader) = stream.try_clone() else {
            return false;
        };
        self.epoch += 1;
        let epoch = self.epoch;
        let tx = self.replies.as_ref().expect("pipelined").0.clone();
        let spawned = std::thread::Builder::new()
            .name("gavel-redis-reader".into())
            .spawn(move || read_replies(reader, epoch, &tx));
        if spawned.is_err() {
            return false;
        }
        self.pipe = Some(stream);
        true
    }

    /// Replies from the reader thread, in order.
    pub fn on_replies(&mut self, epoch: u64, vs: Result<Vec<Value>, String>, fx: &mut Effects) {
        if epoch != self.epoch {
            return; // from a connection already given up
        }
        let vs = match vs {
            Ok(vs) => vs,
            Err(e) => return self.fail_pipe(&e, fx),
        };
        // Rounds before `next` are complete; fill from there on.
        let mut next = 0;
        for v in vs {
            while self.in_flight.get(next).is_some_and(InFlight::complete) {
                next += 1;
            }
            let Some(round) = self.in_flight.get_mut(next) else {
                return self.fail_pipe("reply without a request", fx);
            };
            round.values.push(v);
        }
        self.finish_ready(fx);
    }

    /// Answers completed rounds at the front, in order.
    fn finish_ready(&mut self, fx: &mut Effects) {
        while self.in_flight.front().is_some_and(InFlight::complete) {
            let mut r = self.in_flight.pop_front().expect("checked");
            self.metrics
                .redis_seconds
                .observe(r.sent.elapsed().as_micros() as u64);
            let gone = std::mem::take(&mut r.disconnects);
            let lost_scripts = self.answer_round(r, fx);
            for c in gone {
                self.decide.disconnect(c);
            }
            if lost_scripts {
                // Scripts were flushed: reload them by reconnecting both clients.
                self.conn = None;
                self.fail_pipe("NOSCRIPT", fx);
            }
        }
    }

    /// Answers one complete round; true if Redis had lost the scripts.
    fn answer_round(&mut self, r: InFlight, fx: &mut Effects) -> bool {
        debug_assert_eq!(
            r.pending.iter().filter(|p| p.in_pipeline()).count(),
            r.ops.len(),
            "one op per pipelined request"
        );
        let mut lost_scripts = false;
        let mut values = r.ops.iter().zip(&r.values);
        for p in &r.pending {
            // None: refused by Redis (NOSCRIPT after a flush, a script
            // error) — UNAVAILABLE, never a guess; the others stand.
            let res = match p.in_pipeline().then(|| values.next()).flatten() {
                None => None,
                Some((op, v)) => {
                    let res = gavel_redis::scripts::decode(op, v, r.now_ms);
                    if res.is_none() {
                        lost_scripts |=
                            matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT");
                    }
                    if matches!(res, None | Some(OpResult::Busy)) {
                        self.metrics.redis_errors.inc();
                    }
                    res
                }
            };
            self.decide.answer_one(p, res, false, r.now_ms, fx);
        }
        lost_scripts
    }

    /// Gives the pipelined connection up: every round in flight is answered
    /// (IN_DOUBT for writes that were sent, UNAVAILABLE for what else needed
    /// Redis), and the shard backs off.
    fn fail_pipe(&mut self, why: &str, fx: &mut Effects) {
        if let Some(s) = self.pipe.take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.epoch += 1;
        self.fail(&RedisError::Script(why.to_string()));
        while let Some(r) = self.in_flight.pop_front() {
            // A round holding only local answers was never sent.
            let outcome = if r.ops.is_empty() {
                RoundOutcome::NotSent
            } else {
                RoundOutcome::Lost
            };
            self.decide.finish_round(&r.pending, outcome, r.now_ms, fx);
            for c in r.disconnects {
                self.decide.disconnect(c);
            }
        }
    }
}

/// Connects a TCP stream for the pipeline: no Nagle, bounded writes.
fn connect(addr: &str, timeout: std::time::Duration) -> std::io::Result<std::net::TcpStream> {
    let a = std::net::ToSocketAddrs::to_socket_addrs(addr)?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
    let s = std::net::TcpStream::connect_timeout(&a, timeout)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

impl Backend for RedisShard {
    type Event = RedisReply;

    fn events(&self) -> Option<Receiver<RedisReply>> {
        self.replies.as_ref().map(|(_, rx)| rx.clone())
    }

    /// At the in-flight cap the runner waits for replies only.
    fn accepts_commands(&self) -> bool {
        self.in_flight.len() < MAX_IN_FLIGHT
    }

    /// One shard round: what Redis must decide goes in one pipeline (in
    /// flight or synchronous); every request is answered in order.
    fn execute(&mut self, cmds: &[Command], now_ms: u64, fx: &mut Effects) {
        let live = self.cfg.updates_live.load(Ordering::Acquire);
        for c in cmds {
            self.decide.plan(c, now_ms, live, &mut self.round);
        }
        self.dispatch(now_ms, fx);
    }

    fn on_event(&mut self, (epoch, vs): RedisReply, fx: &mut Effects) {
        self.on_replies(epoch, vs, fx);
    }

    fn on_remote(&mut self, pushes: Vec<Push>, fx: &mut Effects) {
        for push in pushes {
            self.decide.on_update(push, fx);
        }
    }

    fn disconnect(&mut self, conn: ConnRef) {
        match self.in_flight.back_mut() {
            Some(last) => last.disconnects.push(conn),
            None => self.decide.disconnect(conn),
        }
    }

    fn sizes(&self) -> Sizes {
        Sizes {
            subscriptions: self.decide.subscription_count(),
            ..Sizes::default()
        }
    }

    /// Drains replies that arrived meanwhile; a round waiting longer than
    /// the timeout fails the connection (never a hang).
    fn tick(&mut self, fx: &mut Effects) {
        while let Some(Ok((epoch, vs))) = self.replies.as_ref().map(|(_, rx)| rx.try_recv()) {
            self.on_replies(epoch, vs, fx);
        }
        if self
            .in_flight
            .front()
            .is_some_and(|r| !r.complete() && r.sent.elapsed() > self.cfg.timeout)
        {
            self.fail_pipe("no reply within --redis-timeout", fx);
        }
        self.finish_ready(fx);
    }

    /// Touches the watched auctions past their end.
    fn sweep(&mut self, now_ms: u64, fx: &mut Effects) {
        fx.unstamp();
        self.decide.plan_sweep(now_ms, &mut self.round);
        self.dispatch(now_ms, fx);
    }
}
